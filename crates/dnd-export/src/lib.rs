//! Adapters out of dnd, for the runtimes users already have. [`lora_gguf`] writes a llama.cpp LoRA
//! adapter file (`llama-cli --lora`, llama-cpp-python's `lora_path`, Ollama's `ADAPTER`); [`merge_gguf`]
//! writes a whole base GGUF with an adapter folded into its weights. PEFT directories are written by
//! `dnd_llm::peft`.
//!
//! dnd keeps adapters in Hugging Face coordinates. llama.cpp's converter stores Llama Q/K rows permuted
//! (see `dnd_llm::gguf::permute`), so B of those two projections is permuted the same way; A, which
//! acts on the unpermuted input, is not.

mod error;
mod gguf;

pub use error::{ExportError, Result};
pub use gguf::{lora_gguf, merge_gguf, LoraGguf, MergedGguf, Precision};
