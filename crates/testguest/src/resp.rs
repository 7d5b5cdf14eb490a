//! RESP2 request parsing for the test guest's key-value service (no_std + alloc; compiled
//! into the guest image and into this crate's library, where it is unit- and fuzz-tested).
//!
//! A request is either a multibulk array (`*<n>\r\n` followed by `n` bulk strings
//! `$<len>\r\n<bytes>\r\n`, what `redis-cli` and `redis-benchmark` send) or an inline
//! command (one line of space-separated words, what `nc` sends). [`parse`] looks at the
//! start of a connection's input buffer and returns the next complete request, "need more
//! bytes", or a protocol error after which the connection is answered and closed.

use alloc::vec::Vec;

/// Largest bulk string accepted by the parser. Larger values are rejected by the command
/// layer ([`crate::kvstore::Limits::max_value`]); beyond this the request is a protocol
/// error (the connection is closed after the error reply).
pub const MAX_BULK: usize = 1 << 20;
/// Most arguments in one multibulk request.
pub const MAX_ARGS: usize = 4096;
/// Longest inline command line (and longest `*`/`$` header line is far shorter).
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest `*<n>` / `$<len>` header line before its CRLF.
const MAX_HEADER: usize = 24;

/// Why a request cannot be parsed; the connection gets [`ProtocolError::message`] as an
/// error reply and is closed (as Redis does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*` not followed by a decimal count, or more than [`MAX_ARGS`].
    MultibulkLength,
    /// `$` not followed by a decimal length in `0..=MAX_BULK`.
    BulkLength,
    /// Something other than `$` where a bulk string must start (the byte found).
    ExpectedBulk(u8),
    /// A bulk string not followed by CRLF.
    BulkTerminator,
    /// An inline command line longer than [`MAX_INLINE`] without a newline.
    InlineTooLong,
}

impl ProtocolError {
    /// The error reply (without `-` and CRLF), in Redis's words.
    pub fn message(&self) -> &'static str {
        match self {
            ProtocolError::MultibulkLength => "ERR Protocol error: invalid multibulk length",
            ProtocolError::BulkLength => "ERR Protocol error: invalid bulk length",
            ProtocolError::ExpectedBulk(_) => "ERR Protocol error: expected '$'",
            ProtocolError::BulkTerminator => "ERR Protocol error: bulk string not followed by CRLF",
            ProtocolError::InlineTooLong => "ERR Protocol error: too big inline request",
        }
    }
}

/// A parsed request: its arguments (borrowed from the buffer) and how many bytes it used.
pub type Request<'a> = (Vec<&'a [u8]>, usize);

/// Parses the request at the start of `buf`: `Ok(Some((args, used)))` for a complete one
/// (`args` may be empty: an empty line or `*0`; skip `used` bytes), `Ok(None)` when more
/// bytes are needed, `Err` for input that can never become a valid request.
pub fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

/// Finds the CRLF-terminated header line starting at `at` + 1 (after the type byte):
/// `Ok(Some((number, next)))`, `Ok(None)` if incomplete.
fn header(
    buf: &[u8],
    at: usize,
    err: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let start = at + 1;
    let rest = buf.get(start..).unwrap_or(&[]);
    let limit = rest.len().min(MAX_HEADER + 1);
    let Some(cr) = rest[..limit].iter().position(|&b| b == b'\r') else {
        return if rest.len() > MAX_HEADER {
            Err(err)
        } else {
            Ok(None)
        };
    };
    if cr + 1 >= rest.len() {
        return Ok(None);
    }
    if rest[cr + 1] != b'\n' {
        return Err(err);
    }
    let n = parse_i64(&rest[..cr]).ok_or(err)?;
    Ok(Some((n, start + cr + 2)))
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<Request<'_>>, ProtocolError> {
    let Some((count, mut pos)) = header(buf, 0, ProtocolError::MultibulkLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    if count as u64 > MAX_ARGS as u64 {
        return Err(ProtocolError::MultibulkLength);
    }
    let mut args = Vec::new();
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => return Err(ProtocolError::ExpectedBulk(b)),
        }
        let Some((len, data)) = header(buf, pos, ProtocolError::BulkLength)? else {
            return Ok(None);
        };
        if len < 0 || len as u64 > MAX_BULK as u64 {
            return Err(ProtocolError::BulkLength);
        }
        let len = len as usize;
        let end = data + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::BulkTerminator);
        }
        args.push(&buf[data..end]);
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

