//! A queue entry's payload: decoding never panics, and what decodes
//! encodes back to the same payload.
#![no_main]

use exo_proto::TaskPayload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = TaskPayload::from_json(data) {
        let again = TaskPayload::from_json(payload.to_json().as_bytes())
            .expect("an encoded payload decodes");
        assert_eq!(again.task_id, payload.task_id);
        let _ = payload.validate();
        let _ = payload.agent_spec();
    }
});
