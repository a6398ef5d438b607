//! `dnd finetune`: one LoRA adapter for one task, or one for the union of several (the multi-task
//! baseline), with its loss curve and manifest.

use crate::common::{ModelArg, TaskArgs};
use anyhow::{bail, Context, Result};
use dnd_collect::{
    finetune, model_sha256, BaseModel, CollectDefaults, LoraTrainConfig, StepRecord,
};
use dnd_llm::Target;
use dnd_tasks::SplitConfig;
use std::path::PathBuf;

/// Training settings shared by `finetune` and `collect` (defaults: [`CollectDefaults::collection`]).
#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = CollectDefaults::collection().rank)]
    pub rank: usize,
    #[arg(long, default_value_t = CollectDefaults::collection().alpha)]
    pub alpha: f64,
    /// Projections to adapt: q,k,v,o,gate,up,down (or their PEFT names, q_proj, ...).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    pub targets: Vec<String>,
    /// Sequences per update.
    #[arg(long, default_value_t = CollectDefaults::collection().batch)]
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then cosine).
    #[arg(long, default_value_t = CollectDefaults::collection().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().warmup_steps)]
    pub warmup: usize,
    /// The cosine ends at lr * this.
    #[arg(long, default_value_t = CollectDefaults::collection().min_lr_ratio)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = CollectDefaults::collection().max_grad_norm)]
    pub max_grad_norm: f64,
    /// Sequence cap in tokens; longer contexts lose their beginning, the answer is kept.
    #[arg(long, default_value_t = CollectDefaults::collection().max_len)]
    pub max_len: usize,
    /// Padded tokens per forward pass (gradient accumulation splits a batch to fit).
    #[arg(long, default_value_t = CollectDefaults::collection().micro_batch_tokens)]
    pub micro_batch_tokens: usize,
    /// Seed of the LoRA initialisation and of the data order.
    #[arg(long, default_value_t = CollectDefaults::collection().seed)]
    pub seed: u64,
    /// Data root.
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    pub data: PathBuf,
}

impl TrainArgs {
    pub fn config(&self, steps: usize) -> Result<LoraTrainConfig> {
        let mut targets = Vec::new();
        for t in &self.targets {
            let module = if t.ends_with("_proj") {
                t.clone()
            } else {
                format!("{t}_proj")
            };
            let Some(target) = Target::from_module(&module) else {
                bail!("unknown LoRA target `{t}` (expected q,k,v,o,gate,up,down)");
            };
            targets.push(target);
        }
        targets.sort();
        targets.dedup();
        let config = LoraTrainConfig {
            rank: self.rank,
            alpha: self.alpha,
            targets: targets.iter().map(|t| t.module().to_string()).collect(),
            seed: self.seed,
            lr: self.lr,
            warmup_steps: self.warmup,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            batch: self.batch,
            micro_batch_tokens: self.micro_batch_tokens,
            max_len: self.max_len,
            steps,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The base model's path and sha256 (cached under the dnd cache).
pub fn base_model(model: &ModelArg) -> Result<BaseModel> {
    let path = model.path()?;
    let cache = dnd_assets::cache_root().join(dnd_assets::HASH_MEMO);
    let sha256 =
        model_sha256(&path, &cache).with_context(|| format!("hashing {}", path.display()))?;
    Ok(BaseModel {
        path: path.display().to_string(),
        sha256,
    })
}

/// A progress bar over a run's steps showing loss and throughput.
pub fn step_bar(steps: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg} (eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(label.to_string());
    bar
}

pub fn show_step(bar: &indicatif::ProgressBar, r: &StepRecord) {
    bar.set_position(r.step as u64);
    bar.set_message(format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        r.loss,
        r.lr,
        r.tokens as f64 / r.seconds
    ));
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The task(s) whose adapter-train split is trained on; several give one multi-task adapter on
    /// their union, each task giving as many examples as the smallest.
    #[command(flatten)]
    tasks: TaskArgs,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    train: TrainArgs,
    /// Updates. Default: a collection run's (50) per task, so a multi-task adapter sees as many
    /// examples of each task as that task's own adapter.
    #[arg(long)]
    steps: Option<usize>,
    /// Output: a PEFT adapter directory, with manifest.json and loss.png beside the weights.
    #[arg(long)]
    out: PathBuf,
    /// Delete an earlier run in --out instead of resuming it.
    #[arg(long)]
    fresh: bool,
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    let tasks = a.tasks.resolve(None)?;
    let steps = a
        .steps
        .unwrap_or(CollectDefaults::collection().steps * tasks.len());
    let config = a.train.config(steps)?;
    if a.fresh && a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    let name = dnd_collect::union_name(&tasks);
    let base = base_model(&a.model)?;
    let llm = a.model.load()?;
    let bar = step_bar(config.steps, &name);
    let manifest = finetune(
        &llm.model,
        &llm.tokenizer,
        &base,
        &tasks,
        &config,
        &a.train.data,
        &SplitConfig::default(),
        &a.out,
        &mut |r| show_step(&bar, r),
    )?;
    bar.finish();
    let (first, last) = (manifest.steps.first(), manifest.steps.last());
    println!(
        "{}: {} steps, loss {:.4} -> {:.4}, {:.0} s, {:.0} train tok/s; adapter in {}",
        name,
        manifest.steps.len(),
        first.map_or(f64::NAN, |r| r.loss),
        last.map_or(f64::NAN, |r| r.loss),
        manifest.wall_time_s,
        manifest.train_tokens_per_s,
        a.out.display()
    );
    Ok(())
}
