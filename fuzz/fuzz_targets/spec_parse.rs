//! Fuzzes the task-spec parser: any bytes in a spec file give a spec or an error, never a
//! panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = execute_local_task::spec::parse(Path::new("fuzz.json"), text);
    }
});
