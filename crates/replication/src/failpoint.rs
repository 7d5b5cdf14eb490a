//! Fault injection for the end-to-end tests: stop the engine for a while at a named
//! point, so that a failure (a backup killed or frozen) lands exactly where a race
//! would otherwise put it only now and then.
//!
//! `FTVM_FAILPOINT=NAME:MS` in the environment of an ftvm process makes [`pause`]`(NAME)`
//! print `ftvm: failpoint NAME: pausing MS ms` on stderr and sleep MS milliseconds, then
//! print `ftvm: failpoint NAME: continuing`. Without the variable (or for another name)
//! [`pause`] does nothing. Points:
//!
//! - `first-protected-epoch`: the first protected epoch, vCPUs paused and state captured,
//!   just before output starts to be held (crates/ftvm/tests/first_epoch_loss.rs).

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms a failpoint.
pub const FAILPOINT_ENV: &str = "FTVM_FAILPOINT";

/// The point before the first protected epoch holds output.
pub const FIRST_PROTECTED_EPOCH: &str = "first-protected-epoch";

/// `NAME:MS` parsed; `None` when malformed.
fn parse(spec: &str) -> Option<(String, Duration)> {
    let (name, ms) = spec.rsplit_once(':')?;
    let ms: u64 = ms.trim().parse().ok()?;
    (!name.is_empty()).then(|| (name.to_string(), Duration::from_millis(ms)))
}

fn armed() -> Option<&'static (String, Duration)> {
    static ARMED: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(FAILPOINT_ENV).ok()?;
            let parsed = parse(&spec);
            if parsed.is_none() {
                eprintln!("ftvm: ignoring {FAILPOINT_ENV}={spec:?}: expected NAME:MILLISECONDS");
            }
            parsed
        })
        .as_ref()
}

/// Sleep here if the failpoint `name` is armed.
pub fn pause(name: &str) {
    if let Some((armed, time)) = armed() {
        if armed == name {
            eprintln!("ftvm: failpoint {name}: pausing {} ms", time.as_millis());
            std::thread::sleep(*time);
            eprintln!("ftvm: failpoint {name}: continuing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused() {
        assert_eq!(
            parse("first-protected-epoch:3000"),
            Some(("first-protected-epoch".into(), Duration::from_secs(3)))
        );
        assert_eq!(parse("x:0"), Some(("x".into(), Duration::ZERO)));
        assert_eq!(parse("first-protected-epoch"), None);
        assert_eq!(parse(":5"), None);
        assert_eq!(parse("x:soon"), None);
    }
}
