//! Bounded fuzzing of what faces hostile input: the archive unpacker,
//! `pkginfo.json`, `index.json` with its signature, and the agent's local
//! HTTP API. Each target replays its corpus (`tests/fuzz/corpus/TARGET/`),
//! then runs mutated and generated inputs for `THESEUS_FUZZ_SECONDS`
//! (default 2; `make fuzz` runs longer). See `engine.rs` for the settings.

mod agent_api;
mod engine;
mod index;
mod json;
mod pkginfo;
mod regressions;
mod unpack;

#[test]
fn fuzz_unpack() {
    engine::run(
        "unpack",
        || {
            let sandbox = unpack::Sandbox::new();
            move |input: &[u8]| sandbox.check(input)
        },
        unpack::generator(),
    );
}

#[test]
fn fuzz_pkginfo() {
    engine::run("pkginfo", || pkginfo::check, pkginfo::generate);
}

#[test]
fn fuzz_index() {
    engine::run("index", index::checker, index::generate);
}

#[test]
fn fuzz_agent_api() {
    engine::run("agent_api", agent_api::checker, agent_api::generate);
}

/// The engine reports what it must: a broken property, a panic and a hang,
/// each with its input saved; and it keeps to its input budget.
#[test]
fn the_engine_reports_broken_properties_panics_and_hangs() {
    let settings = engine::Settings {
        time: std::time::Duration::from_secs(5),
        runs: 50,
        seed: 7,
        hang: std::time::Duration::from_millis(300),
    };
    let seeds = vec![("ok".to_string(), b"fine".to_vec())];
    let verdicts: [(&[u8], &str); 3] = [
        (b"bad", "bad input"),
        (b"boom", "panicked: boom"),
        (b"slow", "hang: no answer within 300 ms"),
    ];
    for (input, expected) in verdicts {
        let check = || {
            |i: &[u8]| match i {
                b"bad" => Err("bad input".to_string()),
                b"boom" => panic!("boom"),
                b"slow" => {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let generate = |_: &mut rand::rngs::StdRng, _: &[Vec<u8>]| input.to_vec();
        let (stats, failures) = engine::fuzz("selftest", &seeds, &settings, check, generate);
        assert!(!failures.is_empty(), "{expected}: nothing reported");
        assert!(failures[0].contains(expected), "{failures:?}");
        assert!(failures[0].contains("input saved as"), "{failures:?}");
        assert!(stats.execs <= 51, "ran {} inputs", stats.execs);
    }
}
