//! The paper's generation protocol for multiple choice, kept only as an extra score (`gen_acc`):
//! show the question with lettered options, let the model write an answer, parse a letter from it.
//! Unlike the paper we decode greedily (not at temperature 0.95), so the score is reproducible;
//! an answer with no parsable letter counts as wrong and is counted separately (`gen_invalid`).

use std::sync::LazyLock;

use dnd_tasks::{Body, Example};
use regex::Regex;

/// The instruction appended under the options.
pub const INSTRUCTION: &str = "Answer with the letter of the correct option.";

/// Generation stops at a blank line; the answer should come first.
pub const STOPS: [&str; 1] = ["\n\n"];

/// Enough tokens for "The correct answer is B: <option text>".
pub const MAX_NEW_TOKENS: usize = 32;

/// The letter of option `i`: A, B, ...
pub fn letter(i: usize) -> char {
    char::from(b'A' + u8::try_from(i % 26).expect("i % 26 fits a byte"))
}

/// The question with its options lettered, the instruction, and `Answer:`, plus the number of
/// options; `None` for generative and code items. The task's conditioning prompt already lists
/// lettered options for most tasks (`\nA. ...` lines); otherwise (BoolQ, Gauntlet files) the
/// options are appended: the choices, or for a schema item each context with its continuation.
pub fn letter_prompt(example: &Example) -> Option<(String, usize)> {
    let options: Vec<String> = match &example.body {
        Body::MultipleChoice { choices, .. } => choices.clone(),
        Body::Schema {
            contexts,
            continuation,
            ..
        } => contexts
            .iter()
            .map(|c| format!("{c} {continuation}"))
            .collect(),
        Body::Generative { .. } | Body::Code { .. } => return None,
    };
    let listed = (0..options.len()).all(|i| example.prompt.contains(&format!("\n{}. ", letter(i))));
    let mut text = example.prompt.clone();
    if !listed {
        for (i, o) in options.iter().enumerate() {
            text.push_str(&format!("\n{}. {o}", letter(i)));
        }
    }
    text.push_str(&format!("\n{INSTRUCTION}\nAnswer:"));
    Some((text, options.len()))
}

/// The option a generated answer picks, if any: a letter after "answer (is)", else a letter that
/// opens the answer ("B", "(B)", "B."), else the first stand-alone capital letter that names an
/// option. Out-of-range letters are skipped, so "I think it is C" reads as C.
pub fn parse_letter(text: &str, n: usize) -> Option<usize> {
    static PATTERNS: LazyLock<[Regex; 3]> = LazyLock::new(|| {
        [
            r"(?i)answer(?:\s+is)?\s*[:\-]?\s*\(?([a-z])\b",
            r"^\s*\(?([A-Z])(?:[\).:\s]|$)",
            r"\b([A-Z])\b",
        ]
        .map(|p| Regex::new(p).expect("valid regex"))
    });
    PATTERNS.iter().find_map(|re| {
        re.captures_iter(text).find_map(|c| {
            let ch = c[1].chars().next()?.to_ascii_uppercase();
            let i = usize::from(u8::try_from(ch).ok()?.checked_sub(b'A')?);
            (i < n).then_some(i)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_letters_the_way_answers_are_written() {
        assert_eq!(parse_letter("B", 4), Some(1));
        assert_eq!(parse_letter(" (C) the moon", 4), Some(2));
        assert_eq!(parse_letter("The correct answer is: d.", 4), Some(3));
        assert_eq!(parse_letter("I think it is C", 4), Some(2));
        assert_eq!(parse_letter("E", 4), None);
        assert_eq!(parse_letter("no idea", 4), None);
    }

    #[test]
    fn options_are_listed_once() {
        let ex = Example {
            id: "x".into(),
            prompt: "Sky?\nA. blue\nB. red".into(),
            key: String::new(),
            body: Body::MultipleChoice {
                context: "Question: Sky?\nAnswer:".into(),
                choices: vec!["blue".into(), "red".into()],
                gold: 0,
            },
        };
        let (text, n) = letter_prompt(&ex).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            text,
            format!("Sky?\nA. blue\nB. red\n{INSTRUCTION}\nAnswer:")
        );
        let ex = Example {
            prompt: "Passage\nQuestion: is it?".into(),
            body: Body::Schema {
                contexts: vec!["Tom ate".into(), "Ann ate".into()],
                continuation: "it.".into(),
                gold: 1,
            },
            ..ex
        };
        let (text, _) = letter_prompt(&ex).unwrap();
        assert!(
            text.contains("\nA. Tom ate it.\nB. Ann ate it.\n"),
            "{text}"
        );
    }
}
