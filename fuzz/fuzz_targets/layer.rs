//! Image layers are hostile: any tar stream is applied inside its snapshot directory or
//! refused, and nothing is ever written outside it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let dest = dir.path().join("fs");
    let outside = dir.path().join("outside");
    if std::fs::create_dir(&dest).is_err() || std::fs::create_dir(&outside).is_err() {
        return;
    }
    let _ = berth_image::unpack::apply_layer(data, &dest, "sha256:fuzz");
    // Nothing escaped into the sibling directory, nor next to the snapshot.
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(escaped.is_empty(), "a layer wrote outside its snapshot: {escaped:?}");
    let top: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(top.len(), 2, "a layer wrote next to its snapshot: {top:?}");
});
