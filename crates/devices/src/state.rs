//! The state trait every device implements.

use serde::{de::DeserializeOwned, Serialize};

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The saved bytes do not decode as this device's state.
    #[error("device {device}: saved state does not decode: {source}")]
    Decode {
        /// Which device.
        device: &'static str,
        /// The decoder's reason.
        source: postcard::Error,
    },
    /// The state could not be encoded.
    #[error("device {device}: state does not encode: {source}")]
    Encode {
        /// Which device.
        device: &'static str,
        /// The encoder's reason.
        source: postcard::Error,
    },
    /// The state decodes but describes something this device cannot be.
    #[error("device {device}: invalid state: {reason}")]
    Invalid {
        /// Which device.
        device: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A device whose complete state can be captured as bytes and put back.
///
/// `save` followed by `restore` on a fresh device of the same kind must give a device that
/// behaves identically from then on: that is what snapshot, migration and failover rely on.
pub trait Stateful {
    /// A stable name for this device in saved state (e.g. "serial0").
    fn state_id(&self) -> &'static str;
    /// The device's complete state.
    fn save(&self) -> Result<Vec<u8>, StateError>;
    /// Replace the device's state with a saved one.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError>;
}

/// Encode a serde state struct for device `device`.
pub fn encode<T: Serialize>(device: &'static str, state: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(state).map_err(|source| StateError::Encode { device, source })
}

/// Decode a serde state struct for device `device`, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(device: &'static str, bytes: &[u8]) -> Result<T, StateError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|source| StateError::Decode { device, source })?;
    if !rest.is_empty() {
        return Err(StateError::Invalid {
            device,
            reason: format!("{} trailing bytes after the state", rest.len()),
        });
    }
    Ok(value)
}
