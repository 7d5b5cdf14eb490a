//! Connection setup: `Hello` from the initiator (primary or migration
//! source), `HelloAck` or a refusing `Error` from the responder (backup or
//! migration target).
//!
//! The responder checks, in order: protocol version, role, authentication
//! (both sides must agree on using a key), VM shape. Each refusal is sent to
//! the peer as an `Error` message naming what differs, and returned locally.
//! With a key, the responder proves it in `HelloAck`; both sides then tag
//! every frame with directional session keys, and the initiator's first
//! tagged frame proves its key to the responder.

use std::io::{Read, Write};

use crate::auth::{AuthError, AuthKey, Nonce};
use crate::frame::PROTOCOL_VERSION;
use crate::message::{ErrorCode, Hello, HelloAck, Kind, Message, Role, VmShape};
use crate::stream::{MessageReader, MessageWriter, RecvError, SendError};

/// What this side is and holds.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// This side's role.
    pub role: Role,
    /// This side's VM shape.
    pub shape: VmShape,
    /// Pre-shared key; if set, the peer must authenticate with the same key.
    pub key: Option<AuthKey>,
}

/// What the handshake established about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Peer's role.
    pub role: Role,
    /// Peer's VM shape (known to the responder; the initiator gets its own
    /// shape back, since the responder verified that they match).
    pub shape: VmShape,
    /// Whether frames are now tagged in both directions.
    pub authenticated: bool,
    /// The connection's session id: 128 bits both sides derive from the two fresh
    /// nonces of the handshake ([`session_id`]), so each connection has its own. The
    /// fence's takeover marker names it (which backup may take the VM over).
    pub session: [u8; SESSION_ID_LEN],
}

/// Length of a session id.
pub const SESSION_ID_LEN: usize = 16;

