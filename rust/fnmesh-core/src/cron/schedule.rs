//! A cron expression's grammar and its fire times.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::error::CronError;

/// A parsed cron expression and the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expression`: 6 or 7 whitespace-separated fields, seconds first
    /// (`sec min hour day-of-month month day-of-week [year]`), as the `cron` crate parses them,
    /// or one of its shorthands (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    ///
    /// `timezone`: `None` evaluates the expression in UTC (iii's behaviour); `Some("Europe/Paris")`
    /// evaluates it in that IANA zone (a fnmesh extension). Local times skipped by a daylight-saving
    /// change do not fire that day.
    ///
    /// The error ([`CronError`]) reads as one line naming the expression (or the zone) and the
    /// problem; a 5-field crontab line gets a message saying that a seconds field comes first.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<CronSchedule, CronError> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err(CronError::EmptyExpression);
        }
        let zone = match timezone {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| CronError::UnknownTimezone(name.to_owned()))?
            }
        };
        let schedule = cron::Schedule::from_str(expression).map_err(|e| {
            CronError::InvalidExpression(describe_parse_error(expression, &e.to_string()))
        })?;
        Ok(CronSchedule {
            expression: expression.to_owned(),
            schedule,
            zone,
        })
    }

    /// The first fire time strictly after `after`, in UTC; `None` when the schedule has no future
    /// time (a past year, the 31st of February, or past 2100, the crate's last year).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A wall time repeated by a daylight-saving change comes out as two instants, the earlier
        // of which can lie before `after` (when `after` is inside the repeated hour): skip it.
        self.schedule
            .after(&after.with_timezone(&self.zone))
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > after)
    }

    /// The expression as parsed (surrounding whitespace removed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the expression is evaluated in (`"UTC"` unless one was given).
    pub fn timezone(&self) -> &'static str {
        self.zone.name()
    }

    /// How many fire times lie in `(after, until]`, counting at most `limit`.
    pub(super) fn count_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u64,
    ) -> u64 {
        let mut count = 0;
        let mut cursor = after;
        while count < limit {
            match self.next_after(cursor) {
                Some(t) if t <= until => {
                    count += 1;
                    cursor = t;
                }
                _ => break,
            }
        }
        count
    }
}

