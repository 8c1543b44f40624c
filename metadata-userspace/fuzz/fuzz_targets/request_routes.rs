//! Raw request bytes through the serving core's rules and both trees of
//! the local backend: see `metadata_userspace::fuzzing::request_routes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    metadata_userspace::fuzzing::request_routes(data);
});
