//! Text tokenizer and chat template of the base LLMs.
//!
//! Two sources: a Hugging Face `tokenizer.json` ([`Tokenizer::from_file`]) or the metadata of a GGUF file
//! ([`Tokenizer::from_gguf`]). Both end up as a [`tokenizers::Tokenizer`], so encoding is the Hugging Face
//! implementation itself rather than a re-implementation that could drift from it. Chat prompts are rendered
//! from the model's own Jinja template with minijinja, configured like `transformers` (see the `chat` submodule).

mod chat;
mod gguf;

use std::path::{Path, PathBuf};

pub use chat::{ChatMessage, CHATML_TEMPLATE};

/// Why a tokenizer could not be loaded or used. Every variant names the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error(transparent)]
    Json(#[from] dnd_io::JsonError),
    /// An error reported by the `tokenizers` crate (bad `tokenizer.json`, bad vocabulary, encode failure).
    #[error("{}: {message}", path.display())]
    Tokenizers { path: PathBuf, message: String },
    #[error("{}: missing GGUF metadata key `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: GGUF metadata key `{key}`: {problem}", path.display())]
    BadKey {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{}: unsupported tokenizer model `{model}` (tokenizer.ggml.model); only `gpt2` (byte-level BPE) is supported", path.display())]
    UnsupportedModel { path: PathBuf, model: String },
    #[error("{}: unknown pre-tokenizer type `{pre}` (tokenizer.ggml.pre); supported: {}", path.display(), gguf::SUPPORTED_PRE.join(", "))]
    UnknownPre { path: PathBuf, pre: String },
    #[error("{}: chat template: {message}", path.display())]
    Template { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// Tokens that end an assistant turn in the chat formats we know. Generation must stop on these as well as on
/// the declared EOS, because a GGUF or `tokenizer_config.json` names only one EOS token, and for base-model
/// GGUFs that is `<|endoftext|>` while the chat template closes turns with `<|im_end|>` (or the reverse).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
];

/// A text tokenizer plus the model's special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    eos_ids: Vec<u32>,
    /// GGUF `add_bos_token` / `add_eos_token`; a `tokenizer.json` carries these in its post-processor instead.
    add_bos: bool,
    add_eos: bool,
    chat: chat::ChatTemplate,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Special tokens and the chat template come from the files that
    /// `transformers` saves next to it: `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`,
    /// `chat_template`), `chat_template.jinja` (newer layout, takes precedence) and `generation_config.json`
    /// (`eos_token_id`, added to [`Tokenizer::eos_ids`]). All of them are optional.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| tk_error(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_if_exists(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let special = |key: &str| {
            let name = match &config[key] {
                serde_json::Value::String(s) => Some(s.as_str()),
                v => v["content"].as_str(),
            };
            name.and_then(|n| inner.token_to_id(n))
        };
        let (bos, eos, pad) = (
            special("bos_token"),
            special("eos_token"),
            special("pad_token"),
        );

        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja)
                    .map_err(dnd_io::io_err::<TokenizerError>(&jinja))?,
            )
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                // Older configs hold a list of named templates; the plain chat one is called "default".
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_owned),
                _ => None,
            }
        };

        let mut extra_eos = Vec::new();
        if let Some(gen) = read_json_if_exists(&dir.join("generation_config.json"))? {
            match &gen["eos_token_id"] {
                serde_json::Value::Array(ids) => {
                    extra_eos.extend(ids.iter().filter_map(|v| v.as_u64()))
                }
                v => extra_eos.extend(v.as_u64()),
            }
        }
        let extra_eos = extra_eos
            .into_iter()
            .filter_map(|id| u32::try_from(id).ok())
            .collect();
        Ok(Self::assemble(
            inner,
            path,
            [bos, eos, pad],
            (false, false),
            extra_eos,
            template,
        ))
    }

    /// Builds the tokenizer that a GGUF file describes in its `tokenizer.*` metadata (only byte-level BPE,
    /// `tokenizer.ggml.model = "gpt2"`, which covers SmolLM2, Qwen2.5 and Llama 3). `path` is only used in
    /// error messages. See the `gguf` submodule for how each field is used.
    pub fn from_gguf(
        content: &candle_core::quantized::gguf_file::Content,
        path: &Path,
    ) -> Result<Self> {
        let g = gguf::build(content, path)?;
        Ok(Self::assemble(
            g.inner,
            path,
            [g.bos, g.eos, g.pad],
            (g.add_bos, g.add_eos),
            g.extra_eos,
            g.template,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        path: &Path,
        [bos, eos, pad]: [Option<u32>; 3],
        (add_bos, add_eos): (bool, bool),
        extra_eos: Vec<u32>,
        template: Option<String>,
    ) -> Self {
        let added = inner.get_added_tokens_decoder();
        let turn_ends = END_OF_TURN
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .filter(|id| added.get(id).is_some_and(|t| t.special));
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in eos.into_iter().chain(extra_eos).chain(turn_ends) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let name = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let chat = chat::ChatTemplate::new(template, name(bos), name(eos));
        Self {
            inner,
            path: path.to_owned(),
            bos,
            eos,
            pad,
            eos_ids,
            add_bos,
            add_eos,
            chat,
        }
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are always matched whole,
    /// as in `transformers`; `add_special` only controls whether BOS/EOS are added around the text when the
    /// model asks for it (a `tokenizer.json` post-processor, or GGUF `add_bos_token` / `add_eos_token`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| tk_error(&self.path, e))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            if let (true, Some(bos)) = (self.add_bos, self.bos) {
                ids.insert(0, bos);
            }
            if let (true, Some(eos)) = (self.add_eos, self.eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`. Ids outside the vocabulary are skipped, as Hugging Face does (a model's embedding table
    /// may have padding rows beyond the tokenizer's vocabulary).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tk_error(&self.path, e))
    }

    /// Renders `messages` with the model's chat template (or ChatML when it has none, see
    /// [`CHATML_TEMPLATE`]). With `add_generation_prompt`, the header of an assistant turn is appended so that
    /// the model continues with its answer.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat
            .render(messages, add_generation_prompt)
            .map_err(|message| TokenizerError::Template {
                path: self.path.clone(),
                message,
            })
    }

    /// Token ids of the rendered chat; like `transformers`' `apply_chat_template(tokenize=True)`, no further
    /// special tokens are added because the template writes them itself.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(
            &self.apply_chat_template(messages, add_generation_prompt)?,
            false,
        )
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The declared EOS token (for a chat model usually the end-of-turn token).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that should stop generation: the declared EOS, GGUF `eot`/`eom` ids or `generation_config.json`
    /// ids, and any special end-of-turn token of a known chat format present in the vocabulary.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Number of tokens the tokenizer knows, added tokens included. This can be smaller than the model's
    /// embedding table (Qwen2.5's `tokenizer.json` has 151,665 tokens for 151,936 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template in use (the ChatML fallback when the model has none).
    pub fn chat_template(&self) -> &str {
        self.chat.source()
    }

    /// Whether the chat template came from the model rather than the ChatML fallback.
    pub fn has_model_chat_template(&self) -> bool {
        self.chat.is_from_model()
    }

    /// The underlying Hugging Face tokenizer, for batch encoding or offsets.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn tk_error(path: &Path, e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Tokenizers {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(dnd_io::read_json::<_, TokenizerError>(path)?))
}
