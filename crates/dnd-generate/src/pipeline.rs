//! Prompts -> adapter on disk: the whole of Drag-and-Drop generation as one type, the one a command,
//! a benchmark or a server holds.

use crate::{GenerateError, Generator, Result};
use dnd_encode::PromptEncoder;
use dnd_llm::Lora;
use std::path::Path;
use std::time::Instant;

/// A generator with the prompt encoder it was trained with (checked when composed) and the base model
/// its adapters are recorded for.
pub struct DragAndDrop<E> {
    generator: Generator,
    encoder: E,
    base_model: String,
}

impl<E: PromptEncoder> DragAndDrop<E> {
    /// Compose `generator` (loaded from `dir`, named in errors) with `encoder`. Refuses an encoder
    /// other than the one the generator was trained with: its states would mean nothing to the
    /// decoder. `base_model` is recorded as `base_model_name_or_path` in every adapter.
    pub fn new(generator: Generator, encoder: E, base_model: &str, dir: &Path) -> Result<Self> {
        let trained = &generator.info().encoder_model_hash;
        if encoder.model_hash() != *trained {
            return Err(GenerateError::Encoder(format!(
                "{} was trained with another prompt encoder (sha256 {trained}), this one is {}",
                dir.display(),
                encoder.model_hash()
            )));
        }
        Ok(Self {
            generator,
            encoder,
            base_model: base_model.to_string(),
        })
    }

    /// The generator: its batch size N and prompt length L.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// The base model adapters are recorded for.
    pub fn base_model(&self) -> &str {
        &self.base_model
    }

    /// One adapter from one prompt batch: encode, one decoder forward.
    pub fn generate(&self, prompts: &[&str]) -> Result<Lora> {
        let states = self.encoder.encode(prompts)?;
        self.generator.generate(&states.iter().collect::<Vec<_>>())
    }

    /// One adapter from one prompt batch, written as the PEFT directory `out` ([`save_adapter`]).
    /// Returns the seconds it took (encode + decode + write).
    pub fn write(&self, prompts: &[&str], out: &Path) -> Result<f64> {
        let t = Instant::now();
        let lora = self.generate(prompts)?;
        save_adapter(&lora, &self.base_model, out, &[])?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Write `lora` as the PEFT directory `out`, with `extra` `(file name, text)` files beside it, built
/// under a temporary name and then put in place of any older `out`: a directory that exists is
/// complete, so a killed run never leaves a half-written adapter that a rerun would trust.
pub fn save_adapter(
    lora: &Lora,
    base_model: &str,
    out: &Path,
    extra: &[(&str, String)],
) -> Result<()> {
    dnd_io::replace_dir(out, |tmp| {
        dnd_llm::peft::save(lora, tmp, base_model)?;
        for (file, text) in extra {
            dnd_io::write_atomic(&tmp.join(file), text)?;
        }
        Ok(())
    })
}
