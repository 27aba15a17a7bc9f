//! Fuzz target: see `relayauth_mount::fuzzing::policy` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relayauth_mount::fuzzing::policy(data));
