//! A [`tokenizers::Tokenizer`] rebuilt from GGUF `tokenizer.*` metadata.
//!
//! A GGUF stores the vocabulary, merges and token types, and names the pre-tokenizer only by a family name
//! (`tokenizer.ggml.pre`). We rebuild the pipeline of the model's original `tokenizer.json` for that family:
//! the same regexes llama.cpp (`llama-vocab.cpp`) applies, expressed as the Hugging Face pre-tokenizers that
//! the original repositories ship, so that ids match the reference model. Unknown families are an error:
//! a wrong regex would silently give the model token sequences it never saw in training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{tk_error, Result, TokenizerError};

/// Qwen2 (also DeepSeek-R1-Qwen): letters with one leading non-letter, digits one by one.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3: as Qwen2 but digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Values of `tokenizer.ggml.pre` we can rebuild.
pub(super) const SUPPORTED_PRE: &[&str] = &[
    "smollm",
    "starcoder",
    "gpt-2",
    "qwen2",
    "deepseek-r1-qwen",
    "llama-bpe",
    "llama3",
];

/// GGUF token types (llama.cpp `llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// What [`build`] extracts; assembled into a [`super::Tokenizer`] by the caller.
pub(super) struct GgufTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub extra_eos: Vec<u32>,
    pub template: Option<String>,
}

pub(super) fn build(content: &Content, path: &Path) -> Result<GgufTokenizer> {
    let meta = Meta {
        map: &content.metadata,
        path,
    };
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel {
            path: path.into(),
            model: model.into(),
        });
    }
    let pre = meta.string("tokenizer.ggml.pre")?;
    let (pre_tokenizer, nfc, ignore_merges) =
        pre_tokenizer(pre).ok_or_else(|| TokenizerError::UnknownPre {
            path: path.into(),
            pre: pre.into(),
        })?;

    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = match meta.map.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(_) => meta.ints("tokenizer.ggml.token_type")?,
    };
    if types.len() != tokens.len() {
        return Err(meta.bad(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(byte_level_vocab(&tokens), merges(&meta)?)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tk_error(path, e))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    if nfc {
        inner
            .with_normalizer(Some(NFC))
            .map_err(|e| tk_error(path, e))?;
    }
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevel::default()));
    inner
        .add_special_tokens(added_tokens(&tokens, &types, CONTROL))
        .map_err(|e| tk_error(path, e))?;
    inner
        .add_tokens(added_tokens(&tokens, &types, USER_DEFINED))
        .map_err(|e| tk_error(path, e))?;

    let id = |key: &str| meta.token_id(key, tokens.len());
    let extra_eos = [
        id("tokenizer.ggml.eot_token_id")?,
        id("tokenizer.ggml.eom_token_id")?,
    ];
    Ok(GgufTokenizer {
        inner,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        // llama.cpp's default for BPE vocabularies is not to add BOS (SmolLM2 and Qwen2.5 say so explicitly).
        add_bos: meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        add_eos: meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        extra_eos: extra_eos.into_iter().flatten().collect(),
        template: meta
            .opt_string("tokenizer.chat_template")?
            .map(str::to_owned),
    })
}

/// `tokenizer.ggml.merges`: each entry two tokens separated by a space.
fn merges(meta: &Meta<'_>) -> Result<Vec<(String, String)>> {
    meta.strings("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
            None => Err(meta.bad(
                "tokenizer.ggml.merges",
                format!("entry {i} `{m}` is not two tokens separated by a space"),
            )),
        })
        .collect()
}

fn in_alphabet(t: &str) -> bool {
    t.chars().all(is_byte_char)
}

/// Tokens are stored in the byte-level alphabet, except that converters write some added tokens with
/// raw characters (e.g. a space); respell those, as `transformers` does, so every id keeps its entry.
fn byte_level_vocab(tokens: &[&str]) -> Vocab {
    let alphabet = byte_alphabet();
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            };
            (spelled, id as u32)
        })
        .collect()
}

