//! Fuzz entry points for the key-value service's decoders, shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/kv_*.rs`) and the in-tree mutation test
//! (`tests/kv_fuzz.rs`). Each feeds arbitrary bytes through the same code the guest runs
//! and asserts its invariants (a violated invariant panics, which a fuzzer reports).
//!
//! Test support only; not part of the stable API.

use crate::kvlog::{self, Next};
use crate::kvstore::{Limits, Mutation, Store};
use crate::resp::{self, ProtocolError};

/// Small limits, so fuzzed input reaches them.
pub const FUZZ_LIMITS: Limits = Limits {
    max_key: 16,
    max_value: 64,
    max_keys: 8,
    max_bytes: 256,
};

/// What a session did.
#[derive(Debug, PartialEq, Eq)]
pub struct Session {
    /// Requests parsed (including empty ones).
    pub requests: usize,
    /// The protocol error that ended the session, if any.
    pub error: Option<ProtocolError>,
    /// Replies in the output.
    pub replies: usize,
    /// The output.
    pub out: Vec<u8>,
}

/// Parses one RESP2 reply at the start of `b`: its length, or `None` if malformed.
pub fn reply_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = &b[1..line_end];
    let after = line_end + 2;
    match b.first()? {
        b'+' | b'-' => (!line.contains(&b'\r') && !line.contains(&b'\n')).then_some(after),
        b':' => resp::parse_i64(line).map(|_| after),
        b'$' => {
            let n = resp::parse_i64(line)?;
            if n == -1 {
                return Some(after);
            }
            let n = usize::try_from(n).ok()?;
            (b.get(after + n..after + n + 2)? == b"\r\n").then_some(after + n + 2)
        }
        b'*' => {
            let n = resp::parse_i64(line)?;
            let mut pos = after;
            for _ in 0..n.max(0) {
                pos += reply_len(&b[pos..])?;
            }
            Some(pos)
        }
        _ => None,
    }
}

/// Runs `input` through the parser and a fresh store as one connection's bytes, fed in
/// chunks whose sizes come from `chunks` (cycled; 0 = the rest at once), the way the
/// guest's server loop does. Asserts: chunked parsing gives exactly the requests of
/// parsing the whole input; every reply is well-formed RESP and there is one per
/// non-empty request (plus one for a protocol error); the store stays within its limits
/// and its byte count is right; replaying the recorded mutations rebuilds it.
pub fn session(input: &[u8], chunks: &[u8]) -> Session {
    // Reference: the whole input at once.
    let mut whole: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut whole_err = None;
    let mut pos = 0;
    loop {
        match resp::parse(&input[pos..]) {
            Ok(Some((args, n))) => {
                assert!(n > 0, "a request must consume bytes");
                whole.push(args.iter().map(|a| a.to_vec()).collect());
                pos += n;
            }
            Ok(None) => break,
            Err(e) => {
                whole_err = Some(e);
                break;
            }
        }
    }

    let mut store = Store::new(FUZZ_LIMITS);
    store.set_recording(true);
    let mut log: Vec<Mutation> = Vec::new();
    let mut out = Vec::new();
    let mut inbuf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut got: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut error = None;
    let mut expected_replies = 0;
    let mut closed = false;
    let mut ci = 0;
    while fed < input.len() && !closed && error.is_none() {
        let step = match chunks.get(ci % chunks.len().max(1)) {
            Some(&0) | None => input.len() - fed,
            Some(&c) => usize::from(c).min(input.len() - fed),
        };
        ci += 1;
        inbuf.extend_from_slice(&input[fed..fed + step]);
        fed += step;
        let mut used = 0;
        loop {
            match resp::parse(&inbuf[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    got.push(args.iter().map(|a| a.to_vec()).collect());
                    if !args.is_empty() {
                        expected_replies += 1;
                    }
                    let o = store.execute(&args, &mut out);
                    if let Some(m) = o.mutation {
                        log.push(m);
                    }
                    if o.close {
                        closed = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    resp::error(&mut out, e.message());
                    expected_replies += 1;
                    error = Some(e);
                    break;
                }
            }
        }
        inbuf.drain(..used);
    }

    // Chunking never changes what is parsed (up to a QUIT, which stops the session).
    assert_eq!(got[..], whole[..got.len()], "chunked parsing differs");
    if !closed {
        assert_eq!(got.len(), whole.len(), "chunked parsing lost requests");
        assert_eq!(error, whole_err, "chunked parsing changed the error");
    }

    let mut replies = 0;
    let mut p = 0;
    while p < out.len() {
        let n = reply_len(&out[p..]).unwrap_or_else(|| {
            panic!(
                "malformed reply at {p}: {:?}",
                String::from_utf8_lossy(&out[p..out.len().min(p + 80)])
            )
        });
        p += n;
        replies += 1;
    }
    assert_eq!(replies, expected_replies, "one reply per request");

    assert!(store.len() <= FUZZ_LIMITS.max_keys);
    let mut bytes = 0;
    for (k, v) in store.iter() {
        assert!(k.len() <= FUZZ_LIMITS.max_key && v.len() <= FUZZ_LIMITS.max_value);
        bytes += k.len() + v.len();
    }
    assert_eq!(bytes, store.bytes());
    assert!(bytes <= FUZZ_LIMITS.max_bytes);

    let mut replayed = Store::new(FUZZ_LIMITS);
    for m in &log {
        replayed.apply(m);
    }
    assert!(
        replayed.iter().eq(store.iter()),
        "replaying the log gives another store"
    );

    Session {
        requests: got.len(),
        error,
        replies,
        out,
    }
}

/// Decodes `image` as a log disk (sector 0 header, records) the way the guest's replay
/// does, piecewise; asserts that it agrees with [`kvlog::replay_image`], never panics and
/// that re-encoding every decoded record gives back the same bytes.
pub fn log_image(image: &[u8]) -> usize {
    let _ = kvlog::check_header(&image[..image.len().min(kvlog::SECTOR)]);
    let (all, end) = kvlog::replay_image(image);
    let mut pos = kvlog::FIRST_RECORD as usize;
    let mut n = 0;
    while pos < image.len() {
        match kvlog::decode(&image[pos..]) {
            Next::Record(m, len) => {
                let mut enc = Vec::new();
                kvlog::encode(&m, &mut enc);
                assert_eq!(enc, &image[pos..pos + len], "re-encoding differs");
                assert_eq!(kvlog::record_len(&m), len);
                assert_eq!(all.get(n), Some(&m));
                n += 1;
                pos += len;
            }
            Next::NeedBytes(need) => {
                assert!(pos + need > image.len(), "NeedBytes with enough bytes");
                break;
            }
            Next::End => break,
        }
    }
    assert_eq!(n, all.len());
    if image.len() >= kvlog::FIRST_RECORD as usize {
        assert_eq!(end as usize, pos, "replay_image ends elsewhere");
    }
    n
}