fn parse_inline(buf: &[u8]) -> Result<Option<Request<'_>>, ProtocolError> {
    let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    Ok(Some((args, nl + 1)))
}

/// Strict decimal i64: optional `-`, 1..=19 digits, nothing else.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(i64::from(d - b'0'))?
        } else {
            v.checked_add(i64::from(d - b'0'))?
        };
    }
    Some(v)
}

/// Appends the decimal form of `v`.
pub fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&tmp[i..]);
}

/// `+<s>\r\n`
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-<s>\r\n` (`s` must not contain CR or LF).
pub fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `:<v>\r\n`
pub fn integer(out: &mut Vec<u8>, v: i64) {
    out.push(b':');
    push_int(out, v);
    out.extend_from_slice(b"\r\n");
}

/// `$<len>\r\n<b>\r\n`
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    push_int(out, b.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `$-1\r\n` (nil)
pub fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(buf: &[u8]) -> (Vec<&[u8]>, usize) {
        parse(buf).unwrap().unwrap()
    }

    #[test]
    fn multibulk_commands_and_pipelines() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = ok(buf);
        assert_eq!(args, vec![&b"SET"[..], b"k", b"hello"]);
        let (args2, used2) = ok(&buf[used..]);
        assert_eq!(args2, vec![&b"PING"[..]]);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn binary_values_with_crlf_inside() {
        let (args, _) = ok(b"*2\r\n$4\r\na\r\nb\r\n$0\r\n\r\n");
        assert_eq!(args, vec![&b"a\r\nb"[..], b""]);
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let buf = b"*3\r\n$3\r\nSET\r\n$10\r\n0123456789\r\n$1\r\nx\r\n";
        for i in 0..buf.len() {
            assert_eq!(parse(&buf[..i]), Ok(None), "prefix of {i} bytes");
        }
        assert_eq!(ok(buf).1, buf.len());
    }

    #[test]
    fn inline_commands() {
        assert_eq!(ok(b"PING\r\n"), (vec![&b"PING"[..]], 6));
        assert_eq!(ok(b"set  a\tb\n"), (vec![&b"set"[..], b"a", b"b"], 9));
        assert_eq!(ok(b"\r\n"), (vec![], 2));
        assert_eq!(parse(b"GET a"), Ok(None));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse(b"*x\r\n"), Err(ProtocolError::MultibulkLength));
        assert_eq!(parse(b"*99999999\r\n"), Err(ProtocolError::MultibulkLength));
        assert_eq!(
            parse(b"*1\r\n+OK\r\n"),
            Err(ProtocolError::ExpectedBulk(b'+'))
        );
        assert_eq!(parse(b"*1\r\n$-5\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(parse(b"*1\r\n$2000000\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(
            parse(b"*1\r\n$1\r\nabc\r\n"),
            Err(ProtocolError::BulkTerminator)
        );
        assert_eq!(parse(b"*1\r\n$1\rx"), Err(ProtocolError::BulkLength));
        assert_eq!(
            parse(b"*1111111111111111111111111111111111"),
            Err(ProtocolError::MultibulkLength)
        );
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(parse(&long), Err(ProtocolError::InlineTooLong));
        assert_eq!(parse(&long[..MAX_INLINE]), Ok(None));
    }

    #[test]
    fn empty_multibulk_is_skipped() {
        assert_eq!(ok(b"*0\r\n"), (vec![], 4));
        assert_eq!(ok(b"*-1\r\n"), (vec![], 5));
    }

    #[test]
    fn integers() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"1 "), None);
        for v in [0, 1, -1, 42, i64::MAX, i64::MIN, -1000] {
            let mut out = Vec::new();
            push_int(&mut out, v);
            assert_eq!(parse_i64(&out), Some(v));
        }
    }
}
