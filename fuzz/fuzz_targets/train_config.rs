//! The TOML training config and its `--set key=value` overrides: an error naming what is
//! wrong, or a config that validates, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnmt::train::config::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Lines after a `---` line are overrides.
    let (toml, sets) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let overrides: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = TrainConfig::from_toml(toml, &overrides) {
        let _ = cfg.validate();
    }
});
