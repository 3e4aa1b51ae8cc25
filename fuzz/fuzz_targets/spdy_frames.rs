//! What a streaming client sends is hostile: any byte stream is decoded into frames or
//! refused, without a panic, a hang or unbounded memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_stream::spdy::decode_frames(data);
});
