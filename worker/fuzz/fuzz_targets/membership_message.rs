#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peergrid_worker_fuzz::membership_message(data));
