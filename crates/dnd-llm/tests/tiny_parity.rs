//! The forward pass and LoRA against transformers/PEFT on formula-defined tiny models
//! (fixtures from `scripts/reference/tiny_fixture.py`).

mod common;

use candle_core::DType;
use common::*;
use dnd_llm::{LoraConfig, Target};

const TOL: f64 = 1e-4;

fn check_base(fixture_name: &str) {
    let (model, fx, _dir) = tiny_model(fixture_name, DType::F32);
    for (seq, expected) in input_seqs(&fx).iter().zip(fx["logits"].as_array().unwrap()) {
        let logits = model.forward(&ids(seq), None).unwrap().squeeze(0).unwrap();
        let d = max_diff(&logits, expected);
        assert!(d < TOL, "{fixture_name}: max |diff| {d} for {seq:?}");
    }
}

fn check_lora(fixture_name: &str) {
    let (model, fx, _dir) = tiny_model(fixture_name, DType::F32);
    let r = fx["lora"]["r"].as_u64().unwrap() as usize;
    let alpha = fx["lora"]["alpha"].as_f64().unwrap();
    let lora = formula_lora(
        model.config(),
        LoraConfig::new(r, alpha, &Target::ALL),
        DType::F32,
    );
    let seqs = input_seqs(&fx);
    for (seq, expected) in seqs.iter().zip(fx["lora"]["logits"].as_array().unwrap()) {
        let logits = model
            .forward(&ids(seq), Some(&lora))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_diff(&logits, expected);
        assert!(d < TOL, "{fixture_name} LoRA: max |diff| {d}");
        let merged = model.merged(&lora).unwrap();
        let d = max_diff(
            &merged.forward(&ids(seq), None).unwrap().squeeze(0).unwrap(),
            expected,
        );
        assert!(d < TOL, "{fixture_name} merged LoRA: max |diff| {d}");
    }
    let mut rs = LoraConfig::new(r, alpha, &Target::ALL);
    rs.use_rslora = true;
    let lora = formula_lora(model.config(), rs, DType::F32);
    let logits = model
        .forward(&ids(&seqs[0]), Some(&lora))
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = max_diff(&logits, &fx["lora_rslora_logits_first"]);
    assert!(d < TOL, "{fixture_name} rsLoRA: max |diff| {d}");
}

#[test]
fn llama_logits_match_transformers() {
    check_base("tiny_llama.json");
}

#[test]
fn qwen2_logits_match_transformers() {
    check_base("tiny_qwen2.json");
}

#[test]
fn llama_lora_matches_peft() {
    check_lora("tiny_llama.json");
}

#[test]
fn qwen2_lora_matches_peft() {
    check_lora("tiny_qwen2.json");
}
