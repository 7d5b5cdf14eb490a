//! The authenticated channel: pre-shared key, handshake proofs, per-frame tags.
//!
//! Threat model and construction are described in `docs/protocol.md`
//! ("Authentication"). In short: both sides hold the same pre-shared key
//! (PSK). The initiator's `Hello` carries a fresh 32-byte nonce `Nc`; the
//! responder's `HelloAck` carries its own nonce `Ns` and a proof
//! `HMAC(PSK, "ftvm-wire/1 responder" ‖ hello-payload ‖ Ns)`. Two directional
//! session keys `K = HMAC(PSK, label ‖ Nc ‖ Ns)` then tag every later frame
//! with a 16-byte truncated HMAC-SHA256 over its header and payload; the
//! initiator proves that it knows the PSK with the tag on its first frame
//! after the handshake.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the handshake nonces.
pub const NONCE_LEN: usize = 32;
/// Length of the handshake proof (a full HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Length of the per-frame tag (HMAC-SHA256 truncated to 128 bits).
pub const TAG_LEN: usize = 16;
/// Shortest pre-shared key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// Errors creating keys or nonces.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The pre-shared key is too short to be a key.
    #[error("pre-shared key is {len} bytes; at least {MIN_KEY_LEN} random bytes are required")]
    KeyTooShort {
        /// Length given.
        len: usize,
    },
    /// The operating system's random source failed.
    #[error("cannot draw a random nonce from the operating system: {0}")]
    Random(String),
}

/// A pre-shared key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl AuthKey {
    /// Wraps raw key bytes (at least [`MIN_KEY_LEN`]; 32 random bytes recommended).
    pub fn new(bytes: &[u8]) -> Result<Self, AuthError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(AuthError::KeyTooShort { len: bytes.len() });
        }
        Ok(AuthKey(bytes.to_vec()))
    }

    fn mac(&self) -> HmacSha256 {
        keyed(&self.0)
    }

    /// Proof sent by the responder in `HelloAck`.
    pub(crate) fn responder_proof(
        &self,
        hello_payload: &[u8],
        responder_nonce: &Nonce,
    ) -> [u8; PROOF_LEN] {
        let mut m = self.mac();
        m.update(b"ftvm-wire/1 responder proof");
        m.update(hello_payload);
        m.update(&responder_nonce.0);
        finalize(m)
    }

    /// Checks a responder proof in constant time.
    pub(crate) fn verify_responder_proof(
        &self,
        hello_payload: &[u8],
        responder_nonce: &Nonce,
        proof: &[u8; PROOF_LEN],
    ) -> bool {
        let mut m = self.mac();
        m.update(b"ftvm-wire/1 responder proof");
        m.update(hello_payload);
        m.update(&responder_nonce.0);
        m.verify_slice(proof).is_ok()
    }

    /// Derives the two directional session keys from both nonces.
    pub fn session_keys(&self, initiator: &Nonce, responder: &Nonce) -> SessionKeys {
        let derive = |label: &[u8]| {
            let mut m = self.mac();
            m.update(label);
            m.update(&initiator.0);
            m.update(&responder.0);
            TagKey::new(&finalize(m))
        };
        SessionKeys {
            initiator_to_responder: derive(b"ftvm-wire/1 key initiator->responder"),
            responder_to_initiator: derive(b"ftvm-wire/1 key responder->initiator"),
        }
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey({} bytes, redacted)", self.0.len())
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long keys are hashed), so this cannot
    // fail; fall back to an empty-key MAC rather than panicking.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => <HmacSha256 as KeyInit>::new(&Default::default()),
    }
}

fn finalize(m: HmacSha256) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// A fresh random handshake nonce.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// Draws a nonce from the operating system's random source.
    pub fn random() -> Result<Self, AuthError> {
        let mut n = [0u8; NONCE_LEN];
        getrandom::fill(&mut n).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Nonce(n))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The pair of directional keys of one authenticated session.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    /// Tags frames sent by the initiator (primary / migration source).
    pub initiator_to_responder: TagKey,
    /// Tags frames sent by the responder (backup / migration target).
    pub responder_to_initiator: TagKey,
}

/// A key that tags (or verifies) the frames of one direction.
#[derive(Clone)]
pub struct TagKey {
    mac: HmacSha256,
}

impl TagKey {
    fn new(key: &[u8]) -> Self {
        TagKey { mac: keyed(key) }
    }

    /// Starts a tag computation (the keyed state is precomputed and cloned).
    pub(crate) fn start(&self) -> Tagger {
        Tagger {
            mac: self.mac.clone(),
        }
    }
}

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagKey(redacted)")
    }
}

/// An in-progress frame tag computation.
pub(crate) struct Tagger {
    mac: HmacSha256,
}

impl Tagger {
    pub fn update(&mut self, bytes: &[u8]) {
        self.mac.update(bytes);
    }

    pub fn tag(self) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&finalize(self.mac)[..TAG_LEN]);
        out
    }

    /// Constant-time comparison against a received tag.
    pub fn verify(self, tag: &[u8; TAG_LEN]) -> bool {
        self.mac.verify_truncated_left(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            AuthKey::new(b"short"),
            Err(AuthError::KeyTooShort { len: 5 })
        ));
        assert!(AuthKey::new(&[7u8; 16]).is_ok());
    }

    #[test]
    fn debug_never_prints_key() {
        let k = AuthKey::new(b"super secret key material").unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn directional_keys_differ_and_depend_on_nonces() {
        let k = AuthKey::new(&[1u8; 32]).unwrap();
        let a = Nonce([2; 32]);
        let b = Nonce([3; 32]);
        let s1 = k.session_keys(&a, &b);
        let s2 = k.session_keys(&b, &a);
        let tag = |t: &TagKey| {
            let mut g = t.start();
            g.update(b"frame");
            g.tag()
        };
        assert_ne!(
            tag(&s1.initiator_to_responder),
            tag(&s1.responder_to_initiator)
        );
        assert_ne!(
            tag(&s1.initiator_to_responder),
            tag(&s2.initiator_to_responder)
        );
        let t = tag(&s1.initiator_to_responder);
        let mut v = s1.initiator_to_responder.start();
        v.update(b"frame");
        assert!(v.verify(&t));
    }

    #[test]
    fn responder_proof_binds_hello_and_nonce() {
        let k = AuthKey::new(&[1u8; 32]).unwrap();
        let n = Nonce([9; 32]);
        let p = k.responder_proof(b"hello", &n);
        assert!(k.verify_responder_proof(b"hello", &n, &p));
        assert!(!k.verify_responder_proof(b"hellO", &n, &p));
        assert!(!k.verify_responder_proof(b"hello", &Nonce([8; 32]), &p));
        let other = AuthKey::new(&[2u8; 32]).unwrap();
        assert!(!other.verify_responder_proof(b"hello", &n, &p));
    }
}
