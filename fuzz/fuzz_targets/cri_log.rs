//! A container's output is hostile: however it is cut into chunks, the CRI log records made
//! of it are at most MAX_LINE bytes each and put back together give exactly the output.
#![no_main]

use berth_sandbox::logs::{LineSplitter, MAX_LINE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the output is cut into reads.
    let Some((&cut, output)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1) * 97;
    let mut rebuilt = Vec::with_capacity(output.len());
    let mut emit = |record: &[u8], partial: bool| {
        assert!(record.len() <= MAX_LINE, "record of {} bytes", record.len());
        rebuilt.extend_from_slice(record);
        if !partial {
            rebuilt.push(b'\n');
        }
    };
    let mut lines = LineSplitter::default();
    for chunk in output.chunks(step) {
        lines.push(chunk, &mut emit);
    }
    lines.finish(&mut emit);
    assert_eq!(rebuilt, output);
});
