//! What the experiment's tests share: a synthetic prompt encoder, and a small experiment's settings.

use candle_core::{Device, Tensor};
use dnd_encode::PromptEncoder;
use dnd_evaluate::EvalConfig;
use dnd_experiment::{Context, ExperimentConfig, Paths};
use dnd_llm::Llm;
use dnd_train::GeneratorTrainConfig;
use std::path::Path;

/// States that depend only on the prompt's bytes: `[min(words, max_len), 16]`.
pub struct Synthetic;

impl PromptEncoder for Synthetic {
    fn encode(&self, prompts: &[&str]) -> dnd_encode::Result<Vec<Tensor>> {
        Ok(prompts
            .iter()
            .map(|p| {
                let len = p.split_whitespace().count().clamp(1, 8);
                let v: Vec<f32> = (0..len * 16)
                    .map(|i| {
                        let b = p.as_bytes()[i % p.len()] as f32;
                        ((b * 0.37 + i as f32 * 0.11).sin()) * 0.5
                    })
                    .collect();
                Tensor::from_vec(v, (len, 16), &Device::Cpu).unwrap()
            })
            .collect())
    }
    fn hidden_size(&self) -> usize {
        16
    }
    fn model_hash(&self) -> String {
        "synthetic".into()
    }
    fn max_len(&self) -> usize {
        8
    }
}

/// A small leave-one-out on `collection`: 4 test items, 2 adapters, generators of `steps` updates with
/// the paper's last layer; tests change what they probe.
pub fn small_experiment(collection: &Path, data: &Path, steps: usize) -> ExperimentConfig {
    ExperimentConfig {
        collection: collection.to_path_buf(),
        targets: Vec::new(),
        data: data.to_path_buf(),
        limit: Some(4),
        adapters: 2,
        seed: 0,
        prompts: 4,
        prompt_len: 8,
        decoder_hidden: 64,
        head: dnd_decode::Head::Conv,
        offset_scale: 1.0,
        train: GeneratorTrainConfig {
            steps,
            lr: 1e-3,
            holdout_every: 3,
            validate_every: 1,
            save_every: 1,
            ..GeneratorTrainConfig::default()
        },
        oracle_trajectory: 0,
        multitask_steps: 0,
        score_loras: None,
        eval: EvalConfig::default(),
    }
}

/// Work and report directories under `tmp`.
pub fn paths(tmp: &Path) -> Paths {
    Paths {
        work: tmp.join("work"),
        results: tmp.join("results"),
        reuse: Vec::new(),
    }
}

/// The tiny model and the synthetic encoder.
pub fn context<'a>(llm: &'a Llm, model_dir: &'a Path) -> Context<'a> {
    Context {
        llm,
        model_path: model_dir,
        pool_encoder: &Synthetic,
        fresh_encoder: &Synthetic,
        command: vec!["dnd".into(), "experiment".into()],
        git_rev: None,
    }
}
