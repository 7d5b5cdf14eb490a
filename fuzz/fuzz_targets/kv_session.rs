//! Fuzz target: the test guest's RESP parser and key-value commands; see
//! `ftvm_testguest::kvfuzz::session`. Byte 0 = size of the chunks the input is fed in
//! (0 = all at once), the rest is one connection's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&chunk, input)) = data.split_first() {
        ftvm_testguest::kvfuzz::session(input, &[chunk]);
    }
});
