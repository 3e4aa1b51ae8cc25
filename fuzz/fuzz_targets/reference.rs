//! Image references come straight from CRI requests. A parsed reference must print back to a
//! string that parses to the same reference.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = berth_image::Reference::parse(s) {
        let again = berth_image::Reference::parse(&r.to_string())
            .expect("a normalised reference parses again");
        assert_eq!(again.to_string(), r.to_string());
    }
});
