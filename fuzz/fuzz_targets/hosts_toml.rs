//! hosts.toml files are operator input that berth re-reads on every pull: any text must be a
//! result or an error naming the file, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = berth_image::hosts::parse_hosts(
            std::path::Path::new("/etc/berth/certs.d/docker.io/hosts.toml"),
            text,
            "docker.io",
        );
    }
});