/// Turns the `cron` crate's multi-line error (expression, caret line, message) into one line that
/// names the expression, with a plain explanation for a wrong number of fields.
fn describe_parse_error(expression: &str, crate_message: &str) -> String {
    let fields = expression.split_whitespace().count();
    if expression.starts_with('@') {
        return format!(
            "invalid cron expression '{expression}': unknown shorthand \
             (accepted: @yearly, @monthly, @weekly, @daily, @hourly)"
        );
    }
    if fields == 5 {
        return format!(
            "invalid cron expression '{expression}': it has 5 fields, but cron fields must be 6 or 7 \
             with seconds first (sec min hour day-of-month month day-of-week [year]); for a crontab \
             line put a seconds field in front, e.g. '0 {expression}'"
        );
    }
    if !(6..=7).contains(&fields) {
        let noun = if fields == 1 { "field" } else { "fields" };
        return format!(
            "invalid cron expression '{expression}': it has {fields} {noun}, but cron fields must \
             be 6 or 7 with seconds first (sec min hour day-of-month month day-of-week [year])"
        );
    }
    let mut lines = crate_message.lines();
    let _echo = lines.next();
    let caret = lines.next().and_then(|l| l.find('^'));
    let detail = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let problem = match (detail.is_empty(), caret) {
        (false, _) => detail,
        (true, Some(column)) => format!("unexpected text at column {}", column + 1),
        (true, None) => crate_message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!("invalid cron expression '{expression}': {problem}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::test_support::utc;
    use chrono::TimeDelta;

    fn next(expression: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        CronSchedule::parse(expression, None)
            .unwrap()
            .next_after(after)
    }

    // ---- parsing and next times ----

    #[test]
    fn six_fields_seconds_first() {
        let after = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("*/15 * * * * *", after),
            Some(utc(2026, 3, 10, 12, 0, 15))
        );
        assert_eq!(
            next("0 30 9 * * *", after),
            Some(utc(2026, 3, 11, 9, 30, 0))
        );
        let s = CronSchedule::parse("  0 30 9 * * *\n", None).unwrap();
        assert_eq!(s.expression(), "0 30 9 * * *");
        assert_eq!(s.timezone(), "UTC");
    }

    #[test]
    fn seven_fields_with_year() {
        let after = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("0 0 0 1 1 * 2027", after),
            Some(utc(2027, 1, 1, 0, 0, 0))
        );
        // A past year parses but never fires.
        assert_eq!(next("0 0 0 1 1 * 2020", after), None);
        assert_eq!(next("0 0 0 31 2 *", after), None);
    }

    #[test]
    fn shorthands() {
        let after = utc(2026, 3, 10, 12, 34, 56);
        assert_eq!(next("@hourly", after), Some(utc(2026, 3, 10, 13, 0, 0)));
        assert_eq!(next("@daily", after), Some(utc(2026, 3, 11, 0, 0, 0)));
        assert_eq!(next("@monthly", after), Some(utc(2026, 4, 1, 0, 0, 0)));
        assert_eq!(next("@yearly", after), Some(utc(2027, 1, 1, 0, 0, 0)));
        // 2026-03-15 is a Sunday.
        assert_eq!(next("@weekly", after), Some(utc(2026, 3, 15, 0, 0, 0)));
        let e = CronSchedule::parse("@every 5s", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'@every 5s'") && e.contains("@hourly"), "{e}");
    }

    #[test]
    fn names_of_days_and_months() {
        // 2026-03-13 is a Friday.
        let friday_noon = utc(2026, 3, 13, 12, 0, 0);
        assert_eq!(
            next("0 0 9 * * MON-FRI", friday_noon),
            Some(utc(2026, 3, 16, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 * * Sat,Sun", friday_noon),
            Some(utc(2026, 3, 14, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 1 JAN *", friday_noon),
            Some(utc(2027, 1, 1, 9, 0, 0))
        );
        assert_eq!(
            next("0 0 9 1 JUN-AUG ?", friday_noon),
            Some(utc(2026, 6, 1, 9, 0, 0))
        );
    }

    #[test]
    fn five_field_crontab_line_is_refused_with_a_clear_message() {
        let e = CronSchedule::parse("*/5 * * * *", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'*/5 * * * *'"), "{e}");
        assert!(e.contains("6 or 7"), "{e}");
        assert!(e.contains("seconds first"), "{e}");
        assert!(e.contains("'0 */5 * * * *'"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Names in a 5-field line would otherwise give the crate's month-name complaint.
        let e = CronSchedule::parse("0 9 * * MON-FRI", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("6 or 7"), "{e}");
    }

    #[test]
    fn blank_and_garbage_are_refused() {
        for blank in ["", "   ", "\t\n"] {
            let e = CronSchedule::parse(blank, None).unwrap_err().to_string();
            assert_eq!(e, "cron expression is empty");
        }
        let e = CronSchedule::parse("garbage", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid cron expression 'garbage': "), "{e}");
        assert!(e.contains("has 1 field,") && e.contains("6 or 7"), "{e}");

        let e = CronSchedule::parse("0 61 * * * *", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid cron expression '0 61 * * * *': "),
            "{e}"
        );
        assert!(e.contains("Minutes") && e.contains("61"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let e = CronSchedule::parse("0 0 9 * * FUNDAY", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("FUNDAY"), "{e}");

        let e = CronSchedule::parse("0 0 9 * * * 2026 1", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8 fields"), "{e}");

        // Six fields whose syntax is wrong: the crate only points at the place.
        let e = CronSchedule::parse("0 0 9 * * %", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 11"), "{e}");
    }

    #[test]
    fn timezone_paris_winter_and_summer() {
        let s = CronSchedule::parse("0 0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(s.timezone(), "Europe/Paris");
        // Winter: CET, UTC+1.
        assert_eq!(
            s.next_after(utc(2026, 1, 15, 12, 0, 0)),
            Some(utc(2026, 1, 16, 8, 0, 0))
        );
        // Summer: CEST, UTC+2.
        assert_eq!(
            s.next_after(utc(2026, 7, 15, 12, 0, 0)),
            Some(utc(2026, 7, 16, 7, 0, 0))
        );
        // Across the spring change (2026-03-29).
        assert_eq!(
            s.next_after(utc(2026, 3, 28, 8, 0, 0)),
            Some(utc(2026, 3, 29, 7, 0, 0))
        );
    }

    #[test]
    fn timezone_repeated_hour_stays_strictly_after() {
        // 2026-10-25 02:30 happens twice in Paris: 00:30Z (CEST) and 01:30Z (CET).
        let s = CronSchedule::parse("0 30 2 * * *", Some("Europe/Paris")).unwrap();
        let first = utc(2026, 10, 25, 0, 30, 0);
        assert_eq!(s.next_after(utc(2026, 10, 25, 0, 0, 0)), Some(first));
        // From inside the repeated hour, the earlier 02:30 is already past.
        assert_eq!(
            s.next_after(utc(2026, 10, 25, 1, 10, 0)),
            Some(utc(2026, 10, 25, 1, 30, 0))
        );
        // Right after the first one, the next is the next day.
        assert_eq!(s.next_after(first), Some(utc(2026, 10, 26, 1, 30, 0)));
    }

    #[test]
    fn unknown_timezone_is_named() {
        let e = CronSchedule::parse("0 0 9 * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'Mars/Olympus'"), "{e}");
        let e = CronSchedule::parse("0 0 9 * * *", Some(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown timezone ''"), "{e}");
        // The expression is still checked when the zone is fine.
        assert!(CronSchedule::parse("nope", Some("UTC")).is_err());
    }

    #[test]
    fn next_after_is_strictly_after() {
        let on_tick = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(
            next("* * * * * *", on_tick),
            Some(utc(2026, 3, 10, 12, 0, 1))
        );
        assert_eq!(
            next("0 0 12 * * *", on_tick),
            Some(utc(2026, 3, 11, 12, 0, 0))
        );
        // Between two ticks, the following one (not a second later).
        let mid = on_tick + TimeDelta::milliseconds(500);
        assert_eq!(next("* * * * * *", mid), Some(utc(2026, 3, 10, 12, 0, 1)));
        let just_before = on_tick - TimeDelta::milliseconds(1);
        assert_eq!(next("0 0 12 * * *", just_before), Some(on_tick));
    }

    #[test]
    fn count_between_is_half_open() {
        let s = CronSchedule::parse("* * * * * *", None).unwrap();
        let t = utc(2026, 3, 10, 12, 0, 0);
        assert_eq!(s.count_between(t, t, 100), 0);
        assert_eq!(s.count_between(t, t + TimeDelta::seconds(3), 100), 3);
        assert_eq!(s.count_between(t, t + TimeDelta::seconds(3), 2), 2);
    }
}
