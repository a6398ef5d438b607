//! From a collection on disk to what the trainer consumes: each task's checkpoints as LoRA tokens and
//! its `prompts` split encoded, plus the decoder shape and the metadata the generator will carry.

use crate::{load_checkpoints, Result, Setup, Sft, TrainError, TrainingTask};
use candle_core::DType;
use dnd_collect::{prepare_task, CollectionIndex};
use dnd_decode::{DecoderConfig, GeneratorMeta, Head};
use dnd_encode::PromptEncoder;
use dnd_generate::GeneratorInfo;
use dnd_llm::{Llm, Lora, ModelConfig};
use dnd_tasks::{Part, SplitConfig, Task};
use dnd_tokenize::LoraTokenizer;
use std::path::{Path, PathBuf};

/// What a generator is trained on and how it is shaped.
pub struct TrainingInputs<'a> {
    /// The collection directory.
    pub collection: &'a Path,
    /// Its index ([`CollectionIndex::read`]).
    pub index: &'a CollectionIndex,
    /// The tasks whose checkpoints and prompts are trained on, as the collection defines them
    /// ([`CollectionIndex::resolve`]).
    pub tasks: &'a [Task],
    /// The base model the collection was made on (GGUF file or Hugging Face directory).
    pub model_path: &'a Path,
    /// The data root the tasks' prompts are read from.
    pub data: &'a Path,
    /// N: prompts per condition.
    pub prompts: usize,
    /// L: word pieces per prompt (at most the encoder's limit).
    pub prompt_len: usize,
    /// The generator directory.
    pub out: PathBuf,
    /// Maps before the decoder's last layer ([`DecoderConfig::cpu`]).
    pub decoder_hidden: usize,
    /// The decoder's last layer.
    pub head: Head,
    /// Also load the base model and each task's labelled adapter-train sequences (split and length
    /// cap as the collection was trained with), for the `sft` and `hybrid` objectives.
    pub sft: bool,
}

/// The trainer's [`Setup`] and per-task data: each task's checkpoints as LoRA tokens and its `prompts`
/// split encoded by `enc`.
pub fn prepare_training(
    inp: &TrainingInputs<'_>,
    enc: &dyn PromptEncoder,
) -> Result<(Setup, Vec<TrainingTask>)> {
    if inp.tasks.is_empty() {
        return Err(TrainError::Config("no tasks to train on".into()));
    }
    let model = ModelConfig::from_path(inp.model_path)?;
    let lora = inp.index.train.lora_config()?;
    let tok = LoraTokenizer::with_default_width(&model, &lora)?;
    let data = inp
        .tasks
        .iter()
        .map(|t| training_task(inp, t, &tok, enc))
        .collect::<Result<Vec<_>>>()?;
    let (h, w) = tok.token_shape();
    let mask = tok
        .encode(&Lora::init(lora.clone(), &model, 0, DType::F32)?)?
        .1;
    let sft = if inp.sft {
        Some(sft_data(inp, &tok)?)
    } else {
        None
    };
    let setup = Setup {
        out: inp.out.clone(),
        decoder: DecoderConfig::cpu(
            [inp.prompts, inp.prompt_len, enc.hidden_size()],
            [tok.num_tokens(), h, w],
            inp.decoder_hidden,
        )
        .with_head(inp.head),
        meta: GeneratorMeta::new(&model, &lora, tok.chunk_width()),
        info: GeneratorInfo {
            encoder_model_hash: enc.model_hash(),
            encoder_max_len: enc.max_len(),
            base_model: inp.model_path.display().to_string(),
        },
        collection: dnd_assets::portable_name(inp.collection),
        mask,
        tokens: tok.tokens().to_vec(),
        sft,
    };
    Ok((setup, data))
}

/// The base model and every task's adapter-train part, encoded as `dnd collect` encodes it.
fn sft_data(inp: &TrainingInputs<'_>, tok: &LoraTokenizer) -> Result<Sft> {
    let llm = Llm::load(inp.model_path, DType::F32)?;
    let sequences = inp
        .tasks
        .iter()
        .map(|t| {
            let s = prepare_task(
                &llm.tokenizer,
                t,
                inp.data,
                &SplitConfig::default(),
                inp.index.train.max_len,
            )?;
            Ok(s.seqs)
        })
        .collect::<Result<Vec<_>>>()?;
    Sft::new(
        llm.model,
        tok.clone(),
        sequences,
        inp.index.train.micro_batch_tokens,
    )
}

/// One task's checkpoints, tokenized, and its `prompts` split, encoded.
fn training_task(
    inp: &TrainingInputs<'_>,
    task: &Task,
    tok: &LoraTokenizer,
    enc: &dyn PromptEncoder,
) -> Result<TrainingTask> {
    let checkpoints = load_checkpoints(inp.collection, &task.name, tok)?;
    let texts = task.prompts(inp.data, Part::Prompts)?;
    if texts.is_empty() {
        return Err(TrainError::Config(format!(
            "task {} has no prompts split under {}",
            task.name,
            inp.data.display()
        )));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prompts = enc.encode(&refs)?;
    tracing::info!(
        "{}: {} checkpoints, {} prompts",
        task.name,
        checkpoints.len(),
        prompts.len()
    );
    TrainingTask::new(task.name.clone(), checkpoints, prompts)
}
