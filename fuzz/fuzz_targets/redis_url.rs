//! Redis URLs from flags and the environment; masking never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = exo_broker::RedisUrl::parse(text);
        let _ = exo_broker::mask_url(text);
    }
});
