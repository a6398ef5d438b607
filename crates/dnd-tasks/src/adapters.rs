//! LLM-Adapters instruction records list the options inside the instruction text:
//! `"<header>: <question>\n\nAnswer1: a Answer2: b ...\n\nAnswer format: answer1/answer2/..."`
//! (also `Solution1/2` for PIQA, `Option1/2` for WinoGrande, `Ending1..4` for HellaSwag) or, for
//! BoolQ, `"... question: <question>\n\nAnswer format: true/false"`. The closing format line says
//! how many options there are and what they are called, so the text is cut at exactly those labels.

/// A multiple-choice record recovered from an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub question: String,
    pub choices: Vec<String>,
    pub gold: usize,
}

pub(crate) fn parse_choice(instruction: &str, answer: &str) -> Result<Choice, String> {
    let (body, format) = instruction
        .rsplit_once("Answer format:")
        .ok_or("instruction has no `Answer format:` line")?;
    let items: Vec<&str> = format.trim().split('/').map(str::trim).collect();
    let gold = items
        .iter()
        .position(|i| *i == answer.trim())
        .ok_or_else(|| format!("answer `{answer}` is not one of `{}`", format.trim()))?;
    let (_, rest) = body
        .split_once(": ")
        .ok_or("instruction has no `...: ` header before the question")?;
    if items == ["true", "false"] {
        return Ok(Choice {
            question: rest.trim().to_string(),
            choices: items.iter().map(|s| s.to_string()).collect(),
            gold,
        });
    }
    let word = items[0].trim_end_matches(|c: char| c.is_ascii_digit());
    if word.is_empty()
        || items
            .iter()
            .enumerate()
            .any(|(k, i)| *i != format!("{word}{}", k + 1))
    {
        return Err(format!("unrecognised answer format `{}`", format.trim()));
    }
    let label = {
        let mut c = word.chars();
        let first = c.next().expect("word is not empty");
        first.to_uppercase().chain(c).collect::<String>()
    };
    // Positions of "Label1: ", "Label2: ", ... in order.
    let mut starts = Vec::with_capacity(items.len());
    let mut from = 0;
    for k in 1..=items.len() {
        let tag = format!("{label}{k}: ");
        let at = rest[from..]
            .find(&tag)
            .map(|i| from + i)
            .ok_or_else(|| format!("option `{tag}` not found"))?;
        starts.push((at, at + tag.len()));
        from = at + tag.len();
    }
    let question = rest[..starts[0].0].trim().to_string();
    let choices = starts
        .iter()
        .enumerate()
        .map(|(k, &(_, text_at))| {
            let end = starts.get(k + 1).map_or(rest.len(), |s| s.0);
            rest[text_at..end].trim().to_string()
        })
        .collect();
    Ok(Choice {
        question,
        choices,
        gold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_option_style() {
        let arc = "Please choose the correct answer to the question: Which is hot?\n\n\
                   Answer1: ice Answer2: fire Answer3: snow\n\nAnswer format: answer1/answer2/answer3";
        let c = parse_choice(arc, "answer2").unwrap();
        assert_eq!(c.question, "Which is hot?");
        assert_eq!(c.choices, ["ice", "fire", "snow"]);
        assert_eq!(c.gold, 1);

        let piqa = "Please choose the correct solution to the question: Open a jar?\n\n\
                    Solution1: Twist it.\n\nSolution2: Kick it.\n\nAnswer format: solution1/solution2";
        let c = parse_choice(piqa, "solution1").unwrap();
        assert_eq!((c.question.as_str(), c.gold), ("Open a jar?", 0));
        assert_eq!(c.choices, ["Twist it.", "Kick it."]);

        let wino = "Please choose the correct answer to fill in the blank to complete the given \
                    sentence: Ann beat Bo so _ won.\n\nOption1: Ann Option2: Bo Answer format: option1/option2";
        let c = parse_choice(wino, "option1").unwrap();
        assert_eq!(c.question, "Ann beat Bo so _ won.");
        assert_eq!(c.choices, ["Ann", "Bo"]);

        let boolq = "Please answer the following question with true or false, question: is it?\n\n\
                     Answer format: true/false";
        let c = parse_choice(boolq, "false").unwrap();
        assert_eq!((c.question.as_str(), c.gold), ("is it?", 1));
    }

    #[test]
    fn rejects_inconsistent_records() {
        let q = "Please choose: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2";
        assert!(parse_choice(q, "answer3")
            .unwrap_err()
            .contains("not one of"));
        let missing = "Please choose: Q?\n\nAnswer1: a\n\nAnswer format: answer1/answer2";
        assert!(parse_choice(missing, "answer1")
            .unwrap_err()
            .contains("Answer2"));
        assert!(parse_choice("no format", "a").is_err());
    }
}
