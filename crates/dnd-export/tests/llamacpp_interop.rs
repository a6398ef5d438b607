//! The dnd side of the llama.cpp parity check, driven by `scripts/reference/gguf_lora_parity.sh`
//! (ignored in plain `cargo test`: it needs a real model and llama.cpp in the same run).
//!
//! Env: `DND_GGUF_MODEL` (a base GGUF) and `DND_GGUF_OUT` (a directory). Writes there: a PEFT adapter
//! (`peft/`), its exports (`adapter.gguf`, `merged.gguf`), a float copy of the base and the merged float
//! base (`base-f32.gguf`, `merged-f32.gguf`), the prompts' token ids (`prompts.json`) and dnd's logits
//! with the adapter loaded back from `peft/` and without it (`dnd_logits.safetensors`).

mod common;

use candle_core::{DType, Device, Tensor};
use dnd_export::{lora_gguf, merge_gguf, Precision};
use dnd_llm::{peft, Llm};
use std::collections::HashMap;
use std::path::PathBuf;

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Question: Which gas do plants absorb from the air?\nAnswer:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
];

fn env_path(k: &str) -> PathBuf {
    PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("set {k}")))
}

#[test]
#[ignore]
fn write_exports_and_dnd_logits() {
    let (model_path, out) = (env_path("DND_GGUF_MODEL"), env_path("DND_GGUF_OUT"));
    std::fs::create_dir_all(&out).unwrap();
    let llm = Llm::load(&model_path, DType::F32).unwrap();
    let cfg = llm.model.config().clone();
    // Rank 8, alpha 16 on all seven projections, B of amplitude 0.02 (trained SmolLM2 adapters in the
    // collection have B RMS ~6e-3: this one moves the logits more than they do).
    let made = common::adapter(&cfg, 8, 16.0, false, 0.02);
    peft::save(&made, &out.join("peft"), &model_path.display().to_string()).unwrap();
    let lora = peft::load(&out.join("peft"), &cfg, DType::F32).unwrap();

    let p = |n: &str| out.join(n);
    lora_gguf(&lora, &cfg, Precision::F32, &p("adapter.gguf")).unwrap();
    merge_gguf(
        &model_path,
        Some(&lora),
        Precision::F32,
        false,
        &p("merged.gguf"),
    )
    .unwrap();
    merge_gguf(&model_path, None, Precision::F32, true, &p("base-f32.gguf")).unwrap();
    merge_gguf(
        &model_path,
        Some(&lora),
        Precision::F32,
        true,
        &p("merged-f32.gguf"),
    )
    .unwrap();

    let mut tensors = HashMap::new();
    let mut ids_json = Vec::new();
    for (k, text) in PROMPTS.iter().enumerate() {
        let ids = llm.tokenizer.encode(text, false).unwrap();
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        for (name, adapter) in [("lora", Some(&lora)), ("base", None)] {
            let logits = llm.model.forward(&t, adapter).unwrap().squeeze(0).unwrap();
            tensors.insert(format!("{name}.{k}"), logits);
        }
        ids_json.push(ids);
    }
    candle_core::safetensors::save(&tensors, p("dnd_logits.safetensors")).unwrap();
    std::fs::write(
        p("prompts.json"),
        serde_json::json!({"texts": PROMPTS, "ids": ids_json}).to_string(),
    )
    .unwrap();
}
