//! Regression corpus and a stable-toolchain mutation fuzzer.
//!
//! `tests/corpus/<target>/` holds inputs for the five fuzz targets (valid
//! samples, truncations, corruptions, and inputs that once crashed a
//! decoder). `expected.txt` in each directory pins every file's outcome
//! (`ok: summary` or `err: message`); this test replays them all. After a
//! deliberate change, regenerate with `FTVM_REGEN_CORPUS=1 cargo test -p
//! ftvm-wire --test corpus` and review the diff.
//!
//! `stable_mutation_fuzz` mutates the corpus for `FTVM_FUZZ_ITERS`
//! iterations per target (default 20000) on any toolchain; the real fuzzing
//! runs through cargo-fuzz (`make fuzz`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ftvm_wire::fuzzing;

type Target = fn(&[u8]) -> Result<String, String>;

const TARGETS: [(&str, Target); 5] = [
    ("frame_decode", fuzzing::frame_decode),
    ("frame_placing", fuzzing::frame_placing),
    ("message_decode", fuzzing::message_decode),
    ("epoch_assembler", fuzzing::epoch_assembler),
    ("snapshot_decode", fuzzing::snapshot_decode),
];

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target)
}

fn outcome(r: &Result<String, String>) -> String {
    match r {
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("err: {e}"),
    }
}

fn files(target: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir(target)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, fs::read(&p).unwrap());
        }
    }
    out
}

/// Seeds plus derived invalid inputs: truncations and single-byte corruptions.
fn generate(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, seed) in fuzzing::seeds(target) {
        let n = seed.len();
        for cut in [n / 2, n.saturating_sub(1)] {
            if cut > 0 && cut < n {
                out.push((format!("trunc-{name}-{cut}"), seed[..cut].to_vec()));
            }
        }
        for at in [5usize, 9, n / 2] {
            if at < n {
                let mut v = seed.clone();
                v[at] ^= 0x41;
                out.push((format!("flip-{name}-{at}"), v));
            }
        }
        out.push((name, seed));
    }
    out
}

#[test]
fn corpus_replays_with_pinned_outcomes() {
    let regen = std::env::var_os("FTVM_REGEN_CORPUS").is_some();
    for (target, run) in TARGETS {
        let d = dir(target);
        if regen {
            fs::create_dir_all(&d).unwrap();
            for (name, data) in generate(target) {
                fs::write(d.join(format!("{name}.bin")), data).unwrap();
            }
        }
        let files = files(target);
        assert!(files.len() >= 3, "{target}: corpus missing");
        let mut got = String::new();
        for (name, data) in &files {
            let r = catch_unwind(AssertUnwindSafe(|| run(data)));
            let r = r.unwrap_or_else(|_| panic!("{target}/{name}: decoder panicked"));
            got.push_str(&format!("{name}: {}\n", outcome(&r)));
        }
        let expected_path = d.join("expected.txt");
        if regen {
            fs::write(&expected_path, &got).unwrap();
        }
        let expected = fs::read_to_string(&expected_path).unwrap();
        for (g, e) in got.lines().zip(expected.lines()) {
            assert_eq!(g, e, "{target}: outcome changed");
        }
        assert_eq!(
            got.lines().count(),
            expected.lines().count(),
            "{target}: file list changed"
        );
    }
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let n = input.len();
        match rng.below(8) {
            0 if n > 0 => {
                let i = rng.below(n);
                input[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                input[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => input.truncate(rng.below(n + 1)),
            3 if n > 0 => {
                let i = rng.below(n);
                let len = rng.below(n - i + 1).min(64);
                input.drain(i..i + len);
            }
            4 => {
                let i = rng.below(n + 1);
                let b = rng.next().to_le_bytes();
                input.splice(i..i, b[..1 + rng.below(8)].iter().copied());
            }
            5 if n >= 8 => {
                // Overwrite a little-endian integer with an interesting value.
                let i = rng.below(n - 7);
                let v: u64 =
                    [0, 1, 4095, 4096, u64::MAX, u64::from(u32::MAX), 1 << 31][rng.below(7)];
                input[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            6 if !pool.is_empty() => {
                // Splice with another corpus entry.
                let other = &pool[rng.below(pool.len())];
                let i = rng.below(n + 1);
                let j = rng.below(other.len() + 1);
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            _ => {
                let i = rng.below(n + 1);
                let j = rng.below(n + 1);
                let (a, b) = (i.min(j), i.max(j));
                let chunk = input[a..b].to_vec();
                input.splice(b..b, chunk);
            }
        }
    }
}

#[test]
fn stable_mutation_fuzz() {
    let iters: usize = std::env::var("FTVM_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for (ti, (target, run)) in TARGETS.into_iter().enumerate() {
        let pool: Vec<Vec<u8>> = files(target).into_values().collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (ti as u64 + 1));
        let start = std::time::Instant::now();
        let mut ok = 0;
        for i in 0..iters {
            let mut input = pool[rng.below(pool.len())].clone();
            mutate(&mut rng, &mut input, &pool);
            let r = catch_unwind(AssertUnwindSafe(|| run(&input)));
            match r {
                Ok(r) => ok += usize::from(r.is_ok()),
                Err(_) => {
                    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                    panic!("{target}: iteration {i} panicked on input {hex}");
                }
            }
        }
        eprintln!(
            "{target}: {iters} mutated inputs in {:?}, {ok} decoded ok",
            start.elapsed()
        );
    }
}

/// `frame_placing` on a frame whose data is read in more than one piece (the placing
/// reader reads 256 KiB at a time; fuzz inputs are far shorter): 72 pages into the
/// 80-page memory, whole, then cut and corrupted around the first piece's end.
#[test]
fn frame_placing_across_read_pieces() {
    use ftvm_wire::{MessageWriter, PAGE_SIZE};
    const PIECE: usize = 256 << 10;
    let data: Vec<u8> = (0..72 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
    let mut w = MessageWriter::new(Vec::new());
    w.begin_epoch(1).unwrap();
    w.send_page_runs(&[(0x1000, 70), (0x4a000, 2)], &data)
        .unwrap();
    w.commit_epoch().unwrap();
    w.flush().unwrap();
    // Mode 6: 80 pages from gpa 0.
    let mut input = vec![6u8];
    input.extend_from_slice(w.frames().get_ref());
    assert_eq!(
        fuzzing::frame_placing(&input).unwrap(),
        format!("3 frames, 1 placed ({} bytes)", 72 * PAGE_SIZE)
    );
    // 1 (mode) + EpochBegin frame (28 + 8 + 4) + Pages header, epoch, count, 2 runs.
    let data_at = 1 + 40 + 28 + 12 + 2 * 12;
    assert!(input[data_at..].starts_with(&data[..64]));
    for at in [
        PIECE - 1,
        PIECE,
        PIECE + 1,
        70 * PAGE_SIZE,
        72 * PAGE_SIZE - 1,
    ] {
        let mut flipped = input.clone();
        flipped[data_at + at] ^= 0x10;
        let e = fuzzing::frame_placing(&flipped).unwrap_err();
        assert!(e.contains("frame CRC mismatch"), "flip at {at}: {e}");
        let cut = fuzzing::frame_placing(&input[..data_at + at]).unwrap_err();
        assert!(cut.contains("truncated"), "cut at {at}: {cut}");
    }
}
