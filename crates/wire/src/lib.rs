//! ftvm-wire
