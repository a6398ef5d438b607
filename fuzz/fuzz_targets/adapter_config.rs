//! A PEFT `adapter_config.json`, read from a file as the CLI and the server read it.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::scratch(data, "json");
    let _ = dnd_llm::peft::read_config(&path);
});
