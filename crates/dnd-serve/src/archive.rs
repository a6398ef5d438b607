//! Adapter downloads: the PEFT files as a zip archive, or a llama.cpp LoRA GGUF.

use crate::error::{ApiError, ApiResult};
use dnd_llm::peft::{CONFIG_FILE, WEIGHTS_FILE};
use dnd_llm::ModelConfig;
use std::io::Write;
use std::path::Path;

/// `adapter_config.json` and `adapter_model.safetensors` of `dir` in a zip archive (stored, not
/// compressed: the weights are floats that barely compress).
pub fn peft_zip(dir: &Path) -> ApiResult<Vec<u8>> {
    let fail =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("archiving {}: {e}", dir.display()));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for name in [CONFIG_FILE, WEIGHTS_FILE] {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| fail(&e))?;
        zip.start_file(name, options).map_err(|e| fail(&e))?;
        zip.write_all(&bytes).map_err(|e| fail(&e))?;
    }
    Ok(zip.finish().map_err(|e| fail(&e))?.into_inner())
}

/// The adapter in `dir` as a llama.cpp LoRA GGUF, written beside it once (`adapter.gguf`) and reused.
pub fn lora_gguf(dir: &Path, model: &ModelConfig) -> ApiResult<Vec<u8>> {
    let path = dir.join("adapter.gguf");
    if !path.is_file() {
        let lora = dnd_llm::peft::load(dir, model, candle_core::DType::F32)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        dnd_export::lora_gguf(&lora, model, dnd_export::Precision::F32, &path)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    std::fs::read(&path).map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))
}
