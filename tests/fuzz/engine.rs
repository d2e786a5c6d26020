//! A small seeded mutation fuzzer: replays a target's corpus, then feeds it
//! mutated and generated inputs until its time or input budget is spent.
//!
//! Each input runs on a worker thread; the runner waits for it with a
//! deadline, so a hang is reported (with the input saved) instead of
//! wedging the test. A panic or a broken property saves the input under
//! `target/tmp/fuzz-crashes/TARGET/` and fails the test with the seed that
//! reproduces the run.
//!
//! Settings (environment):
//! - `THESEUS_FUZZ_SECONDS`: time per target (default 2; `make fuzz` sets 15).
//! - `THESEUS_FUZZ_RUNS`: most generated inputs per target (default unbounded).
//! - `THESEUS_FUZZ_SEED`: the run's seed (default 1; `make fuzz` varies it).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest one input may run before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Generated inputs larger than this are skipped: huge inputs are slow in a
/// debug build and find little that a small one does not.
const MAX_INPUT: usize = 256 << 10;

/// Failures collected before a target stops early.
const MAX_FAILURES: usize = 5;

/// What a check says about one input.
pub type Verdict = Result<(), String>;

/// The corpus directory of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// Figures of one run, printed at its end.
#[derive(Debug, Default)]
pub struct Stats {
    /// Inputs run (corpus and generated).
    pub execs: u64,
    /// Generated inputs the target declined to run.
    pub skipped: u64,
    /// The slowest input.
    pub slowest: Duration,
}

/// How long and how hard one target runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time for generated inputs (the corpus always runs in full).
    pub time: Duration,
    /// Most generated inputs.
    pub runs: u64,
    /// The run's seed.
    pub seed: u64,
    /// Longest one input may run.
    pub hang: Duration,
}

impl Settings {
    /// The settings from the environment (see the module documentation).
    pub fn from_env() -> Settings {
        Settings {
            time: Duration::from_secs(env_u64("THESEUS_FUZZ_SECONDS").unwrap_or(2)),
            runs: env_u64("THESEUS_FUZZ_RUNS").unwrap_or(u64::MAX),
            seed: env_u64("THESEUS_FUZZ_SEED").unwrap_or(1),
            hang: HANG,
        }
    }
}

/// Runs `target` with its corpus and the settings from the environment,
/// prints its figures and fails on any finding. `make_check` builds the
/// checker on the worker thread (it may hold a runtime or a sandbox); it is
/// built again after a panic. `generate` makes an input from the corpus; an
/// empty (or huge) input counts as declined.
pub fn run<C, M, G>(target: &str, make_check: M, generate: G) -> Stats
where
    C: FnMut(&[u8]) -> Verdict,
    M: Fn() -> C + Send + 'static,
    G: FnMut(&mut StdRng, &[Vec<u8>]) -> Vec<u8>,
{
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "the {target} corpus is empty");
    let settings = Settings::from_env();
    let (stats, failures) = fuzz(target, &seeds, &settings, make_check, generate);
    assert!(
        failures.is_empty(),
        "fuzz {target} (THESEUS_FUZZ_SEED={}) found:\n{}\nCopy a saved input into {} to keep it as a regression.",
        settings.seed,
        failures.join("\n"),
        corpus_dir(target).display()
    );
    stats
}

/// Runs `seeds`, then generated inputs; returns the figures and the
/// failures (each with where its input was saved).
pub fn fuzz<C, M, G>(
    target: &str,
    seeds: &[(String, Vec<u8>)],
    settings: &Settings,
    make_check: M,
    mut generate: G,
) -> (Stats, Vec<String>)
where
    C: FnMut(&[u8]) -> Verdict,
    M: Fn() -> C + Send + 'static,
    G: FnMut(&mut StdRng, &[Vec<u8>]) -> Vec<u8>,
{
    let mut rng = StdRng::seed_from_u64(settings.seed ^ hash_name(target));
    let inputs: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    let worker = Worker::start(make_check, settings.hang);
    let mut stats = Stats::default();
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();
    let exec = |input: Vec<u8>, label: &str, stats: &mut Stats, failures: &mut Vec<String>| {
        let t = Instant::now();
        let verdict = worker.check(input.clone());
        stats.execs += 1;
        stats.slowest = stats.slowest.max(t.elapsed());
        if let Err(why) = verdict {
            let saved = save_crash(target, &input);
            failures.push(format!(
                "{label}: {why}\n  input saved as {}",
                saved.display()
            ));
        }
    };
    for (name, bytes) in seeds {
        exec(
            bytes.clone(),
            &format!("corpus {name}"),
            &mut stats,
            &mut failures,
        );
    }
    let mut generated = 0u64;
    while started.elapsed() < settings.time
        && generated < settings.runs
        && failures.len() < MAX_FAILURES
        && !worker.hung.get()
    {
        generated += 1;
        let input = generate(&mut rng, &inputs);
        if input.is_empty() || input.len() > MAX_INPUT {
            stats.skipped += 1;
            continue;
        }
        exec(
            input,
            &format!("input {generated}"),
            &mut stats,
            &mut failures,
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {} inputs ({} corpus, {} skipped) in {secs:.1} s, {:.0}/s, slowest {} ms, seed {}, {} failure(s)",
        stats.execs,
        seeds.len(),
        stats.skipped,
        stats.execs as f64 / secs.max(0.001),
        stats.slowest.as_millis(),
        settings.seed,
        failures.len()
    );
    (stats, failures)
}

fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-crashes")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("crash-{:016x}", hash_bytes(input));
    let path = dir.join(name);
    std::fs::write(&path, input).unwrap();
    path
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The name of the worker threads.
const WORKER: &str = "fuzz-worker";

/// A worker's panic is a finding, reported with its input: the panic hook
/// prints one line for it instead of a backtrace, whose symbolization can
/// take longer than the hang limit on a busy machine and turn a panic into
/// a reported hang. Other threads keep the hook they had.
fn quiet_worker_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(WORKER) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info.payload();
                let text = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                eprintln!("fuzz worker panicked{at}: {text}");
            } else {
                previous(info);
            }
        }));
    });
}

