#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peergrid_proto_fuzz::tamper(data));
