//! Tokenizer and chat template on a tiny in-memory byte-level BPE vocabulary (no assets needed).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use dnd_llm::tokenizer::{ChatMessage, Tokenizer, TokenizerError, CHATML_TEMPLATE};
use dnd_testkit::byte_chars;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [&str; 6] = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġ Ġ"];

/// Ids: 0-2 specials, 3-258 bytes, then merge results, then the user-defined `<tool>`.
fn metadata(pre: &str) -> HashMap<String, Value> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars());
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    tokens.push("<tool>".into());
    let mut types = vec![3i32; 3];
    types.extend(std::iter::repeat_n(1, tokens.len() - 4));
    types.push(4);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    HashMap::from([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            strings(MERGES.iter().map(|m| m.to_string()).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ),
    ])
}

fn content(metadata: HashMap<String, Value>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn load(meta: HashMap<String, Value>) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_gguf(&content(meta), Path::new("tiny.gguf"))
}

fn tiny() -> Tokenizer {
    load(metadata("smollm")).unwrap()
}

/// Id of a byte token (bytes start at id 3).
fn byte(c: char) -> u32 {
    3 + byte_chars()
        .iter()
        .position(|t| t == &c.to_string())
        .unwrap() as u32
}

#[test]
fn encode_decode_round_trip() {
    let tok = tiny();
    let hello = tok.token_to_id("hello").unwrap();
    let sp_w = tok.token_to_id("Ġw").unwrap();
    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(
        ids,
        vec![hello, sp_w, byte('o'), byte('r'), byte('l'), byte('d')]
    );
    for text in ["hello world", "  two  spaces\n", "naïve café 東京 🙂", ""] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(tok.vocab_size(), 3 + 256 + MERGES.len() + 1);
}

#[test]
fn special_tokens_are_matched_whole() {
    let tok = tiny();
    let ids = tok
        .encode("<|im_start|>user\nhello<|im_end|>", false)
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhello");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>user\nhello<|im_end|>"
    );
    // User-defined tokens are kept whole too, but are not "special" when decoding.
    let tool = tok.token_to_id("<tool>").unwrap();
    let ids = tok.encode("hello<tool>", false).unwrap();
    assert_eq!(ids, vec![tok.token_to_id("hello").unwrap(), tool]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello<tool>");
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(tok.eos_ids(), &[2, 0]);
}

#[test]
fn smollm_splits_digits_one_by_one() {
    // "a  12": GPT-2's regex alone gives "a", " ", " 12"; with digits split first the two spaces stay
    // together ("a", "  ", "1", "2"), as in llama.cpp and SmolLM2's tokenizer.json.
    let tok = tiny();
    let ids = tok.encode("a  12", false).unwrap();
    assert_eq!(
        ids,
        vec![
            byte('a'),
            tok.token_to_id("ĠĠ").unwrap(),
            byte('1'),
            byte('2')
        ]
    );
    let gpt2 = load(metadata("gpt-2")).unwrap();
    let ids = gpt2.encode("a  12", false).unwrap();
    assert_eq!(
        ids,
        vec![byte('a'), byte('Ġ'), byte('Ġ'), byte('1'), byte('2')]
    );
}

#[test]
fn qwen2_pre_tokenizer_normalizes_to_nfc() {
    let tok = load(metadata("qwen2")).unwrap();
    let composed = tok.encode("caf\u{e9} hello", false).unwrap();
    assert_eq!(tok.encode("cafe\u{301} hello", false).unwrap(), composed);
    assert_eq!(tok.decode(&composed, false).unwrap(), "caf\u{e9} hello");
}

#[test]
fn add_bos_token_is_honoured() {
    let mut meta = metadata("smollm");
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    let tok = load(meta).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap()[0], 1);
    assert_eq!(
        tok.encode("hello", false).unwrap(),
        vec![tok.token_to_id("hello").unwrap()]
    );
}

#[test]
fn chat_template_renders_chatml() {
    let tok = tiny();
    assert!(tok.has_model_chat_template());
    let messages = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "hello"),
    ];
    let text = tok.apply_chat_template(&messages, true).unwrap();
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(text, expected);
    assert_eq!(
        tok.encode_chat(&messages, true).unwrap(),
        tok.encode(expected, false).unwrap()
    );
    let no_prompt = tok.apply_chat_template(&messages, false).unwrap();
    assert_eq!(
        no_prompt,
        expected.trim_end_matches("<|im_start|>assistant\n")
    );
    let err = tok.apply_chat_template(&[], true).unwrap_err();
    assert!(err.to_string().contains("empty conversation"), "{err}");
}

