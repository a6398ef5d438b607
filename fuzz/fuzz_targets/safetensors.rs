//! A safetensors file (model weights, PEFT adapter weights).
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::scratch(data, "safetensors");
    let _ = dnd_llm::hf::read_safetensors(&path, candle_core::DType::F32);
});
