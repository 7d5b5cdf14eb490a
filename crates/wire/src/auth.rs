//! The keyed channel: pre-shared key, handshake proofs, sealed frames.
//!
//! Threat model and construction are described in `docs/protocol.md`
//! ("Authentication and encryption") and `docs/operations.md`. In short: both sides
//! hold the same pre-shared key (PSK). The initiator's `Hello` carries a fresh 32-byte
//! nonce `Nc`; the responder's `HelloAck` carries its own nonce `Ns` and a proof
//! `HMAC(PSK, "ftvm-wire/1 responder" ‖ hello-payload ‖ Ns)`. Two directional
//! session keys, the first 16 bytes of `HMAC-SHA256(PSK, label ‖ Nc ‖ Ns)`, then seal
//! every later frame with AES-128-GCM (protocol version 6; versions 2-5 used
//! AES-256-GCM): the payload is encrypted, the header authenticated with it, the nonce
//! is the frame's sequence number, the 16-byte GCM tag follows the payload. The
//! initiator proves that it knows the PSK with the tag of its first frame after the
//! handshake.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce as AeadNonce, Tag, UnboundKey, AES_128_GCM};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the handshake nonces.
pub const NONCE_LEN: usize = 32;
/// Length of the handshake proof (a full HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Length of the per-frame tag (the AES-128-GCM tag).
pub const TAG_LEN: usize = 16;
/// Length of a direction's session key (AES-128).
pub const SESSION_KEY_LEN: usize = 16;
/// Labels of the two directions' key derivations (protocol version 6: AES-128-GCM).
const LABEL_I2R: &[u8] = b"ftvm-wire/6 aes-128-gcm initiator->responder";
const LABEL_R2I: &[u8] = b"ftvm-wire/6 aes-128-gcm responder->initiator";
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

    /// Derives the two directional session keys from both nonces: each is the first
    /// [`SESSION_KEY_LEN`] bytes of `HMAC-SHA256(PSK, label ‖ Nc ‖ Ns)` (a truncated
    /// HMAC, as HKDF-Expand's first block), the labels naming version and cipher.
    pub fn session_keys(&self, initiator: &Nonce, responder: &Nonce) -> SessionKeys {
        let derive = |label: &[u8]| {
            let mut m = self.mac();
            m.update(label);
            m.update(&initiator.0);
            m.update(&responder.0);
            let full = finalize(m);
            let mut key = [0u8; SESSION_KEY_LEN];
            key.copy_from_slice(&full[..SESSION_KEY_LEN]);
            TagKey::new(&key)
        };
        SessionKeys {
            initiator_to_responder: derive(LABEL_I2R),
            responder_to_initiator: derive(LABEL_R2I),
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

/// The key of one direction of a keyed session: frames are sealed with AES-128-GCM
/// (payload encrypted, header authenticated as associated data, 16-byte tag), the nonce
/// being the frame's sequence number. Sequence numbers never repeat within a direction and
/// every session has fresh keys (both handshake nonces go into them), so no (key, nonce)
/// pair is ever used twice.
#[derive(Clone)]
pub struct TagKey {
    cipher: std::sync::Arc<Option<LessSafeKey>>,
}

impl TagKey {
    fn new(key: &[u8; SESSION_KEY_LEN]) -> Self {
        // A 16-byte key is always valid for AES-128-GCM; should the library refuse it
        // anyway, the key seals nothing and every frame fails verification.
        let cipher = UnboundKey::new(&AES_128_GCM, key)
            .ok()
            .map(LessSafeKey::new);
        TagKey {
            cipher: std::sync::Arc::new(cipher),
        }
    }

    fn nonce(seq: u64) -> AeadNonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_le_bytes());
        AeadNonce::assume_unique_for_key(n)
    }

    /// Encrypts `payload` in place (frame `seq`, `header` authenticated with it); returns
    /// the tag.
    pub(crate) fn seal(&self, seq: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        // Sealing fails only for payloads beyond GCM's 64 GiB limit, far above any
        // frame's; then the all-zero tag makes the peer reject the frame.
        if let Some(Ok(tag)) = self
            .cipher
            .as_ref()
            .as_ref()
            .map(|c| c.seal_in_place_separate_tag(Self::nonce(seq), Aad::from(header), payload))
        {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Verifies and decrypts `payload` in place; false (payload unusable) if the tag does
    /// not verify: forged, tampered, replayed under another sequence number, or another key.
    pub(crate) fn open(
        &self,
        seq: u64,
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        match self.cipher.as_ref() {
            Some(c) => c
                .open_in_place_separate_tag(
                    Self::nonce(seq),
                    Aad::from(header),
                    Tag::from(*tag),
                    payload,
                    0..,
                )
                .is_ok(),
            None => false,
        }
    }
}

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagKey(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test --release -p ftvm-wire --lib seal_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn seal_speed() {
        let k = AuthKey::new(&[1u8; 32]).unwrap();
        let s = k.session_keys(&Nonce([2; 32]), &Nonce([3; 32]));
        let mut buf = vec![7u8; 1 << 20];
        let t = std::time::Instant::now();
        for seq in 0..256 {
            s.initiator_to_responder.seal(seq, b"header", &mut buf);
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!("seal: {:.0} MB/s", 256.0 * 1.048576 / secs);
    }

    /// Pins the cipher and the key derivation of protocol version 6 against an
    /// independent computation: AES-128-GCM under the first 16 bytes of
    /// HMAC-SHA256(PSK, label ‖ Nc ‖ Ns), nonce 4 zero bytes ‖ sequence number (LE).
    #[test]
    fn frames_are_sealed_with_aes_128_gcm_under_the_documented_keys() {
        use ring::aead::AES_256_GCM;
        let psk = [0x42u8; 32];
        let (nc, ns) = (Nonce([2; 32]), Nonce([3; 32]));
        let keys = AuthKey::new(&psk).unwrap().session_keys(&nc, &ns);
        let labels: [(&TagKey, &[u8]); 2] = [
            (
                &keys.initiator_to_responder,
                b"ftvm-wire/6 aes-128-gcm initiator->responder",
            ),
            (
                &keys.responder_to_initiator,
                b"ftvm-wire/6 aes-128-gcm responder->initiator",
            ),
        ];
        let plain = b"guest page bytes: 0123456789abcdefghij".to_vec();
        for (key, label) in labels {
            let mut m = <HmacSha256 as KeyInit>::new_from_slice(&psk).unwrap();
            m.update(label);
            m.update(&nc.0);
            m.update(&ns.0);
            let full = m.finalize().into_bytes();
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&9u64.to_le_bytes());
            let reference = |alg, k: &[u8]| {
                let c = LessSafeKey::new(UnboundKey::new(alg, k).unwrap());
                let mut out = plain.clone();
                let tag = c
                    .seal_in_place_separate_tag(
                        AeadNonce::assume_unique_for_key(nonce),
                        Aad::from(b"hdr"),
                        &mut out,
                    )
                    .unwrap();
                out.extend_from_slice(tag.as_ref());
                out
            };
            let mut ours = plain.clone();
            let tag = key.seal(9, b"hdr", &mut ours);
            ours.extend_from_slice(&tag);
            assert_eq!(ours, reference(&AES_128_GCM, &full[..16]), "{label:?}");
            // Not what versions 2-5 sent (AES-256-GCM under the whole HMAC output).
            assert_ne!(ours, reference(&AES_256_GCM, &full[..]));
            // And it opens again.
            let mut back = ours[..plain.len()].to_vec();
            assert!(key.open(9, b"hdr", &mut back, &tag));
            assert_eq!(back, plain);
        }
    }

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
        let seal = |t: &TagKey| {
            let mut p = *b"frame payload";
            let tag = t.seal(5, b"hdr", &mut p);
            (p, tag)
        };
        let (c1, t1) = seal(&s1.initiator_to_responder);
        assert_ne!(&c1, b"frame payload", "payload must be encrypted");
        assert_ne!((c1, t1), seal(&s1.responder_to_initiator));
        assert_ne!((c1, t1), seal(&s2.initiator_to_responder));
        let mut p = c1;
        assert!(s1.initiator_to_responder.open(5, b"hdr", &mut p, &t1));
        assert_eq!(&p, b"frame payload");
    }

    #[test]
    fn sealed_payload_rejects_tampering_replay_and_other_keys() {
        let k = AuthKey::new(&[1u8; 32]).unwrap();
        let s = k.session_keys(&Nonce([2; 32]), &Nonce([3; 32]));
        let key = &s.initiator_to_responder;
        let mut c = *b"0123456789abcdef";
        let tag = key.seal(7, b"header", &mut c);
        // Another sequence number (a replayed or reordered frame).
        assert!(!key.open(8, b"header", &mut c.clone(), &tag));
        // A changed header (e.g. kind or length).
        assert!(!key.open(7, b"headeR", &mut c.clone(), &tag));
        // A flipped ciphertext bit.
        let mut t = c;
        t[3] ^= 1;
        assert!(!key.open(7, b"header", &mut t, &tag));
        // The other direction's key.
        assert!(!s
            .responder_to_initiator
            .open(7, b"header", &mut c.clone(), &tag));
        // And the original opens.
        assert!(key.open(7, b"header", &mut c, &tag));
        assert_eq!(&c, b"0123456789abcdef");
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