#[test]
fn missing_template_falls_back_to_chatml() {
    let mut meta = metadata("smollm");
    meta.remove("tokenizer.chat_template");
    let tok = load(meta).unwrap();
    assert!(!tok.has_model_chat_template());
    assert_eq!(tok.chat_template(), CHATML_TEMPLATE);
    let text = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// The Jinja features Hugging Face templates rely on: whitespace control, Python string methods,
/// `raise_exception`, loop controls, Python-style `tojson`, `bos_token`.
#[test]
fn template_features() {
    let template = "{%- for m in messages %}\n  {%- if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\n  {%- if loop.index > 2 %}{% break %}{% endif %}\n{{ bos_token }}{{ m.content.strip() | upper }}|{{ m | tojson }}\n{% endfor %}";
    let mut meta = metadata("smollm");
    meta.insert(
        "tokenizer.chat_template".into(),
        Value::String(template.into()),
    );
    let tok = load(meta).unwrap();
    let msgs: Vec<_> = ["a<b", " x ", "y"]
        .iter()
        .map(|c| ChatMessage::new("user", *c))
        .collect();
    let text = tok.apply_chat_template(&msgs, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>A<B|{\"role\": \"user\", \"content\": \"a<b\"}\n<|im_start|>X|{\"role\": \"user\", \"content\": \" x \"}\n"
    );
    let err = tok
        .apply_chat_template(&[ChatMessage::new("tool", "x")], false)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::Template { .. }), "{err}");
    assert!(
        err.to_string().contains("tiny.gguf") && err.to_string().contains("no tools"),
        "{err}"
    );
}

#[test]
fn broken_template_fails_only_when_used() {
    let mut meta = metadata("smollm");
    meta.insert(
        "tokenizer.chat_template".into(),
        Value::String("{% for %}".into()),
    );
    let tok = load(meta).unwrap();
    assert!(!tok.encode("hello", false).unwrap().is_empty());
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "x")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::Template { .. }), "{err}");
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    let err = load(metadata("my-new-model")).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnknownPre { pre, .. } if pre == "my-new-model"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tiny.gguf") && msg.contains("tokenizer.ggml.pre") && msg.contains("qwen2"),
        "{msg}"
    );
}

#[test]
fn bad_metadata_is_an_error() {
    let mut meta = metadata("smollm");
    meta.remove("tokenizer.ggml.tokens");
    let err = load(meta).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::MissingKey { key, .. } if key == "tokenizer.ggml.tokens"),
        "{err}"
    );
    assert!(err.to_string().contains("tiny.gguf"), "{err}");

    let mut meta = metadata("smollm");
    meta.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    assert!(matches!(
        load(meta),
        Err(TokenizerError::UnsupportedModel { .. })
    ));

    let mut meta = metadata("smollm");
    meta.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1_000_000));
    assert!(matches!(load(meta), Err(TokenizerError::BadKey { .. })));

    let mut meta = metadata("smollm");
    meta.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(vec![Value::String("nospace".into())]),
    );
    let err = load(meta).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

    let mut meta = metadata("smollm");
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(vec![Value::I32(1)]),
    );
    assert!(matches!(load(meta), Err(TokenizerError::BadKey { .. })));
}

/// The same tokenizer saved as `tokenizer.json` with a `tokenizer_config.json` and `generation_config.json`.
#[test]
fn from_file_reads_hf_layout() {
    let gguf = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    gguf.inner().save(&path, false).unwrap();
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": null,
        "chat_template": CHATML,
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    for text in ["hello world", "<|im_start|>a  12<tool>"] {
        assert_eq!(
            tok.encode(text, true).unwrap(),
            gguf.encode(text, true).unwrap()
        );
    }
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(1), Some(2), None)
    );
    assert_eq!(tok.eos_ids(), &[2, 0]);
    let msgs = [ChatMessage::new("user", "hi")];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        gguf.apply_chat_template(&msgs, true).unwrap()
    );

    // A chat_template.jinja file wins over the config's template.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].content }}!",
    )
    .unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tok.apply_chat_template(&msgs, true).unwrap(), "hi!");

    let err = Tokenizer::from_file(&dir.path().join("missing.json")).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
    std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Json { .. })
            && err.to_string().contains("tokenizer_config.json"),
        "{err}"
    );
}

/// The tokenizer is shared across data-loading and generation threads.
#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Tokenizer>();
}
