//! The steps `dnd train`, `dnd generate` and `dnd experiment` share: reading a collection, turning its
//! tasks into generator training data (prompt pools encoded through an encoder), and generating one
//! adapter from a batch of prompts.

use crate::{ExperimentError, Result};
use candle_core::{DType, Tensor};
use dnd_collect::{CollectionIndex, INDEX_FILE};
use dnd_decode::{DecoderConfig, GeneratorMeta};
use dnd_encode::{CachedEncoder, Encoder, PromptStates};
use dnd_generate::{Generator, GeneratorInfo};
use dnd_llm::{Lora, ModelConfig};
use dnd_tasks::{find_task, Part, SplitConfig};
use dnd_tokenize::LoraTokenizer;
use dnd_train::{Setup, TaskData};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Turns prompts into per-prompt hidden states `[len, C]`. The real one is MiniLM (optionally through
/// the embedding cache); tests use a cheap synthetic one, so the pipeline runs without its weights.
pub trait PromptEncoder {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>>;
    fn hidden_size(&self) -> usize;
    /// Identifies the encoder's weights: a generator refuses conditions from another encoder.
    fn model_hash(&self) -> String;
    /// Word pieces per prompt the states are cut to.
    fn max_len(&self) -> usize;
}

/// The per-prompt hidden states of an `encode_each` result.
fn hidden_states(states: Vec<PromptStates>) -> Vec<Tensor> {
    states.into_iter().map(|s| s.hidden).collect()
}

impl PromptEncoder for Encoder {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>> {
        Ok(hidden_states(self.encode_each(prompts)?))
    }
    fn hidden_size(&self) -> usize {
        Encoder::hidden_size(self)
    }
    fn model_hash(&self) -> String {
        Encoder::model_hash(self).to_string()
    }
    fn max_len(&self) -> usize {
        self.config().max_len
    }
}

/// The cached encoder is its encoder: same states (from the cache when present), same description.
impl PromptEncoder for CachedEncoder {
    fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>> {
        Ok(hidden_states(self.encode_each(prompts)?))
    }
    fn hidden_size(&self) -> usize {
        PromptEncoder::hidden_size(self.encoder())
    }
    fn model_hash(&self) -> String {
        PromptEncoder::model_hash(self.encoder())
    }
    fn max_len(&self) -> usize {
        PromptEncoder::max_len(self.encoder())
    }
}

/// `collection.json` of a collection directory.
pub fn read_index(collection: &Path) -> Result<CollectionIndex> {
    read_json(&collection.join(INDEX_FILE))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(crate::io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::Json {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// A base model's config without loading its weights (GGUF file or Hugging Face directory).
pub fn model_config(path: &Path) -> Result<ModelConfig> {
    Ok(if path.is_dir() {
        ModelConfig::from_hf_file(&path.join("config.json"))?
    } else {
        dnd_llm::gguf::GgufFile::open(path)?.config()?
    })
}

/// The prompts of a built-in task's split part, as text.
pub fn task_prompts(task: &str, data: &Path, part: Part) -> Result<Vec<String>> {
    let splits = find_task(task)?.splits(data, &SplitConfig::default())?;
    Ok(splits.part(part).iter().map(|e| e.prompt.clone()).collect())
}

/// What a generator is trained on and how it is shaped.
pub struct TrainingInputs<'a> {
    pub collection: &'a Path,
    pub index: &'a CollectionIndex,
    /// The tasks whose checkpoints and prompts are trained on.
    pub tasks: &'a [String],
    pub model_path: &'a Path,
    pub data: &'a Path,
    /// N: prompts per condition.
    pub prompts: usize,
    /// L: word pieces per prompt (at most the encoder's limit).
    pub prompt_len: usize,
    /// The generator directory.
    pub out: PathBuf,
    /// Maps before the decoder's last layer ([`DecoderConfig::cpu`]).
    pub decoder_hidden: usize,
}

/// The trainer's [`Setup`] and per-task data: each task's checkpoints as LoRA tokens and its `prompts`
/// split encoded by `enc`.
pub fn prepare_training(
    inp: &TrainingInputs,
    enc: &dyn PromptEncoder,
) -> Result<(Setup, Vec<TaskData>)> {
    if inp.tasks.is_empty() {
        return Err(ExperimentError::Config("no tasks to train on".into()));
    }
    let model = model_config(inp.model_path)?;
    let lora = inp.index.train.lora_config()?;
    let tok = LoraTokenizer::with_default_width(&model, &lora)?;
    let mut data = Vec::new();
    for t in inp.tasks {
        let checkpoints = dnd_train::load_checkpoints(inp.collection, t, &tok)?;
        let texts = task_prompts(t, inp.data, Part::Prompts)?;
        if texts.is_empty() {
            return Err(ExperimentError::Config(format!(
                "task {t} has no prompts split under {}",
                inp.data.display()
            )));
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let prompts = enc.encode(&refs)?;
        tracing::info!(
            "{t}: {} checkpoints, {} prompts",
            checkpoints.len(),
            prompts.len()
        );
        data.push(TaskData {
            name: t.clone(),
            checkpoints,
            prompts,
        });
    }
    let (h, w) = tok.token_shape();
    let mask = tok
        .encode(&Lora::init(lora.clone(), &model, 0, DType::F32)?)?
        .1;
    let setup = Setup {
        out: inp.out.clone(),
        decoder: DecoderConfig::cpu(
            [inp.prompts, inp.prompt_len, enc.hidden_size()],
            [tok.num_tokens(), h, w],
            inp.decoder_hidden,
        ),
        meta: GeneratorMeta::new(&model, &lora, tok.chunk_width()),
        info: GeneratorInfo {
            encoder_model_hash: enc.model_hash(),
            encoder_max_len: enc.max_len(),
            base_model: inp.model_path.display().to_string(),
        },
        collection: inp.collection.display().to_string(),
        mask,
        tokens: tok.tokens().to_vec(),
    };
    Ok((setup, data))
}

/// Refuse to feed `gen` conditions from another encoder than the one it was trained with.
pub fn check_encoder(gen: &Generator, enc: &dyn PromptEncoder, dir: &Path) -> Result<()> {
    if enc.model_hash() != gen.info().encoder_model_hash {
        return Err(ExperimentError::Config(format!(
            "{} was trained with another prompt encoder (sha256 {}), this one is {}",
            dir.display(),
            gen.info().encoder_model_hash,
            enc.model_hash()
        )));
    }
    Ok(())
}

/// One adapter from one prompt batch: encode, one decoder forward, write the PEFT directory `out`
/// (under a temporary name, then renamed, replacing an older `out`), so a killed run never leaves a
/// half-written adapter that a rerun would trust. Returns the seconds it took (encode + decode + write).
pub fn generate_adapter(
    gen: &Generator,
    enc: &dyn PromptEncoder,
    prompts: &[&str],
    base_model: &str,
    out: &Path,
) -> Result<f64> {
    let t = Instant::now();
    let states = enc.encode(prompts)?;
    let lora = gen.generate(&states.iter().collect::<Vec<_>>())?;
    save_adapter(&lora, base_model, out, &[])?;
    Ok(t.elapsed().as_secs_f64())
}

/// Write `lora` as the PEFT directory `out`, with `extra` `(file name, text)` files beside it, under a
/// temporary name first, then renamed over any older `out`: a directory that exists is complete.
pub fn save_adapter(
    lora: &Lora,
    base_model: &str,
    out: &Path,
    extra: &[(&str, String)],
) -> Result<()> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(crate::io_err(&tmp))?;
    }
    dnd_llm::peft::save(lora, &tmp, base_model)?;
    for (file, text) in extra {
        let path = tmp.join(file);
        std::fs::write(&path, text).map_err(crate::io_err(&path))?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(crate::io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(crate::io_err(out))
}
