//! A streaming client's frames are hostile, in any order: a session fed any sequence of
//! frames ends when its peer goes, never holds more streams than its limit, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let most = berth_stream::spdy::fuzz_session(data, 8);
    assert!(most <= 8, "{most} streams open under a limit of 8");
});
