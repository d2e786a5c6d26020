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
