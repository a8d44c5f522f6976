#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peergrid_submitter_fuzz::task_result(data));
