//! ftvm-devices
