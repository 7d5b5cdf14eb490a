//! A connection between two ftvm processes: TCP, framed messages, handshake.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ftvm_vmm::state::{VmShape, STATE_VERSION};
use ftvm_vmm::Vm;
use ftvm_wire::{
    accept, initiate, AuthKey, DiskShape, HandshakeConfig, MessageReader, MessageWriter, Peer,
    Role, MAX_DISKS,
};

use crate::error::ReplicationError;
use crate::low_water::LowWater;

/// Reading half of a connection: buffered, so that one read drains what the socket holds
/// (several frames) instead of three reads per frame (header, payload, trailer).
pub type Reader = MessageReader<BufReader<TcpStream>>;

/// Read buffer of a connection. Smaller than a page frame's payload (about 1 MiB): the
/// buffer gathers headers and small frames, and once it is drained, a large payload's
/// remaining bytes (most of it) are read straight into the frame's buffer instead of
/// being copied through this one.
const READ_BUFFER: usize = 64 << 10;
/// Read buffer of a migration target's connection: smaller still, so that a page frame's
/// payload (hundreds of KiB) is read from the socket straight into the frame buffer;
/// headers, trailers and small messages still come out of it.
const MIGRATION_READ_BUFFER: usize = 16 << 10;

/// The read buffer for a connection of `role` (this side's role).
fn read_buffer(role: Role) -> usize {
    if role == Role::MigrationTarget {
        MIGRATION_READ_BUFFER
    } else {
        READ_BUFFER
    }
}
/// Writing half of a connection.
pub type Writer = MessageWriter<TcpStream>;

/// An established, handshaken connection.
#[derive(Debug)]
pub struct Link {
    /// Incoming messages.
    pub reader: Reader,
    /// Outgoing messages.
    pub writer: Writer,
    /// The socket (for shutdown and timeouts).
    pub stream: TcpStream,
    /// Who the peer is.
    pub peer: Peer,
}

/// The wire-level shape of a VM: memory, vCPUs, the state format version, the devices
/// (network device count, each disk's size and read-only flag) and a fingerprint of
/// everything else that must match (CPU profile, device models). A peer whose shape
/// differs is refused at connect, not at takeover.
pub fn wire_shape(vm: &Vm) -> ftvm_wire::VmShape {
    let shape = vm.shape();
    let config = vm.config();
    let disks: Vec<DiskShape> = config
        .disks
        .iter()
        .map(|d| DiskShape {
            bytes: d.size(),
            readonly: d.readonly(),
        })
        .collect();
    shape_of(&shape, config.net.len(), &disks)
}

/// [`wire_shape`] from its parts.
pub fn shape_of(shape: &VmShape, nets: usize, disks: &[DiskShape]) -> ftvm_wire::VmShape {
    // FNV-1a over the device/CPU configuration description.
    let desc = format!(
        "cpu={:?};devices=serial0,i8042,debug-exit,acpi_pm",
        shape.cpu_profile
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in desc.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let base = ftvm_wire::VmShape {
        memory_bytes: shape.memory,
        vcpus: shape.cpus,
        device_fingerprint: h,
        state_version: STATE_VERSION,
        // More than the wire carries cannot be configured (the CLI allows 4 of each);
        // saturate rather than wrap so a mismatch still shows.
        nets: u8::try_from(nets).unwrap_or(u8::MAX),
        ..ftvm_wire::VmShape::default()
    };
    let n = disks.len().min(MAX_DISKS);
    base.with_disks(&disks[..n]).unwrap_or(base)
}

fn split(
    stream: TcpStream,
    read_buffer: usize,
) -> Result<(Reader, Writer, TcpStream), ReplicationError> {
    stream
        .set_nodelay(true)
        .map_err(|e| ReplicationError::io("setting TCP_NODELAY", e))?;
    let r = stream
        .try_clone()
        .map_err(|e| ReplicationError::io("cloning the socket", e))?;
    let w = stream
        .try_clone()
        .map_err(|e| ReplicationError::io("cloning the socket", e))?;
    let mut reader = MessageReader::new(BufReader::with_capacity(read_buffer, r));
    // Woken per 256 KiB of a large frame, not per packet (crate::low_water).
    let low_water =
        LowWater::new(&stream).map_err(|e| ReplicationError::io("cloning the socket", e))?;
    reader.frames_mut().set_wait_hint(Box::new(low_water));
    Ok((reader, MessageWriter::new(w), stream))
}

/// Shake hands on a fresh connection within `timeout`, then lift the timeout.
fn shake(
    stream: TcpStream,
    role: Role,
    timeout: Duration,
    handshake: impl FnOnce(&mut Reader, &mut Writer) -> Result<Peer, ReplicationError>,
) -> Result<Link, ReplicationError> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ReplicationError::io("setting a read timeout", e))?;
    let (mut reader, mut writer, stream) = split(stream, read_buffer(role))?;
    let peer = handshake(&mut reader, &mut writer)?;
    stream
        .set_read_timeout(None)
        .map_err(|e| ReplicationError::io("clearing the read timeout", e))?;
    Ok(Link {
        reader,
        writer,
        stream,
        peer,
    })
}

/// Connect to `addr` as `role` and shake hands.
pub fn connect(
    addr: &str,
    role: Role,
    vm: &Vm,
    key: Option<AuthKey>,
    timeout: Duration,
) -> Result<Link, ReplicationError> {
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(|e| ReplicationError::io(&format!("resolving {addr}"), e))?
        .next()
        .ok_or_else(|| ReplicationError::Peer(format!("{addr} resolves to no address")))?;
    let stream = TcpStream::connect_timeout(&sockaddr, timeout)
        .map_err(|e| ReplicationError::io(&format!("connecting to {addr}"), e))?;
    let cfg = HandshakeConfig {
        role,
        shape: wire_shape(vm),
        key,
    };
    shake(stream, role, timeout, |r, w| Ok(initiate(r, w, &cfg)?))
}

/// Accept one connection on `listener` as `role` and shake hands. A peer that fails the
/// handshake is refused (it was told why) and `Err` says why.
pub fn accept_one(
    listener: &TcpListener,
    role: Role,
    vm: &Vm,
    key: Option<AuthKey>,
) -> Result<Link, ReplicationError> {
    let (stream, from) = listener
        .accept()
        .map_err(|e| ReplicationError::io("accepting a connection", e))?;
    let cfg = HandshakeConfig {
        role,
        shape: wire_shape(vm),
        key,
    };
    shake(stream, role, Duration::from_secs(10), |r, w| {
        accept(r, w, &cfg).map_err(|e| ReplicationError::Peer(format!("peer {from} refused: {e}")))
    })
}

/// Now, as nanoseconds since the Unix epoch (heartbeat timestamps).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
