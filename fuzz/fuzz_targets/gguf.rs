//! A GGUF file: header and metadata, the model config, the tokenizer it embeds, every tensor.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::scratch(data, "gguf");
    let Ok(mut file) = dnd_llm::gguf::GgufFile::open(&path) else { return };
    let _ = dnd_llm::Tokenizer::from_gguf(&file.content, &path);
    if let Ok(cfg) = file.config() {
        let _ = file.weights(&cfg);
    }
});
