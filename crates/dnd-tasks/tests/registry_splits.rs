//! Every registered task loads, and its split is disjoint, deterministic and sized as documented.

mod common;

use std::collections::HashMap;

use common::data_root;
use dnd_tasks::{builtin_tasks, find_task, Context, Part, PromptStyle, SplitConfig};

#[test]
fn every_task_splits_into_disjoint_deterministic_parts() {
    let Some(root) = data_root() else { return };
    let cfg = SplitConfig::default();
    let mut checked = 0;
    for task in builtin_tasks() {
        if !task.available(&root) {
            eprintln!("{}: source files absent, skipped", task.name);
            continue;
        }
        let splits = task
            .splits(&root, &cfg)
            .unwrap_or_else(|e| panic!("{}: {e}", task.name));
        let mut owner: HashMap<&str, Part> = HashMap::new();
        for part in Part::ALL {
            assert!(
                !splits.part(part).is_empty(),
                "{}: empty {}",
                task.name,
                part.name()
            );
            for ex in splits.part(part) {
                let prev = *owner.entry(ex.key.as_str()).or_insert(part);
                assert_eq!(
                    prev,
                    part,
                    "{}: `{}` in {} and {}",
                    task.name,
                    ex.key,
                    prev.name(),
                    part.name()
                );
                assert!(!ex.prompt.is_empty() && !ex.key.is_empty(), "{}", ex.id);
            }
        }
        eprintln!(
            "{:15} adapter-train {:5} prompts {:4} validation {:4} test {:5} (overlap dropped {}, unused {})",
            task.name,
            splits.adapter_train.len(),
            splits.prompts.len(),
            splits.validation.len(),
            splits.test.len(),
            splits.dropped_overlap,
            splits.unused
        );
        let again = task.splits(&root, &cfg).unwrap();
        assert_eq!(again, splits, "{}: split is not deterministic", task.name);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} tasks had their files");
}

#[test]
fn official_splits_are_kept_and_train_overlap_removed() {
    let Some(root) = data_root() else { return };
    let cfg = SplitConfig::default();
    let arc = find_task("arc_challenge")
        .unwrap()
        .splits(&root, &cfg)
        .unwrap();
    // All of ARC-Challenge Test is scored; Dev (299) loses the 2 questions that are also in Test.
    assert_eq!(arc.test.len(), 1172);
    assert_eq!(arc.validation.len(), 297);
    assert!(arc
        .test
        .iter()
        .all(|e| e.id.starts_with("arc/ARC-Challenge-Test.jsonl:")));
    assert!(arc
        .validation
        .iter()
        .all(|e| e.id.starts_with("arc/ARC-Challenge-Dev.jsonl:")));
    let train = "llm-adapters/ARC-Challenge/train.json:";
    assert!(arc
        .adapter_train
        .iter()
        .chain(&arc.prompts)
        .all(|e| e.id.starts_with(train)));
    assert_eq!(
        arc.adapter_train.len() + arc.prompts.len() + 6 + 1,
        1119,
        "6 train questions are in Test, 1 in Dev"
    );

    let gsm = find_task("gsm8k").unwrap().splits(&root, &cfg).unwrap();
    assert_eq!(gsm.test.len(), 1319);
    assert_eq!(
        (
            gsm.adapter_train.len(),
            gsm.prompts.len(),
            gsm.validation.len()
        ),
        (5000, 500, 300)
    );
}

#[test]
fn chat_variant_wraps_the_context_as_a_user_turn() {
    let Some(root) = data_root() else { return };
    let splits = find_task("piqa")
        .unwrap()
        .splits(&root, &SplitConfig::default())
        .unwrap();
    let ex = &splits.test[0];
    let plain = ex.requests(PromptStyle::Plain);
    let chat = ex.requests(PromptStyle::Chat);
    assert_eq!(plain.len(), 2);
    for (p, c) in plain.iter().zip(&chat) {
        let (Context::Text(text), Context::Chat(msgs)) = (&p.context, &c.context) else {
            panic!()
        };
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].role, &msgs[0].content), ("user", text));
        assert_eq!(p.continuation, format!(" {}", c.continuation));
    }
}
