//! Chat templates: the model's Jinja template rendered with minijinja the way `transformers` renders it
//! (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, a Python-style `tojson`, and Python string
//! and dict methods such as `.strip()` or `.items()` through minijinja-contrib's `pycompat`), so that prompts
//! are byte-identical to those the model was fine-tuned on.

use minijinja::value::Kwargs;
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// The template used when a model ships none: plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), the
/// format of SmolLM2 and Qwen2.5 and the former `transformers` default. A model without a template was not
/// tuned for chat, so this is a reasonable convention rather than the model's own format.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One turn of a conversation, serialized into the template's `messages` as `{"role": .., "content": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Clone)]
pub(super) struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    from_model: bool,
    /// A template minijinja cannot parse is reported when it is used, so that plain encoding still works.
    compile_error: Option<String>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: Option<String>, bos_token: String, eos_token: String) -> Self {
        let from_model = source.is_some();
        let source = source.unwrap_or_else(|| CHATML_TEMPLATE.to_owned());
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("raise_exception: {msg}"),
            ))
        });
        env.add_filter("tojson", tojson);
        let compile_error = env
            .add_template_owned("chat", source.clone())
            .err()
            .map(|e| e.to_string());
        Self {
            env,
            source,
            from_model,
            compile_error,
            bos_token,
            eos_token,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_from_model(&self) -> bool {
        self.from_model
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        if let Some(e) = &self.compile_error {
            return Err(e.clone());
        }
        // As in `transformers`; templates would otherwise index `messages[0]` or render a bare prompt.
        if messages.is_empty() {
            return Err("cannot apply a chat template to an empty conversation".into());
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let ctx = context! {
            messages,
            add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        template.render(ctx).map_err(|e| e.to_string())
    }
}

/// `transformers` overrides Jinja's `tojson` with `json.dumps(x, ensure_ascii=False, indent=indent)`: no HTML
/// escaping, `", "` and `": "` separators. minijinja's own filter escapes `<`, `>`, `&`, `'` and uses compact
/// separators, which would change tool-call prompts.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PySeparators,
        )),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

/// Python `json.dumps` default separators.
struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_array_value(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}
