//! PEFT interoperability on the real SmolLM2 model, driven by `scripts/reference/peft_interop.sh`
//! (ignored in plain `cargo test`: it needs adapters produced by Python PEFT in the same run).
//!
//! Env: `DND_PEFT_MODEL` (GGUF), `DND_PEFT_IN` (adapter dir written by PEFT) with `DND_PEFT_IN_LOGITS`
//! (PEFT's logits for it), and `DND_PEFT_OUT` (where dnd writes its own adapter and logits for PEFT to
//! load and compare).

mod common;

use candle_core::{DType, Tensor};
use dnd_llm::{peft, Llm, Lora, LoraConfig};
use serde_json::{json, Value};
use std::path::PathBuf;

fn env_path(k: &str) -> PathBuf {
    PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("set {k}")))
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Logits of every fixture prompt under `lora`, in the fixture's subset format.
fn logits_block(llm: &Llm, lora: &Lora, reference: &Value) -> Value {
    let merged = llm.model.merged(lora).unwrap();
    let subset = u32s(&reference["subset_ids"]);
    let prompts: Vec<Value> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids = u32s(&p["ids"]);
            let t = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let rows: Vec<Vec<f32>> = merged
                .forward(&t, None)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            let sub: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| subset.iter().map(|&i| r[i as usize]).collect())
                .collect();
            let max_abs: Vec<f32> = rows
                .iter()
                .map(|r| r.iter().fold(0f32, |m, x| m.max(x.abs())))
                .collect();
            json!({"text": p["text"], "ids": ids, "subset_logits": sub, "max_abs": max_abs})
        })
        .collect();
    json!({"subset_ids": subset, "prompts": prompts})
}

/// Worst per-position `max |diff| / max |logit|` between two subset blocks.
fn worst_relative(a: &Value, b: &Value) -> f64 {
    let mut worst = 0f64;
    for (pa, pb) in a["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["prompts"].as_array().unwrap())
    {
        for (pos, (ra, rb)) in pa["subset_logits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(pb["subset_logits"].as_array().unwrap())
            .enumerate()
        {
            let d = ra
                .as_array()
                .unwrap()
                .iter()
                .zip(rb.as_array().unwrap())
                .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
                .fold(0f64, f64::max);
            worst = worst.max(d / pb["max_abs"][pos].as_f64().unwrap());
        }
    }
    worst
}

#[test]
#[ignore = "run by scripts/reference/peft_interop.sh"]
fn peft_adapters_round_trip_with_python_peft() {
    let llm = Llm::load(&env_path("DND_PEFT_MODEL"), DType::F32).unwrap();
    let cfg = llm.model.config().clone();
    // 1. An adapter written by PEFT, loaded by dnd.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(env_path("DND_PEFT_IN_LOGITS")).unwrap())
            .unwrap();
    let theirs = peft::load(&env_path("DND_PEFT_IN"), &cfg, DType::F32).unwrap();
    let ours = logits_block(&llm, &theirs, &reference["logits"]);
    let rel_in = worst_relative(&ours, &reference["logits"]);
    // 2. An adapter written by dnd (seeded PEFT init, B made non-zero), for PEFT to load.
    let init = Lora::init(LoraConfig::paper_default(), &cfg, 7, DType::F32).unwrap();
    let parts = init
        .modules()
        .map(|(l, t, a, b)| {
            let (o, r) = b.dims2().unwrap();
            let b = Tensor::from_vec(
                common::formula(&format!("B{l}{t:?}"), o * r),
                (o, r),
                b.device(),
            )
            .unwrap();
            (l, t, a.clone(), (b * 0.2).unwrap())
        })
        .collect();
    let mine = Lora::from_parts(LoraConfig::paper_default(), &cfg, parts, "dnd".as_ref()).unwrap();
    let out = env_path("DND_PEFT_OUT");
    peft::save(
        &mine,
        &out.join("adapter"),
        &llm.source.display().to_string(),
    )
    .unwrap();
    let reloaded = peft::load(&out.join("adapter"), &cfg, DType::F32).unwrap();
    let mine_logits = logits_block(&llm, &mine, &reference["logits"]);
    assert_eq!(
        worst_relative(
            &logits_block(&llm, &reloaded, &reference["logits"]),
            &mine_logits
        ),
        0.0
    );
    std::fs::write(
        out.join("dnd_logits.json"),
        json!({"logits": mine_logits, "peft_in_worst_relative": rel_in}).to_string(),
    )
    .unwrap();
    assert!(
        rel_in <= 1e-3,
        "PEFT-written adapter in dnd: worst relative diff {rel_in}"
    );
}
