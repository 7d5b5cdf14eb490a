//! ftvm-wire: the wire protocol between an ftvm primary and its backup (and
//! between the two ends of a live migration), and the snapshot file formats.
//!
//! Layers, bottom up:
//! - [`frame`]: framed byte stream: magic, version, kind, sequence number,
//!   bounded length, CRC32C, optional HMAC tag ([`FrameReader`], [`FrameWriter`]).
//! - [`message`]: typed messages with strict decoders ([`Message`]).
//! - [`stream`]: [`MessageReader`] / [`MessageWriter`]: zero-copy page
//!   streaming, epoch totals.
//! - [`handshake`]: `Hello` / `HelloAck`, shape check, mutual authentication.
//! - [`epoch`]: [`EpochAssembler`]: stages an epoch and releases it only
//!   when complete and verified (invariant 2).
//! - [`snapshot`]: snapshot state-file container and memory files.
//!
//! State blobs (vCPU, VM, device state) are opaque bytes here. Byte layouts
//! are specified in `docs/protocol.md` and `docs/snapshot-format.md`.

pub mod auth;
mod codec;
mod crc_combine;
pub mod epoch;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod message;
pub mod shape;
pub mod snapshot;
pub mod stream;

pub use auth::{AuthError, AuthKey, Nonce};
pub use epoch::{
    AssemblerConfig, EpochAssembler, EpochError, FedFrame, FrameFeedError, PageWrite, Progress,
    StagedEpoch,
};
pub use frame::{
    At, Frame, FrameError, FrameReader, FrameWriteError, FrameWriter, OwnedFrame, PROTOCOL_VERSION,
};
pub use handshake::{
    accept, initiate, session_id, HandshakeConfig, HandshakeError, Peer, SESSION_ID_LEN,
};
pub use message::{
    DecodeError, DiskHashes, DiskShape, DiskWrites, EpochCommit, ErrorCode, Hello, HelloAck, Kind,
    Message, Pages, Role, SwitchoverPhase, VmShape, ZeroPages, DISK_HASH_LEN, MAX_DISKS, PAGE_SIZE,
    SECTOR_SIZE,
};
pub use stream::{
    decode_frame, pages_frame_len, MessageReader, MessageWriter, PagesInPlace, RecvError, SendError,
};
