//! Fuzz target: the test guest's disk-log decoder; see `ftvm_testguest::kvfuzz::log_image`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftvm_testguest::kvfuzz::log_image(data);
});
