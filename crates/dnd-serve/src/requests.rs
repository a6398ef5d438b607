//! Request bodies and the checks they pass before anything is queued: types, limits, and the OpenAI
//! options dnd does not implement (refused, not ignored). Pure functions of the body and the limits, so
//! the same code is what the handlers run and what the fuzzer drives ([`check_body`]).

use crate::engine::Input;
use crate::error::{ApiError, ApiResult};
use crate::Limits;
use dnd_llm::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

/// A completion request that passed its checks: what the engine needs, with the model still a name
/// (looking it up needs the adapter store).
pub(crate) struct Checked {
    pub model: String,
    pub input: Input,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub sampling: dnd_llm::score::Sampling,
    pub stream: bool,
}

/// Fields OpenAI clients send that change the output. Decoding is greedy unless `temperature` > 0
/// (dnd's default is 0, OpenAI's 1: the same request gives the same text); sampled requests without
/// a `seed` get a random one. `top_k` is the extension vLLM and llama.cpp's server accept. One choice
/// per request, no log-probabilities: anything else is refused rather than ignored.
#[derive(Deserialize)]
pub(crate) struct Sampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    seed: Option<u64>,
    n: Option<u64>,
    logprobs: Option<Value>,
    echo: Option<bool>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<Value>,
}

impl Sampling {
    /// The decoding settings, checked.
    fn sampling(&self) -> ApiResult<dnd_llm::score::Sampling> {
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::bad_request("temperature: from 0 to 2"));
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ApiError::bad_request("top_p: above 0 and at most 1"));
        }
        Ok(dnd_llm::score::Sampling {
            temperature: self.temperature.unwrap_or(0.0),
            top_k: self.top_k.unwrap_or(0).min(usize::MAX as u64) as usize,
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(rand::random),
        })
    }

    fn check(&self, limits: &Limits) -> ApiResult<(usize, Vec<String>)> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("n: one choice per request"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|l| !l.is_null() && l != &json!(false))
        {
            return Err(ApiError::bad_request("logprobs are not returned"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::bad_request("echo is not supported"));
        }
        let max = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(limits.max_tokens.min(128) as u64);
        if max == 0 || max > limits.max_tokens as u64 {
            return Err(ApiError::bad_request(format!(
                "max_tokens: {max}, this server allows 1 to {}",
                limits.max_tokens
            )));
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad_request("stop: strings only"))?,
            Some(_) => return Err(ApiError::bad_request("stop: a string or up to 4 strings")),
        };
        if stop.iter().any(|s| s.is_empty() || s.len() > 100) {
            return Err(ApiError::bad_request("stop: each from 1 to 100 bytes"));
        }
        Ok((max as usize, stop))
    }
}

#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

impl CompletionRequest {
    pub fn check(self, limits: &Limits) -> ApiResult<Checked> {
        let (max_tokens, stop) = self.sampling.check(limits)?;
        let prompt = match self.prompt {
            Value::String(p) => p,
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().into()
            }
            _ => return Err(ApiError::bad_request("prompt: one string per request")),
        };
        limits.check_text("prompt", &prompt)?;
        Ok(Checked {
            model: self.model,
            input: Input::Text(prompt),
            max_tokens,
            stop,
            sampling: self.sampling.sampling()?,
            stream: self.sampling.stream,
        })
    }
}

impl ChatRequest {
    pub fn check(self, limits: &Limits) -> ApiResult<Checked> {
        let (max_tokens, stop) = self.sampling.check(limits)?;
        if self.messages.is_empty() || self.messages.len() > 64 {
            return Err(ApiError::bad_request("messages: from 1 to 64"));
        }
        let mut messages = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role: `{}` (system, user or assistant)",
                    m.role.chars().take(40).collect::<String>()
                )));
            }
            let Some(text) = m.content.as_str() else {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].content: text only"
                )));
            };
            limits.check_text(&format!("messages[{i}].content"), text)?;
            messages.push(ChatMessage::new(&m.role, text));
        }
        Ok(Checked {
            model: self.model,
            input: Input::Chat(messages),
            max_tokens,
            stop,
            sampling: self.sampling.sampling()?,
            stream: self.sampling.stream,
        })
    }
}

/// `POST /v1/adapters`: prompts, or a description used as the only prompt.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAdapter {
    prompts: Option<Vec<String>>,
    description: Option<String>,
}

impl CreateAdapter {
    /// The non-blank prompts, within the limits.
    pub fn check(self, limits: &Limits) -> ApiResult<Vec<String>> {
        let prompts = match (self.prompts, self.description) {
            (Some(p), None) => p,
            (None, Some(d)) => vec![d],
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `prompts` (a list) or `description`",
                ))
            }
        };
        let prompts: Vec<String> = prompts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect();
        if prompts.is_empty() || prompts.len() > limits.max_prompts {
            return Err(ApiError::bad_request(format!(
                "prompts: {} non-blank, this server takes 1 to {}",
                prompts.len(),
                limits.max_prompts
            )));
        }
        for (i, p) in prompts.iter().enumerate() {
            limits.check_text(&format!("prompts[{i}]"), p)?;
        }
        Ok(prompts)
    }
}

impl Limits {
    fn check_text(&self, what: &str, text: &str) -> ApiResult<()> {
        if text.len() > self.max_prompt_bytes {
            return Err(ApiError::bad_request(format!(
                "{what}: {} bytes, this server allows {}",
                text.len(),
                self.max_prompt_bytes
            )));
        }
        Ok(())
    }
}

/// Parse and check a request body for `route` exactly as the server does before queueing it (the
/// model name is not looked up). For the fuzzer; an `Err` is a 4xx the server would answer.
pub fn check_body(route: &str, body: &[u8], limits: &Limits) -> ApiResult<()> {
    let parse_err = |e: serde_json::Error| ApiError::bad_request(e.to_string());
    match route {
        "/v1/completions" => serde_json::from_slice::<CompletionRequest>(body)
            .map_err(parse_err)?
            .check(limits)
            .map(drop),
        "/v1/chat/completions" => serde_json::from_slice::<ChatRequest>(body)
            .map_err(parse_err)?
            .check(limits)
            .map(drop),
        "/v1/adapters" => serde_json::from_slice::<CreateAdapter>(body)
            .map_err(parse_err)?
            .check(limits)
            .map(drop),
        other => Err(ApiError::not_found(format!("no body route {other}"))),
    }
}
