//! One LoRA update: micro-batched forward/backward with the loss on answer tokens, gradient
//! accumulation, global-norm clipping and AdamW on the warm-up + cosine schedule.

use crate::data::{lm_micro_batches, Sequence};
use crate::error::{CollectError, Result};
use candle_core::{Tensor, Var};
use dnd_llm::train::lm_loss;
use dnd_llm::{Lora, LoraConfig, Transformer};
use dnd_optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Schedule};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// Everything that decides the bytes of a run's adapters (with the base model and the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraTrainConfig {
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names (`q_proj`, ...), in canonical order.
    pub targets: Vec<String>,
    /// Seeds both the LoRA initialisation and the data order. One fixed value for every task of a
    /// collection, so all runs start from the same point.
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: usize,
    /// The cosine ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Sequences per update.
    pub batch: usize,
    /// Padded tokens per forward pass; a batch is split into as many micro-batches as needed.
    pub micro_batch_tokens: usize,
    /// Sequence cap (context cut from the left).
    pub max_len: usize,
    /// Total updates.
    pub steps: usize,
}

impl LoraTrainConfig {
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let targets = self
            .targets
            .iter()
            .map(|m| {
                dnd_llm::Target::from_module(m)
                    .ok_or_else(|| CollectError::Config(format!("unknown LoRA target `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraConfig::new(self.rank, self.alpha, &targets))
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            peak: self.lr,
            warmup: self.warmup_steps,
            total: self.steps,
            floor: self.lr * self.min_lr_ratio,
        }
    }

    /// Reject settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(CollectError::Config(m.into()));
        if self.rank == 0 || self.targets.is_empty() {
            return bad("rank and targets must be non-empty");
        }
        if self.batch == 0 || self.steps == 0 {
            return bad("batch size and step count must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("the learning rate must be positive");
        }
        if self.micro_batch_tokens < self.max_len {
            return bad("a micro-batch must hold at least one sequence of the maximum length");
        }
        self.lora_config()?;
        Ok(())
    }
}

/// What one update did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    /// Mean cross-entropy over the batch's answer tokens, before the update.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
    /// Answer tokens in the batch.
    pub targets: usize,
    pub seconds: f64,
}

/// A LoRA adapter being trained on a frozen model.
pub struct Trainer<'m> {
    model: &'m Transformer,
    lora: Lora,
    opt: AdamW,
    config: LoraTrainConfig,
}

impl<'m> Trainer<'m> {
    /// Start from `init` (its values are copied into trainable variables).
    pub fn new(model: &'m Transformer, init: &Lora, config: &LoraTrainConfig) -> Result<Self> {
        config.validate()?;
        let (lora, vars) = init.to_vars()?;
        let opt = AdamW::new(
            vars,
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        Ok(Self {
            model,
            lora,
            opt,
            config: config.clone(),
        })
    }

    /// The adapter as trained so far (its tensors follow later updates).
    pub fn lora(&self) -> &Lora {
        &self.lora
    }

    pub fn step_count(&self) -> usize {
        self.opt.step_count() as usize
    }

    /// One update on `batch`.
    pub fn step(&mut self, batch: &[&Sequence]) -> Result<StepRecord> {
        let start = Instant::now();
        let targets: usize = batch.iter().map(|s| s.answer_len()).sum();
        let vars: Vec<Var> = self.opt.vars().to_vec();
        let mut acc = GradAccumulator::new(vars.len());
        let mut loss_sum = 0f64;
        for (lm, share) in lm_micro_batches(batch, self.config.micro_batch_tokens)? {
            let loss = (lm_loss(self.model, Some(&self.lora), &lm)? * share)?;
            acc.add(&vars, &loss.backward()?)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
        }
        let mut grads = acc.take(&vars)?;
        let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm)?;
        let step = self.step_count() + 1;
        let lr = self.config.schedule().lr(step);
        self.opt.step(&grads, lr)?;
        Ok(StepRecord {
            step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens: batch.iter().map(|s| s.ids.len()).sum(),
            targets,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// LoRA values and optimizer state as named tensors (`lora.{i}`, `adam.*`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .opt
            .vars()
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("lora.{i}"), v.as_tensor().clone()))
            .collect();
        out.extend(
            self.opt
                .state()?
                .into_iter()
                .map(|(k, t)| (format!("adam.{k}"), t)),
        );
        Ok(out)
    }

    /// Restore what [`Self::state`] wrote.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, var) in self.opt.vars().iter().enumerate() {
            let t = state
                .get(&format!("lora.{i}"))
                .ok_or_else(|| CollectError::Config(format!("run state lacks LoRA tensor {i}")))?;
            if t.dims() != var.dims() {
                return Err(CollectError::Config(format!(
                    "run state LoRA tensor {i} has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(t)?;
        }
        let adam: HashMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("adam.")?.to_string(), t.clone())))
            .collect();
        self.opt.load_state(&adam)?;
        Ok(())
    }
}
