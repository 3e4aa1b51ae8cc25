//! A lazily pulled layer's footer and table of contents come from the registry: any bytes are
//! parsed within the limits or refused, never a panic, and never more memory than the blob
//! may describe (run with `-malloc_limit_mb=64`: a 1 MB input may not make a 64 MB
//! allocation).
#![no_main]

use berth_lazy::toc::{Limits, Toc, parse_footer};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= 51 {
        let _ = parse_footer(&data[data.len() - 51..]);
    }
    // The first 8 bytes choose where the TOC starts, as a footer would say (below 1 TiB); the
    // blob is the data before it, the TOC and the footer, as the descriptor would say.
    let (head, json) = data.split_at(data.len().min(8));
    let mut off = [0u8; 8];
    off[..head.len()].copy_from_slice(head);
    let toc_offset = u64::from_le_bytes(off) % (1 << 40);
    let blob_size = toc_offset + json.len() as u64 + 51;
    let limits = Limits::default();
    if let Ok(t) = Toc::parse(json, toc_offset, blob_size, &limits) {
        // What a mount would do with it: every path, every chunk within its range.
        for i in 0..t.nodes.len().min(64) {
            let _ = t.lookup(&t.path_of(i));
            for c in &t.nodes[i].chunks {
                assert!(c.blob_end <= t.toc_offset && c.blob_offset < c.blob_end);
                assert!(c.size <= limits.max_chunk);
            }
        }
    }
});
