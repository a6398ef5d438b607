//! The real backend on a tiny formula model with a tiny byte-level BPE tokenizer (no assets):
//! lm-eval tokenisation and context sharing, chat rendering, and stop strings during generation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use candle_core::{DType, Device, Tensor};
use dnd_evaluate::{truncate_at_stop, GenRequest, LanguageModel, LlmBackend};
use dnd_llm::score::{encode_pair, loglikelihood};
use dnd_llm::{ModelConfig, Target, Tokenizer, Transformer};
use dnd_tasks::{Context, PromptStyle};
use dnd_testkit::byte_chars;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const MERGES: [&str; 4] = ["h e", "l l", "Ġ w", "Ġ Ġ"];

/// Ids 0-2 specials (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), 3-258 bytes, then merges.
fn tokenizer() -> Tokenizer {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .into();
    tokens.extend(byte_chars());
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![3i32; 3];
    types.resize(tokens.len(), 1);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let metadata = HashMap::from([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            strings(MERGES.map(String::from).into()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ),
    ]);
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    Tokenizer::from_gguf(&content, Path::new("tiny.gguf")).unwrap()
}

/// A 2-layer Llama whose weights follow a closed formula (as in dnd-llm's tests), with a
/// vocabulary as large as the tokenizer's.
fn model() -> Transformer {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 272,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "hidden_act": "silu"
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let cfg = ModelConfig::from_hf_file(&path).unwrap();
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize]| {
        let h = name.bytes().map(u64::from).sum::<u64>() % 1000;
        let norm = name.contains("norm");
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let x = 0.1 * (0.7 * i as f64 + 0.013 * h as f64 + 0.5).sin();
                (if norm { 1.0 + x } else { x }) as f32
            })
            .collect();
        w.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    };
    let h = cfg.hidden_size;
    put("model.embed_tokens.weight".into(), &[cfg.vocab_size, h]);
    put("model.norm.weight".into(), &[h]);
    for l in 0..cfg.num_layers {
        put(format!("model.layers.{l}.input_layernorm.weight"), &[h]);
        put(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            &[h],
        );
        for t in Target::ALL {
            let (i, o) = cfg.module_shape(t);
            put(format!("model.layers.{l}.{}.weight", t.path()), &[o, i]);
        }
    }
    Transformer::new(cfg, w, DType::F32, dir.path()).unwrap()
}

#[test]
fn loglikelihoods_match_separate_lm_eval_requests() {
    let (model, tok) = (model(), tokenizer());
    let lm = LlmBackend::new(&model, &tok);
    // The trailing space moves into every continuation (lm-eval), so all share one context.
    let context = Context::Text("hello world ".into());
    let conts = vec!["well".to_string(), "he".to_string(), " hello".to_string()];
    let got = lm.loglikelihoods(&context, &conts).unwrap();
    assert_eq!(got.lls.len(), 3);
    let mut tokens = None;
    for (c, ll) in conts.iter().zip(&got.lls) {
        let (ctx, cont) = encode_pair(&tok, "hello world ", c).unwrap();
        let expected = loglikelihood(&model, None, &ctx, std::slice::from_ref(&cont)).unwrap()[0];
        assert!(
            (ll.logprob - expected.logprob).abs() < 1e-4,
            "{c:?}: {ll:?} vs {expected:?}"
        );
        assert_eq!(ll.is_greedy, expected.is_greedy);
        *tokens.get_or_insert(ctx.len()) += cont.len();
    }
    assert_eq!(got.tokens, tokens.unwrap(), "context counted once");
}

#[test]
fn chat_contexts_are_rendered_with_the_template() {
    let (model, tok) = (model(), tokenizer());
    let lm = LlmBackend::new(&model, &tok);
    let ctx = PromptStyle::Chat.context("Question: hi\nAnswer:");
    assert_eq!(
        lm.render(&ctx).unwrap(),
        "<|im_start|>user\nQuestion: hi\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    );
    let rendered = lm.render(&ctx).unwrap();
    let (c, cont) = encode_pair(&tok, &rendered, "yes").unwrap();
    let expected = loglikelihood(&model, None, &c, &[cont]).unwrap()[0].logprob;
    let got = lm.loglikelihoods(&ctx, &["yes".into()]).unwrap().lls[0].logprob;
    assert!((got - expected).abs() < 1e-4);
}

#[test]
fn generation_stops_at_the_first_stop_string() {
    let (model, tok) = (model(), tokenizer());
    let lm = LlmBackend::new(&model, &tok);
    let ctx = Context::Text("hello world".into());
    let free = lm.generate(&ctx, "", &[], 24).unwrap();
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 6, "{:?}", free.text);
    // Stop at a piece of the free generation: the text before it comes back, and fewer tokens run.
    let stop: String = chars[3..5].iter().collect();
    let stops = [stop];
    let cut = lm.generate(&ctx, "", &stops, 24).unwrap();
    assert_eq!(cut.text, truncate_at_stop(&free.text, &stops).0);
    assert!(!cut.text.contains(&stops[0]));
    assert!(
        cut.tokens < free.tokens,
        "{} vs {}",
        cut.tokens,
        free.tokens
    );
    // A prefix is conditioned on but not returned.
    let with_prefix = lm
        .generate(&Context::Text("hello".into()), " world", &[], 24)
        .unwrap();
    assert_eq!(with_prefix.text, free.text);
}

/// Requests decoded as one batch come back as each decoded alone: their own stop strings, token
/// budgets and prefixes, whichever finishes first.
#[test]
fn batched_generations_equal_each_request_alone() {
    let (model, tok) = (model(), tokenizer());
    let lm = LlmBackend::new(&model, &tok);
    let free = lm
        .generate(&Context::Text("hello world".into()), "", &[], 24)
        .unwrap();
    let stop: String = free.text.chars().skip(3).take(2).collect();
    let request = |text: &str, prefix: &str, stops: Vec<String>, max_new| GenRequest {
        context: Context::Text(text.into()),
        prefix: prefix.into(),
        stops,
        max_new,
    };
    let requests = [
        request("hello world", "", vec![stop], 24),
        request("hello", " world", vec![], 24),
        request("world hello world", "", vec![], 5),
        request("hello world", "", vec![], 24),
    ];
    let batched = lm.generate_batch(&requests).unwrap();
    assert_eq!(batched.len(), requests.len());
    for (r, b) in requests.iter().zip(&batched) {
        let alone = lm
            .generate(&r.context, &r.prefix, &r.stops, r.max_new)
            .unwrap();
        assert_eq!(b, &alone, "{r:?}");
    }
    assert!(batched[0].text.len() < free.text.len());
    assert_eq!(batched[1].text, free.text);
    assert_eq!(batched[3].text, free.text);
}

#[test]
fn truncation_keeps_the_text_before_the_earliest_stop() {
    let stops = ["\nQuestion:".to_string(), "####".to_string(), String::new()];
    assert_eq!(
        truncate_at_stop("a #### 3\nQuestion: b", &stops),
        ("a ", true)
    );
    assert_eq!(truncate_at_stop("a\nQuestion: #### 3", &stops), ("a", true));
    assert_eq!(truncate_at_stop("plain", &stops), ("plain", false));
}
