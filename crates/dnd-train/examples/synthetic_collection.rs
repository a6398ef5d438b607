//! Write a synthetic checkpoint collection for a real base config, in `dnd collect`'s layout, so that
//! `dnd train` / `dnd generate` can be exercised and timed before a real collection exists:
//! per task, `K` random rank-8 adapters scattered around a task-specific one.
//!
//! `cargo run --release -p dnd-train --example synthetic_collection -- OUT MODEL.gguf K TASK...`

use candle_core::{DType, Tensor};
use dnd_collect::{
    BaseModel, CollectDefaults, CollectionIndex, DataInfo, EncodeStats, Manifest, RunSpec, Saves,
    TaskEntry, INDEX_FILE, RUN_MANIFEST_FILE,
};
use dnd_llm::Lora;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, model, k, tasks @ ..] = args.as_slice() else {
        anyhow::bail!("usage: OUT MODEL.gguf K TASK...");
    };
    let (out, k) = (PathBuf::from(out), k.parse::<usize>()?);
    let cfg = dnd_llm::gguf::GgufFile::open(Path::new(model))?.config()?;
    let train = CollectDefaults::collection();
    let lora_cfg = train.lora_config()?;
    let base = BaseModel {
        path: model.clone(),
        sha256: "synthetic".into(),
    };
    let init = Lora::init(lora_cfg.clone(), &cfg, train.seed, DType::F32)?;
    let mut entries = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        let dir = out.join(task);
        let mut names = Vec::new();
        let centers: Vec<Tensor> = init
            .modules()
            .map(|(_, _, _, b)| Tensor::randn(0f32, 0.02, b.dims(), b.device()))
            .collect::<candle_core::Result<_>>()?;
        for i in 0..k {
            let parts = init
                .modules()
                .zip(&centers)
                .map(|((l, t, a, b), c)| {
                    let jitter = Tensor::randn(0f32, 0.002, b.dims(), b.device())?;
                    Ok((l, t, (a + (i * (ti + 1)) as f64 * 1e-5)?, (c + jitter)?))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let lora = Lora::from_parts(lora_cfg.clone(), &cfg, parts, Path::new("synthetic"))?;
            let name = format!("checkpoints/step-{:04}", i + 1);
            dnd_llm::peft::save(&lora, &dir.join(&name), model)?;
            names.push(name);
        }
        let spec = RunSpec {
            task: task.clone(),
            base_model: base.clone(),
            data: DataInfo {
                root: "synthetic".into(),
                part: "adapter-train".into(),
                split_seed: 0,
                encoded: EncodeStats {
                    sequences: 0,
                    truncated: 0,
                    mean_tokens: 0.0,
                    max_tokens: 0,
                },
                tokens_sha256: String::new(),
            },
            train: train.clone(),
            saves: Saves::EveryStepFrom(1),
            storage: Default::default(),
        };
        let manifest = Manifest {
            fingerprint: spec.fingerprint(),
            spec,
            complete: true,
            checkpoints: names,
            steps: Vec::new(),
            wall_time_s: 0.0,
            sessions: Vec::new(),
            train_tokens: 0,
            train_tokens_per_s: 0.0,
            peak_rss_mb: 0.0,
        };
        std::fs::write(
            dir.join(RUN_MANIFEST_FILE),
            serde_json::to_string_pretty(&manifest)?,
        )?;
        entries.push(TaskEntry {
            task: task.clone(),
            definition: None,
            sources_sha256: Vec::new(),
            dir: task.clone(),
            checkpoints: k,
            first_loss: 0.0,
            final_loss: 0.0,
            wall_time_s: 0.0,
            mean_std_lora_a: 0.0,
            mean_std_lora_b: 0.0,
            heldout: None,
        });
    }
    let index = CollectionIndex {
        base_model: base,
        train,
        first_phase: 0,
        tasks: entries,
        wall_time_s: 0.0,
    };
    std::fs::write(out.join(INDEX_FILE), serde_json::to_string_pretty(&index)?)?;
    println!(
        "wrote {} tasks x {k} checkpoints to {}",
        tasks.len(),
        out.display()
    );
    Ok(())
}
