//! The fence's takeover marker: which backup may take the VM over from the fence's holder.
//!
//! The fence alone says whether the holder lives; it cannot say whether the holder has
//! released output its backup never received. That happens whenever the primary runs
//! unprotected (its backup lost, say behind a cut link): if it then dies while that
//! backup is still trying to take the fence, the backup would resume an older replica
//! behind output clients already saw. So next to the fence, in the same store, the holder
//! keeps a marker naming the one protection session whose backup may take over:
//!
//! - `none` before the holder releases any output unprotected (written and durable first;
//!   if it cannot be written, nothing is released), and whenever a process takes the
//!   fence to run the VM unprotected;
//! - the session id of a backup (the link's, [`ftvm_wire::session_id`]) once that backup
//!   holds a replica that contains everything released so far (after its initial sync,
//!   before the first protected epoch; at a planned switchover, in the same step that
//!   hands the fence to the new primary).
//!
//! A backup takes the fence over only if the marker names its own session, in the same
//! step (etcd: the same transaction; lock: under the flock); otherwise it goes stale.
//! One store write per change of protection (loss, protect, switchover), none per epoch.

use std::fmt;
use std::sync::{Arc, Mutex};

use ftvm_devices::bus::lock;
use ftvm_wire::SESSION_ID_LEN;

use crate::fence::Fence as LockFence;
use crate::fence_etcd::{Cmp, Etcd, Put};

/// The id of one protection session: one primary–backup connection (it survives planned
/// switchovers, which keep the connection).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl SessionId {
    /// Parse 32 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != SESSION_ID_LEN * 2 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; SESSION_ID_LEN];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

/// Who may take the VM over from the fence's holder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TakeoverMarker {
    /// No backup: the holder may have released output no backup has.
    Nobody,
    /// The backup of this session.
    Session(SessionId),
}

impl TakeoverMarker {
    /// As stored: `none` or 32 hex digits.
    pub fn encode(&self) -> String {
        match self {
            Self::Nobody => "none".into(),
            Self::Session(s) => s.to_string(),
        }
    }

    /// The stored form back; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "none" => Some(Self::Nobody),
            other => SessionId::parse(other).map(Self::Session),
        }
    }
}

impl fmt::Display for TakeoverMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nobody => write!(f, "no backup may take over"),
            Self::Session(s) => write!(f, "backup session {s} may take over"),
        }
    }
}

/// What a backup claims when it takes the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeoverClaim {
    /// This backup's session: the marker must name it.
    pub session: SessionId,
    /// The marker to leave once taken: [`TakeoverMarker::Nobody`] when the VM will run
    /// unprotected (a takeover), this session when it stays protected over the same
    /// connection (a planned switchover whose old primary stays as the backup).
    pub then: TakeoverMarker,
}

/// The etcd key of VM `vm_id`'s marker. It has no lease: it outlives every holder.
pub fn etcd_marker_key(vm_id: &str) -> String {
    format!("ftvm/fence/{vm_id}/takeover")
}

/// A lock file holder's content: `running pid=N host=H takeover=M`.
pub(crate) fn lock_value(running: &[u8], m: TakeoverMarker) -> Vec<u8> {
    let mut v = running.to_vec();
    v.extend_from_slice(format!(" takeover={}\n", m.encode()).as_bytes());
    v
}

/// The marker in a lock file's content; `None` when there is none (an older ftvm wrote
/// the file, or the write was cut short).
pub(crate) fn lock_marker(content: &[u8]) -> Option<TakeoverMarker> {
    let text = std::str::from_utf8(content).ok()?;
    if !text.ends_with('\n') {
        return None; // cut short
    }
    text.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("takeover="))
        .and_then(TakeoverMarker::parse)
}

/// Why a backup may not take over although it could take the fence (`found`: the marker
/// the fence holds, `None` when it holds none).
pub(crate) fn refusal(found: Option<TakeoverMarker>, session: SessionId) -> String {
    match found {
        Some(TakeoverMarker::Nobody) => format!(
            "the fence says no backup may take over: the primary ran unprotected after this backup's last epoch; its replica is stale (session {session})"
        ),
        Some(TakeoverMarker::Session(other)) => format!(
            "the fence names another backup session ({other}, this one is {session}): the primary protected the VM with another backup after this backup's last epoch; its replica is stale"
        ),
        None => format!(
            "the fence holds no takeover marker (written by an ftvm without one, or cut short): not resuming a replica that may be stale (session {session})"
        ),
    }
}

/// Why the marker could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// The fence is not this process's any more (taken, handed over, lost): another
    /// process may run the VM; release nothing.
    #[error("the fence is no longer held by this process: {0}")]
    NotHeld(String),
    /// The store failed or did not answer; the marker may or may not be written.
    #[error("cannot write the takeover marker: {0}")]
    Failed(String),
}

/// Where a holder writes its marker.
#[derive(Debug)]
pub(crate) enum MarkerStore {
    /// No fencing: nothing to write.
    None,
    /// The lock file's content, written through the held lock (`None` once released).
    Lock {
        fence: Arc<Mutex<Option<LockFence>>>,
        running: Vec<u8>,
    },
    /// The marker key, written only while the fence key carries our lease.
    Etcd {
        etcd: Etcd,
        key: String,
        marker_key: String,
        lease: i64,
    },
}

impl MarkerStore {
    /// Durably record `m`; `Ok` only once the store has it.
    pub(crate) fn record(&self, m: TakeoverMarker) -> Result<(), MarkerError> {
        match self {
            Self::None => Ok(()),
            Self::Lock { fence, running } => {
                let held = lock(fence);
                let Some(f) = held.as_ref() else {
                    return Err(MarkerError::NotHeld("the fence lock was released".into()));
                };
                f.write_content(&lock_value(running, m))
                    .map_err(|e| MarkerError::Failed(e.to_string()))
            }
            Self::Etcd {
                etcd,
                key,
                marker_key,
                lease,
            } => {
                let value = m.encode();
                let t = etcd
                    .txn(
                        &[Cmp::Lease(key, *lease)],
                        &[Put {
                            key: marker_key,
                            value: value.as_bytes(),
                            lease: 0,
                        }],
                        &[key],
                    )
                    .map_err(|e| MarkerError::Failed(e.to_string()))?;
                if t.succeeded {
                    return Ok(());
                }
                Err(MarkerError::NotHeld(
                    match t.read.first().cloned().flatten() {
                        Some(kv) => format!(
                            "fence key {key} now carries another lease ({}, lease {:x})",
                            String::from_utf8_lossy(&kv.value),
                            kv.lease
                        ),
                        None => {
                            format!("fence key {key} is gone (the lease expired or was revoked)")
                        }
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_bad_ones_are_none() {
        let s = SessionId([0xab; SESSION_ID_LEN]);
        for m in [TakeoverMarker::Nobody, TakeoverMarker::Session(s)] {
            assert_eq!(TakeoverMarker::parse(&m.encode()), Some(m));
            let v = lock_value(b"running pid=1 host=h", m);
            assert_eq!(lock_marker(&v), Some(m));
            // Cut short anywhere: never read as a marker.
            for n in 0..v.len() {
                assert_ne!(lock_marker(&v[..n]), Some(m), "cut at {n}");
            }
        }
        assert_eq!(TakeoverMarker::parse("abc"), None);
        assert_eq!(TakeoverMarker::parse(&"zz".repeat(16)), None);
        assert_eq!(lock_marker(b"running pid=1 host=h"), None);
        assert_eq!(lock_marker(b"ended"), None);
    }
}
