//! Fuzz target: see `ftvm_wire::fuzzing::frame_placing` for the input format and
//! the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ftvm_wire::fuzzing::frame_placing(data);
});
