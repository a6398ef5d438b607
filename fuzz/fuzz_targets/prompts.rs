//! A JSONL file of unlabeled prompts (`dnd generate --prompts`).
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::scratch(data, "jsonl");
    let _ = dnd_tasks::load_prompts(&path);
});
