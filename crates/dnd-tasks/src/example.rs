//! The typed task model every importer produces, and the scoring requests built from it.

/// lm-evaluation-harness's default `target_delimiter`: the continuation of a plain-text request is
/// `" " + choice`. Every task here uses the default.
pub const TARGET_DELIMITER: &str = " ";

/// One benchmark item, already rendered by its task's template.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `source-path:line` (or `:record`), stable across runs, for reports and debugging.
    pub id: String,
    /// The unlabeled problem as DnD's conditioning prompt: question and options, never the answer.
    pub prompt: String,
    /// Normalised problem statement (see [`normalise`]); two items with the same key are the same
    /// problem, so they must never sit in two different split parts.
    pub key: String,
    pub body: Body,
}

/// What is scored and how.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Score each choice as a continuation of one context (`" " + choice` in plain text).
    /// `choices` are lm-eval's `doc_to_choice` strings: acc_norm divides by their length in chars.
    MultipleChoice {
        context: String,
        choices: Vec<String>,
        gold: usize,
    },
    /// Partial scoring (WinoGrande): score the same continuation after each context.
    Schema {
        contexts: Vec<String>,
        continuation: String,
        gold: usize,
    },
    /// Free generation compared with a reference answer after answer extraction.
    Generative {
        context: String,
        /// The full reference a fine-tuned model should produce (GSM8K: reasoning + `#### N`).
        target: String,
        /// The short answer exact match compares with.
        answer: String,
        aliases: Vec<String>,
    },
    /// HumanEval-style code completion, scored by running `test` (done elsewhere).
    Code {
        task_id: String,
        prompt: String,
        entry_point: String,
        canonical_solution: String,
        test: String,
    },
}

/// Plain text as in lm-eval by default, or wrapped in the model's chat template as lm-eval does
/// with `--apply_chat_template` for instruction-tuned models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptStyle {
    #[default]
    Plain,
    Chat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// The conditioning side of a log-likelihood request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    Text(String),
    /// To be rendered with the model's chat template and `add_generation_prompt = true`; lm-eval
    /// sends no system message, so the template's default one (if any) applies.
    Chat(Vec<ChatMessage>),
}

/// Score `log P(continuation | context)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: Context,
    pub continuation: String,
}

impl PromptStyle {
    /// lm-eval drops the target delimiter under a chat template: the answer starts the assistant
    /// turn, so a leading space would be out of distribution.
    fn delimiter(self) -> &'static str {
        match self {
            PromptStyle::Plain => TARGET_DELIMITER,
            PromptStyle::Chat => "",
        }
    }

    pub fn context(self, text: &str) -> Context {
        match self {
            PromptStyle::Plain => Context::Text(text.to_string()),
            PromptStyle::Chat => Context::Chat(vec![ChatMessage {
                role: "user",
                content: text.to_string(),
            }]),
        }
    }
}

impl Example {
    /// One request per choice (multiple choice) or per context (schema); empty for generative and
    /// code items, which are scored from a generation instead.
    pub fn requests(&self, style: PromptStyle) -> Vec<Request> {
        let d = style.delimiter();
        match &self.body {
            Body::MultipleChoice {
                context, choices, ..
            } => choices
                .iter()
                .map(|c| Request {
                    context: style.context(context),
                    continuation: format!("{d}{c}"),
                })
                .collect(),
            Body::Schema {
                contexts,
                continuation,
                ..
            } => contexts
                .iter()
                .map(|c| Request {
                    context: style.context(c),
                    continuation: format!("{d}{continuation}"),
                })
                .collect(),
            Body::Generative { .. } | Body::Code { .. } => Vec::new(),
        }
    }

    /// The labelled text pair an adapter is fine-tuned on: the scored context and its gold
    /// continuation (plain style), so adapters learn exactly what is later scored.
    pub fn training_pair(&self) -> (String, String) {
        let d = TARGET_DELIMITER;
        match &self.body {
            Body::MultipleChoice {
                context,
                choices,
                gold,
            } => (context.clone(), format!("{d}{}", choices[*gold])),
            Body::Schema {
                contexts,
                continuation,
                gold,
            } => (contexts[*gold].clone(), format!("{d}{continuation}")),
            Body::Generative {
                context, target, ..
            } => (context.clone(), format!("{d}{target}")),
            Body::Code {
                prompt,
                canonical_solution,
                ..
            } => (prompt.clone(), canonical_solution.clone()),
        }
    }

    /// The text a generative or code item is generated from.
    pub fn generation_context(&self) -> Option<&str> {
        match &self.body {
            Body::Generative { context, .. } => Some(context),
            Body::Code { prompt, .. } => Some(prompt),
            _ => None,
        }
    }
}

/// Lower-case, keep letters and digits, collapse everything else to single spaces. Catches the
/// same question re-typed with different spacing, punctuation or case across source files.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_ignores_case_spacing_and_punctuation() {
        assert_eq!(normalise("  What's  the\nSun?"), "what s the sun");
        assert_eq!(normalise("What's the sun"), normalise("what s THE sun!"));
    }

    #[test]
    fn chat_style_drops_the_delimiter() {
        let ex = Example {
            id: "x".into(),
            prompt: "q".into(),
            key: "q".into(),
            body: Body::MultipleChoice {
                context: "Question: q\nAnswer:".into(),
                choices: vec!["a".into(), "b".into()],
                gold: 1,
            },
        };
        let plain = ex.requests(PromptStyle::Plain);
        assert_eq!(plain[1].continuation, " b");
        assert_eq!(
            plain[1].context,
            Context::Text("Question: q\nAnswer:".into())
        );
        let chat = ex.requests(PromptStyle::Chat);
        assert_eq!(chat[0].continuation, "a");
        let Context::Chat(msgs) = &chat[0].context else {
            panic!("chat context expected")
        };
        assert_eq!(
            (msgs[0].role, msgs[0].content.as_str()),
            ("user", "Question: q\nAnswer:")
        );
        assert_eq!(
            ex.training_pair(),
            ("Question: q\nAnswer:".into(), " b".into())
        );
    }
}