/// The session id of a connection whose `Hello` carried `initiator` and whose `HelloAck`
/// carried `responder`: the first 16 bytes of their XOR. Random as long as either side's
/// nonce is; no frame carries it.
pub fn session_id(initiator: &Nonce, responder: &Nonce) -> [u8; SESSION_ID_LEN] {
    let mut s = [0u8; SESSION_ID_LEN];
    for (i, b) in s.iter_mut().enumerate() {
        *b = initiator.0[i] ^ responder.0[i];
    }
    s
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Sending failed.
    #[error("handshake: {0}")]
    Send(#[from] SendError),
    /// Receiving failed.
    #[error("handshake: {0}")]
    Recv(#[from] RecvError),
    /// No random nonce.
    #[error("handshake: {0}")]
    Auth(#[from] AuthError),
    /// The peer closed the connection.
    #[error("handshake: peer closed the connection before answering {waiting_for}")]
    Closed {
        /// What this side was waiting for.
        waiting_for: Kind,
    },
    /// The peer sent something other than the expected message.
    #[error("handshake: expected {expected}, peer sent {got}")]
    Unexpected {
        /// Expected kind.
        expected: Kind,
        /// Kind received.
        got: Kind,
    },
    /// The peer refused the connection.
    #[error("handshake refused by peer: {code}: {message}")]
    Refused {
        /// Peer's error code.
        code: ErrorCode,
        /// Peer's explanation.
        message: String,
    },
    /// This side refused the peer (an `Error` with the same text was sent).
    #[error("handshake: refused the peer: {code}: {message}")]
    RefusedPeer {
        /// Code sent.
        code: ErrorCode,
        /// Explanation sent.
        message: String,
    },
}

fn refuse<W: Write>(w: &mut MessageWriter<W>, code: ErrorCode, message: String) -> HandshakeError {
    // Best effort: the refusal is returned locally even if it cannot be sent.
    let _ = w.send_error(code, &message);
    HandshakeError::RefusedPeer { code, message }
}

fn expect_reply<R: Read, T>(
    r: &mut MessageReader<R>,
    expected: Kind,
    pick: impl FnOnce(&Message<'_>) -> Option<T>,
) -> Result<T, HandshakeError> {
    match r.recv()? {
        None => Err(HandshakeError::Closed {
            waiting_for: expected,
        }),
        Some(Message::Error { code, message }) => Err(HandshakeError::Refused {
            code,
            message: message.into_owned(),
        }),
        Some(m) => match pick(&m) {
            Some(v) => Ok(v),
            None => Err(HandshakeError::Unexpected {
                expected,
                got: m.kind(),
            }),
        },
    }
}

/// Initiator side (primary or migration source): sends `Hello`, verifies
/// `HelloAck`, and keys both halves of the connection if a key is set.
pub fn initiate<R: Read, W: Write>(
    r: &mut MessageReader<R>,
    w: &mut MessageWriter<W>,
    cfg: &HandshakeConfig,
) -> Result<Peer, HandshakeError> {
    let nonce = Nonce::random()?;
    let hello = Message::Hello(Hello::new(cfg.role, cfg.shape, nonce, cfg.key.is_some()));
    let hello_payload = hello.to_payload().map_err(|source| SendError::Invalid {
        kind: Kind::Hello,
        source,
    })?;
    w.send(&hello)?;
    let ack = expect_reply(r, Kind::HelloAck, |m| match m {
        Message::HelloAck(a) => Some(*a),
        _ => None,
    })?;
    let mut peer = check_ack(w, cfg, &ack, &hello_payload)?;
    peer.session = session_id(&nonce, &ack.nonce);
    if let Some(key) = &cfg.key {
        let keys = key.session_keys(&nonce, &ack.nonce);
        w.frames_mut().set_key(keys.initiator_to_responder);
        r.frames_mut().set_key(keys.responder_to_initiator);
    }
    Ok(peer)
}

fn check_ack<W: Write>(
    w: &mut MessageWriter<W>,
    cfg: &HandshakeConfig,
    ack: &HelloAck,
    hello_payload: &[u8],
) -> Result<Peer, HandshakeError> {
    if ack.version != PROTOCOL_VERSION {
        return Err(refuse(
            w,
            ErrorCode::Version,
            format!(
                "protocol version {} not supported (this side speaks {PROTOCOL_VERSION})",
                ack.version
            ),
        ));
    }
    let want = cfg.role.counterpart();
    if ack.role != want {
        return Err(refuse(
            w,
            ErrorCode::RoleRefused,
            format!(
                "peer answered as {}, a {} talks only to a {want}",
                ack.role, cfg.role
            ),
        ));
    }
    let authenticated = match (&cfg.key, &ack.proof) {
        (Some(key), Some(proof)) => {
            if !key.verify_responder_proof(hello_payload, &ack.nonce, proof) {
                return Err(refuse(
                    w,
                    ErrorCode::AuthFailed,
                    "responder's key proof does not verify: the pre-shared keys differ".to_string(),
                ));
            }
            true
        }
        (Some(_), None) => {
            return Err(refuse(
                w,
                ErrorCode::AuthRequired,
                "responder accepted without proving the pre-shared key; this side requires authentication"
                    .to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err(refuse(
                w,
                ErrorCode::Protocol,
                "responder sent a key proof although this side offered no authentication".to_string(),
            ))
        }
        (None, None) => false,
    };
    Ok(Peer {
        role: ack.role,
        shape: cfg.shape,
        authenticated,
        session: [0; SESSION_ID_LEN],
    })
}

/// Responder side (backup or migration target): reads `Hello`, checks it,
/// answers `HelloAck` or a refusing `Error`.
pub fn accept<R: Read, W: Write>(
    r: &mut MessageReader<R>,
    w: &mut MessageWriter<W>,
    cfg: &HandshakeConfig,
) -> Result<Peer, HandshakeError> {
    let hello = expect_reply(r, Kind::Hello, |m| match m {
        Message::Hello(h) => Some(*h),
        _ => None,
    })?;
    if hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            w,
            ErrorCode::Version,
            format!(
                "protocol version {} not supported (this side speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        ));
    }
    let want = cfg.role.counterpart();
    if hello.role != want {
        return Err(refuse(
            w,
            ErrorCode::RoleRefused,
            format!(
                "peer is a {}, a {} accepts only a {want}",
                hello.role, cfg.role
            ),
        ));
    }
    match (&cfg.key, hello.auth) {
        (Some(_), false) => {
            return Err(refuse(
                w,
                ErrorCode::AuthRequired,
                format!(
                    "this {} requires authentication with a pre-shared key; the peer offered none",
                    cfg.role
                ),
            ))
        }
        (None, true) => {
            return Err(refuse(
                w,
                ErrorCode::AuthRequired,
                format!(
                    "peer requires authentication but this {} has no pre-shared key configured",
                    cfg.role
                ),
            ))
        }
        _ => {}
    }
    let differ = cfg.shape.differences(&hello.shape);
    if !differ.is_empty() {
        return Err(refuse(
            w,
            ErrorCode::ShapeMismatch,
            format!(
                "VM shapes differ in {}: this {} has {}, the {} has {}",
                differ.join(", "),
                cfg.role,
                cfg.shape,
                hello.role,
                hello.shape
            ),
        ));
    }
    let nonce = Nonce::random()?;
    let hello_payload =
        Message::Hello(hello)
            .to_payload()
            .map_err(|source| SendError::Invalid {
                kind: Kind::Hello,
                source,
            })?;
    let proof = cfg
        .key
        .as_ref()
        .map(|k| k.responder_proof(&hello_payload, &nonce));
    w.send(&Message::HelloAck(HelloAck {
        version: PROTOCOL_VERSION,
        role: cfg.role,
        nonce,
        proof,
    }))?;
    if let Some(key) = &cfg.key {
        let keys = key.session_keys(&hello.nonce, &nonce);
        w.frames_mut().set_key(keys.responder_to_initiator);
        r.frames_mut().set_key(keys.initiator_to_responder);
    }
    Ok(Peer {
        role: hello.role,
        shape: hello.shape,
        authenticated: cfg.key.is_some(),
        session: session_id(&hello.nonce, &nonce),
    })
}
