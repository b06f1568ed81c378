//! An event read from a task's stream or pub/sub channel.
#![no_main]

use exo_proto::StreamEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = exo_proto::decode::<StreamEvent>("event", data) {
        let again: StreamEvent = exo_proto::decode("event", event.to_json().as_bytes())
            .expect("an encoded event decodes");
        assert_eq!(again.is_terminal(), event.is_terminal());
    }
});
