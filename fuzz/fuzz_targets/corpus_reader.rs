//! The parallel corpus reader on arbitrary files: an error or a corpus, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnmt::corpus::ParallelCorpus;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    // The first NUL (or the middle) parts the two sides.
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len() / 2);
    std::fs::write(dir.path().join("c.de"), &data[..cut]).unwrap();
    std::fs::write(dir.path().join("c.en"), &data[cut..]).unwrap();
    if let Ok(c) = ParallelCorpus::read_unfiltered(&dir.path().join("c"), "de", "en") {
        assert_eq!(c.sources().count(), c.targets().count());
    }
});
