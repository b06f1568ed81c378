//! A payload's `agent_config`: an agent or a swarm, with its flow string.
#![no_main]

use exo_proto::AgentSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(config)) = serde_json::from_slice(data)
        && let Ok(spec) = AgentSpec::from_map(&config)
    {
        let _ = spec.validate();
        let _ = spec.name();
    }
});