/// The tokens of type `kind` as added tokens. Control tokens (`<|im_start|>`...) become special added
/// tokens and user-defined ones plain added tokens, so both are matched whole in text instead of being
/// split by BPE; only control tokens are dropped by `decode(skip_special)`. A "control" token outside
/// the byte alphabet is a converter mislabel that `transformers` skips (adding it would create an id
/// past the vocabulary); we do the same.
fn added_tokens(tokens: &[&str], types: &[i64], kind: i64) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == kind && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(*t, kind == CONTROL).normalized(false))
        .collect()
}

/// `(pre-tokenizer, NFC normalizer?, BPE ignore_merges?)` of a `tokenizer.ggml.pre` family, as in the
/// family's original `tokenizer.json`.
fn pre_tokenizer(pre: &str) -> Option<(PreTokenizerWrapper, bool, bool)> {
    // GPT-2's regex inside the byte-level step; `add_prefix_space` is off for all these models.
    let gpt2 = || ByteLevel::new(false, true, true).into();
    let split = |re: &str| -> PreTokenizerWrapper {
        let split = Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .expect("built-in pre-tokenizer regex compiles");
        Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into()
    };
    Some(match pre {
        // llama.cpp: `\p{N}` then the GPT-2 regex; HF SmolLM2/StarCoder: Digits(individual) + ByteLevel.
        "smollm" | "starcoder" => (
            Sequence::new(vec![Digits::new(true).into(), gpt2()]).into(),
            false,
            false,
        ),
        "gpt-2" => (gpt2(), false, false),
        "qwen2" | "deepseek-r1-qwen" => (split(QWEN2_SPLIT), true, false),
        "llama-bpe" | "llama3" => (split(LLAMA3_SPLIT), false, true),
        _ => return None,
    })
}

/// Bytes that GPT-2's `bytes_to_unicode` maps to themselves (printable Latin-1).
fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Whether `c` is one of the 256 characters of the byte-level alphabet.
fn is_byte_char(c: char) -> bool {
    let u = c as u32;
    (256..256 + 68).contains(&u) || (u < 256 && printable(u as u8))
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes map to themselves, the 68 others to
/// U+0100 onwards in byte order. Indexed by byte.
fn byte_alphabet() -> Vec<char> {
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
            }
        })
        .collect()
}

/// Typed, path-aware access to GGUF metadata. candle's `Value::to_*` accept only one exact integer width,
/// while converters differ (ids as u32 or i32, token types as i32), so integers of any width are accepted.
struct Meta<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn bad(&self, key: &str, problem: String) -> TokenizerError {
        TokenizerError::BadKey {
            path: self.path.into(),
            key: key.into(),
            problem,
        }
    }

    fn get(&self, key: &str) -> Result<&'a Value> {
        self.map.get(key).ok_or_else(|| TokenizerError::MissingKey {
            path: self.path.into(),
            key: key.into(),
        })
    }

    fn opt_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.bad(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    fn string(&self, key: &str) -> Result<&'a str> {
        self.get(key)?;
        Ok(self.opt_string(key)?.unwrap_or_default())
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key)? {
            Value::Array(items) => Ok(items),
            v => Err(self.bad(key, format!("expected an array, found {}", kind(v)))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let items = self.array(key)?.iter().enumerate();
        items
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.bad(key, format!("entry {i} is {}, expected a string", kind(v)))),
            })
            .collect()
    }

    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        let items = self.array(key)?.iter().enumerate();
        items
            .map(|(i, v)| {
                int(v).ok_or_else(|| {
                    self.bad(
                        key,
                        format!("entry {i} is {}, expected an integer", kind(v)),
                    )
                })
            })
            .collect()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, format!("expected a bool, found {}", kind(v)))),
        }
    }

    /// An optional token id that must index the vocabulary of `n_tokens` tokens.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        match int(v) {
            Some(id) if (0..n_tokens as i64).contains(&id) => Ok(Some(id as u32)),
            Some(id) => Err(self.bad(
                key,
                format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
            )),
            None => Err(self.bad(key, format!("expected an integer, found {}", kind(v)))),
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// Short type name for error messages (candle's `Debug` would print whole arrays).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Bool(_) => "a bool",
        Value::F32(_) | Value::F64(_) => "a float",
        _ => "an integer",
    }
}
