//! SPDY header blocks are zlib streams with a preset dictionary: any bytes decompress into
//! headers within the size limit, or are refused.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_stream::spdy::decode_header_block(data);
});