/// The thread that runs the checks, so that a hang can be noticed.
struct Worker {
    inputs: mpsc::Sender<Vec<u8>>,
    verdicts: mpsc::Receiver<Verdict>,
    hung: Cell<bool>,
    hang: Duration,
}

impl Worker {
    fn start<C, M>(make_check: M, hang: Duration) -> Worker
    where
        C: FnMut(&[u8]) -> Verdict,
        M: Fn() -> C + Send + 'static,
    {
        let (tx_in, rx_in) = mpsc::channel::<Vec<u8>>();
        let (tx_out, rx_out) = mpsc::channel();
        quiet_worker_panics();
        let worker = std::thread::Builder::new().name(WORKER.into());
        let spawned = worker.spawn(move || {
            let mut check = make_check();
            for input in rx_in {
                let verdict = match catch_unwind(AssertUnwindSafe(|| check(&input))) {
                    Ok(v) => v,
                    Err(panic) => {
                        check = make_check();
                        Err(format!("panicked: {}", panic_text(&panic)))
                    }
                };
                if tx_out.send(verdict).is_err() {
                    return;
                }
            }
        });
        spawned.expect("the fuzz worker thread starts");
        Worker {
            inputs: tx_in,
            verdicts: rx_out,
            hung: Cell::new(false),
            hang,
        }
    }

    fn check(&self, input: Vec<u8>) -> Verdict {
        if self.hung.get() {
            return Err("not run: an earlier input hung the worker".into());
        }
        self.inputs.send(input).expect("the fuzz worker stopped");
        match self.verdicts.recv_timeout(self.hang) {
            Ok(v) => v,
            Err(_) => {
                // The worker is stuck for good; later inputs are not run.
                self.hung.set(true);
                Err(format!(
                    "hang: no answer within {} ms",
                    self.hang.as_millis()
                ))
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Random helpers the targets share.
pub fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// Values that break parsers: edges of integer widths, in text.
pub const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "-2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e999",
    "-0",
    "0.5",
    "1e-999",
];

/// Applies 1 to 8 byte-level mutations to `input`, splicing from `others`
/// and inserting tokens from `dict`.
pub fn mutate(rng: &mut StdRng, input: &[u8], others: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..=8) {
        mutate_once(rng, &mut out, others, dict);
    }
    out
}

fn mutate_once(rng: &mut StdRng, out: &mut Vec<u8>, others: &[Vec<u8>], dict: &[&[u8]]) {
    let len = out.len();
    let at = |rng: &mut StdRng| if len == 0 { 0 } else { rng.gen_range(0..len) };
    match rng.gen_range(0..10) {
        0 if len > 0 => {
            let i = at(rng);
            out[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            out[i] = *pick(
                rng,
                &[
                    0u8, 0xff, 0x7f, 0x80, b'0', b'7', b'/', b'.', b' ', b'"', b'\\',
                ],
            );
        }
        2 if len > 0 => {
            let i = at(rng);
            out.truncate(i);
        }
        3 if len > 0 => {
            let i = at(rng);
            let n = rng.gen_range(1..=(len - i).min(64));
            out.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = at(rng);
            let n = rng.gen_range(1..=(len - i).min(512));
            let piece = out[i..i + n].to_vec();
            let j = at(rng);
            out.splice(j..j, piece);
        }
        5 if !others.is_empty() => {
            let other = pick(rng, others);
            if !other.is_empty() {
                let i = rng.gen_range(0..other.len());
                let n = rng.gen_range(1..=(other.len() - i).min(1024));
                let j = at(rng);
                out.splice(j..j, other[i..i + n].iter().copied());
            }
        }
        6 if !dict.is_empty() => {
            let token = *pick(rng, dict);
            let j = at(rng);
            out.splice(j..j, token.iter().copied());
        }
        7 => {
            let token = pick(rng, NUMBERS).as_bytes();
            let j = at(rng);
            out.splice(j..j, token.iter().copied());
        }
        8 if len > 0 => {
            // Overwrite a run with one repeated byte.
            let i = at(rng);
            let n = rng.gen_range(1..=(len - i).min(32));
            let b: u8 = rng.r#gen();
            out[i..i + n].fill(b);
        }
        _ => {
            let n = rng.gen_range(1..16);
            let j = at(rng);
            let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
            out.splice(j..j, bytes);
        }
    }
}
