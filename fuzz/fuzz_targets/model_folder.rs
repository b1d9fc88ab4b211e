//! Loading a model folder whose config.json and model.safetensors are arbitrary bytes:
//! an error, never a panic (and never an allocation the size of a lying header).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let config: &[u8] = if cut < data.len() {
        &data[..cut]
    } else {
        br#"{"src_vocab_size": 16, "tgt_vocab_size": 16, "embedding_size": 4, "hidden_size": 4, "encoder_layers": 1, "decoder_layers": 1}"#
    };
    let weights = &data[(cut + 1).min(data.len())..];
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    let _ = rnmt::model::load_model(dir.path(), &candle_core::Device::Cpu);
});
