//! A tiny command-line parser: `<command> [--name value | --name=value | --flag]...`.

use std::time::Duration;

/// A subcommand and its `--name value` options, consumed one by one with [`Args::take`].
#[derive(Debug)]
pub struct Args {
    /// The subcommand (first positional argument).
    pub command: String,
    opts: Vec<(String, Option<String>)>,
}

impl Args {
    /// Splits the arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut it = args.into_iter().peekable();
        let command = it.next().ok_or("missing command")?;
        let mut opts = Vec::new();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if let Some((name, value)) = name.split_once('=') {
                opts.push((name.to_owned(), Some(value.to_owned())));
            } else {
                let value = it.next_if(|next| !next.starts_with("--"));
                opts.push((name.to_owned(), value));
            }
        }
        Ok(Args { command, opts })
    }

    /// True when the flag `--name` was given (with no value).
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.opts.len();
        self.opts.retain(|(n, _)| n != name);
        self.opts.len() != before
    }

    /// The value of `--name`, if given (the last one wins).
    pub fn take(&mut self, name: &str) -> Result<Option<String>, String> {
        let mut found = None;
        let mut err = None;
        self.opts.retain(|(n, v)| {
            if n != name {
                return true;
            }
            match v {
                Some(v) => found = Some(v.clone()),
                None => err = Some(format!("--{name} needs a value")),
            }
            false
        });
        match err {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// `--name` parsed with `FromStr`, or `default`.
    pub fn take_parsed<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.take(name)? {
            Some(v) => v.parse().map_err(|e| format!("--{name} {v:?}: {e}")),
            None => Ok(default),
        }
    }

    /// `--name` parsed with [`parse_duration`].
    pub fn take_duration(&mut self, name: &str) -> Result<Option<Duration>, String> {
        self.take(name)?
            .map(|v| parse_duration(&v).map_err(|e| format!("--{name}: {e}")))
            .transpose()
    }

    /// Fails on any option nobody asked for (typos must not silently change a benchmark).
    pub fn finish(self) -> Result<(), String> {
        match self.opts.first() {
            Some((name, _)) => Err(format!("unknown option --{name} for {:?}", self.command)),
            None => Ok(()),
        }
    }
}

/// `"5s"`, `"250ms"`, `"2m"`, `"1.5s"`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 5s, 250ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_durations() {
        let argv = [
            "call",
            "--url=ws://x",
            "--concurrency",
            "8",
            "--verbose",
            "--duration",
            "2s",
        ];
        let mut a = Args::parse(argv.map(String::from)).unwrap();
        assert_eq!(a.command, "call");
        assert_eq!(a.take("url").unwrap().as_deref(), Some("ws://x"));
        assert_eq!(a.take_parsed("concurrency", 1usize).unwrap(), 8);
        assert!(a.flag("verbose"));
        assert_eq!(
            a.take_duration("duration").unwrap(),
            Some(Duration::from_secs(2))
        );
        a.finish().unwrap();
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn rejects_unknown_options() {
        let a = Args::parse(["echo", "--adr", "x"].map(String::from)).unwrap();
        assert!(a.finish().is_err());
    }
}
