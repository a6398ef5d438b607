//! `dnd export`: an adapter (or a base model) as files llama.cpp loads.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use dnd_export::Precision;
use dnd_llm::ModelConfig;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A PEFT adapter directory (written by dnd or by PEFT). Optional with --merge: without it the base
    /// is rewritten alone (with --dequantize-all, a float copy of it).
    adapter: Option<PathBuf>,
    /// The output file (`.gguf`).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "gguf")]
    format: Format,
    /// Write the base model with the adapter merged into its weights, instead of a LoRA file (the base
    /// must be a GGUF file).
    #[arg(long)]
    merge: bool,
    /// With --merge: store every quantised tensor of the base in --precision too, not only the merged
    /// projections.
    #[arg(long, requires = "merge")]
    dequantize_all: bool,
    /// Float type of the tensors written.
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    #[command(flatten)]
    model: crate::common::ModelArg,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Format {
    /// llama.cpp's GGUF (`llama-cli --lora FILE`, Ollama's ADAPTER).
    Gguf,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum PrecisionArg {
    F32,
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}

pub fn run(a: ExportArgs) -> Result<()> {
    let Format::Gguf = a.format;
    let base = a.model.path()?;
    let model = ModelConfig::from_path(&base)?;
    let lora = a
        .adapter
        .as_deref()
        .map(|dir| load(dir, &model))
        .transpose()?;
    let report = if a.merge {
        if base.is_dir() {
            bail!(
                "--merge needs a GGUF base, {} is a Hugging Face directory (convert it with llama.cpp's \
                 convert_hf_to_gguf.py first)",
                base.display()
            );
        }
        let r = dnd_export::merge_gguf(
            &base,
            lora.as_ref(),
            a.precision.into(),
            a.dequantize_all,
            &a.out,
        )?;
        serde_json::to_value(r)?
    } else {
        let Some(lora) = &lora else {
            bail!("give the adapter directory to export (or --merge to rewrite the base alone)");
        };
        serde_json::to_value(lora_gguf(lora, &model, a.precision, &a.out)?)?
    };
    println!("{}: {report}", a.out.display());
    Ok(())
}

fn load(dir: &Path, model: &ModelConfig) -> Result<dnd_llm::Lora> {
    dnd_llm::peft::load(dir, model, DType::F32)
        .with_context(|| format!("loading adapter {}", dir.display()))
}

/// Write `lora` as a llama.cpp LoRA file, saying how its scale was expressed.
pub fn lora_gguf(
    lora: &dnd_llm::Lora,
    model: &ModelConfig,
    precision: PrecisionArg,
    out: &Path,
) -> Result<dnd_export::LoraGguf> {
    let r = dnd_export::lora_gguf(lora, model, precision.into(), out)?;
    if r.rslora_folded_into_alpha {
        tracing::info!(
            "rsLoRA adapter: written with adapter.lora.alpha = {} (llama.cpp scales by alpha / r)",
            r.alpha
        );
    }
    Ok(r)
}
