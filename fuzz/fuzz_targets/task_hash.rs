//! A task hash and a heartbeat hash, as any writer may leave them: lines of
//! `field=value`.
#![no_main]

use exo_proto::{TaskResult, WorkerHealth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(field, value)| (field.to_owned(), value.to_owned()))
        .collect();
    let _ = TaskResult::from_hash(fields.clone());
    let _ = WorkerHealth::from_hash("w", fields);
});
