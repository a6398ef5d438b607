//! Argument pieces shared by several subcommands.

use anyhow::{Context, Result};
use candle_core::DType;
use dnd_llm::{Llm, Lora};
use std::path::{Path, PathBuf};

/// `--model`: a GGUF file, a Hugging Face directory, or the name of a pinned asset (`smollm2`, `qwen2`),
/// fetched into the cache on first use. Defaults to SmolLM2-135M-Instruct.
#[derive(clap::Args, Clone)]
pub struct ModelArg {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
}

impl ModelArg {
    pub fn path(&self) -> Result<PathBuf> {
        let p = Path::new(&self.model);
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        let asset = dnd_assets::asset(&self.model)
            .with_context(|| format!("`{}` is neither a path nor a known model", self.model))?;
        Ok(dnd_assets::Cache::new().ensure(asset)?)
    }

    pub fn load(&self) -> Result<Llm> {
        let path = self.path()?;
        let t = std::time::Instant::now();
        let llm =
            Llm::load(&path, DType::F32).with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(
            "loaded {} in {:.1}s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
        Ok(llm)
    }
}

/// Load a PEFT adapter directory for `llm`.
pub fn load_adapter(llm: &Llm, dir: &Path) -> Result<Lora> {
    dnd_llm::peft::load(dir, llm.model.config(), llm.model.dtype())
        .with_context(|| format!("loading adapter {}", dir.display()))
}
