//! Property-based fuzzing of what the network reaches first, on stable Rust with no extra tool:
//! the frame decoder (`protocol`), the HTTP request mapping (`mapping`) and the route parser
//! and router (`route`). See `docs/fuzzing.md`.
//!
//! Each target generates inputs from a seeded PRNG (random bytes, mutations of the corpus in
//! `tests/fixtures/wire/` and `tests/fixtures/fuzz/`, structure-aware JSON) for a third of
//! `FNMESH_FUZZ_SECONDS` (default 20), and fails on a panic, a broken property or an input
//! slower than `FNMESH_FUZZ_INPUT_MS`. A failure prints the seed and iteration and writes the
//! input to a file; `FNMESH_FUZZ_REPLAY=<file>` runs that one input again. Every file of the
//! corpus, and every case in `tests/fixtures/fuzz/found/` (named `<target>-...`), is checked
//! first, each run.

mod gen;
mod mapping;
mod protocol;
mod regressions;
mod route;
mod runner;

use runner::{run, run_one, Report, Settings, Target};

const TARGETS: [&Target; 3] = [&protocol::TARGET, &mapping::TARGET, &route::TARGET];

fn fuzz(target: &Target) {
    let settings = Settings::from_env();
    if let Err(failure) = run(target, &settings) {
        panic!("{failure}");
    }
}

#[test]
fn protocol() {
    fuzz(&protocol::TARGET);
}

#[test]
fn mapping() {
    fuzz(&mapping::TARGET);
}

#[test]
fn route() {
    fuzz(&route::TARGET);
}

/// The seeds and every found case pass their target's checks.
#[test]
fn corpus() {
    let settings = Settings::from_env();
    let mut cases: Vec<(&Target, String, Vec<u8>)> = Vec::new();
    for (name, input) in protocol::seeds() {
        cases.push((&protocol::TARGET, name, input));
    }
    for (name, input) in mapping::seeds() {
        cases.push((&mapping::TARGET, name, input));
    }
    for (name, input) in route::seeds() {
        cases.push((&route::TARGET, name, input));
    }
    for (name, input) in gen::files("fuzz/found", "bin") {
        let target = TARGETS
            .into_iter()
            .find(|t| name.starts_with(&format!("{}-", t.name)))
            .unwrap_or_else(|| panic!("fuzz/found/{name}: the name must start with a target"));
        cases.push((target, name, input));
    }
    assert!(cases.len() > 50, "only {} corpus cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(target, name, input)| {
            let finding = run_one(target, input, settings.input_bound).err()?;
            Some(Report::new(target.name, format!("corpus {name}"), input, finding).to_string())
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
