//! Malformed files fail whole, with an error naming the file and the bad line or record.

use std::path::{Path, PathBuf};

use dnd_tasks::{import, Error, Layout, Loc, Metric, Role, Source, Task, Template};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn record_error(r: dnd_tasks::Result<Vec<dnd_tasks::Example>>) -> (PathBuf, Loc, String) {
    match r {
        Err(Error::Record { path, at, msg }) => (path, at, msg),
        other => panic!("expected a record error, got {other:?}"),
    }
}

#[test]
fn pubmedqa_records_must_be_yes_no_maybe_with_the_gauntlet_framing() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"context": "Context: A.\nQuestion: Q?\nA. yes\nB. no\nC. maybe\nAnswer: ", "continuation": "no"}"#;
    let path = write(dir.path(), "ok.jsonl", ok);
    let all = import(Template::PubmedQa, Layout::GauntletLm, &path, "ok").unwrap();
    assert_eq!(all[0].prompt, "Abstract: A.\nQuestion: Q?");

    let answer = write(
        dir.path(),
        "answer.jsonl",
        &format!("{ok}\n{}", ok.replace("\"no\"", "\"perhaps\"")),
    );
    let (_, at, msg) = record_error(import(Template::PubmedQa, Layout::GauntletLm, &answer, "a"));
    assert_eq!(at, Loc::Line(2));
    assert!(msg.contains("`perhaps` is not yes, no or maybe"), "{msg}");

    let framing = write(dir.path(), "framing.jsonl", &ok.replace("C. maybe\\n", ""));
    let (_, at, msg) = record_error(import(
        Template::PubmedQa,
        Layout::GauntletLm,
        &framing,
        "f",
    ));
    assert_eq!(at, Loc::Line(1));
    assert!(msg.contains("yes/no/maybe options"), "{msg}");
}

const MC_OK: &str = r#"{"query": "Question: q?", "choices": ["a", "b"], "gold": 1}"#;

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_json = write(
        dir.path(),
        "bad.jsonl",
        &format!("{MC_OK}\n\n{MC_OK}\n{{\"query\": \n"),
    );
    let err = import(Template::Arc, Layout::GauntletMc, &bad_json, "bad.jsonl").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.jsonl") && text.contains("line 4"),
        "{text}"
    );
    let (path, at, _) = record_error(Err(err));
    assert_eq!((path, at), (bad_json, Loc::Line(4)));

    let missing = write(
        dir.path(),
        "missing.jsonl",
        r#"{"query": "Question: q?", "gold": 0}"#,
    );
    let (_, at, msg) = record_error(import(Template::Arc, Layout::GauntletMc, &missing, "m"));
    assert_eq!(at, Loc::Line(1));
    assert!(msg.contains("choices"), "{msg}");

    let gold = write(
        dir.path(),
        "gold.jsonl",
        &format!("{MC_OK}\n{}", MC_OK.replace("1}", "5}")),
    );
    let (_, at, msg) = record_error(import(Template::Arc, Layout::GauntletMc, &gold, "g"));
    assert_eq!(at, Loc::Line(2));
    assert!(msg.contains("gold 5 out of range"), "{msg}");

    let prefix = write(
        dir.path(),
        "prefix.jsonl",
        r#"{"query": "q?", "choices": ["a", "b"], "gold": 0}"#,
    );
    let (_, _, msg) = record_error(import(Template::Arc, Layout::GauntletMc, &prefix, "p"));
    assert!(msg.contains("Question: "), "{msg}");

    let arc = write(
        dir.path(),
        "arc.jsonl",
        r#"{"question": {"stem": "s", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]}, "answerKey": "E"}"#,
    );
    let (_, _, msg) = record_error(import(Template::Arc, Layout::Arc, &arc, "a"));
    assert!(msg.contains("answerKey `E`"), "{msg}");
}

#[test]
fn json_array_errors_name_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", "input": "", "output": "", "answer": "answer2"}"#;
    let bad = ok.replace("\"answer2\"}", "\"answer7\"}");
    let path = write(dir.path(), "train.json", &format!("[{ok}, {bad}]"));
    let (p, at, msg) = record_error(import(Template::Arc, Layout::Adapters, &path, "t"));
    assert_eq!((p, at), (path.clone(), Loc::Record(2)));
    assert!(msg.contains("answer7"), "{msg}");

    let not_array = write(dir.path(), "obj.json", ok);
    match import(Template::Arc, Layout::Adapters, &not_array, "o") {
        Err(Error::File { path, msg }) => {
            assert_eq!(path, not_array);
            assert!(msg.contains("JSON array"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hellaswag_text_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let item = "Label: A man is here. he\n2\nruns.\nsits.\njumps.\nsleeps.\n";
    let bad_gold = write(
        dir.path(),
        "h.txt",
        &format!("{item}{}", item.replace("\n2\n", "\n7\n")),
    );
    let (_, at, msg) = record_error(import(
        Template::Hellaswag,
        Layout::HellaswagText,
        &bad_gold,
        "h",
    ));
    assert_eq!(at, Loc::Line(8));
    assert!(msg.contains("0-3"), "{msg}");
    let truncated = write(dir.path(), "t.txt", &format!("{item}Label: x\n1\n"));
    let (_, at, msg) = record_error(import(
        Template::Hellaswag,
        Layout::HellaswagText,
        &truncated,
        "t",
    ));
    assert_eq!(at, Loc::Line(7));
    assert!(msg.contains("incomplete"), "{msg}");
    let ok = write(dir.path(), "ok.txt", item);
    let one = import(Template::Hellaswag, Layout::HellaswagText, &ok, "ok").unwrap();
    assert_eq!(common_context(&one[0]), "Label: A man is here. He");
}

fn common_context(ex: &dnd_tasks::Example) -> &str {
    match &ex.body {
        dnd_tasks::Body::MultipleChoice { context, .. } => context,
        _ => panic!(),
    }
}

#[test]
fn io_and_pairing_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("absent.jsonl");
    match import(Template::Arc, Layout::Arc, &gone, "absent") {
        Err(e @ Error::Io(_)) => assert!(e.to_string().contains("absent.jsonl")),
        other => panic!("{other:?}"),
    }
    // An unsupported pairing is refused before the file is even opened.
    match import(Template::Boolq, Layout::GauntletSchema, &gone, "absent") {
        Err(Error::Unsupported {
            template, layout, ..
        }) => {
            assert_eq!(
                (template.as_str(), layout.as_str()),
                ("boolq", "gauntlet-schema")
            )
        }
        other => panic!("{other:?}"),
    }
    let bz = write(dir.path(), "x.jsonl.bz2", "not bzip2 at all");
    assert!(matches!(
        import(Template::Arc, Layout::Arc, &bz, "x"),
        Err(Error::File { .. })
    ));
}

#[test]
fn a_task_with_one_bad_file_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.jsonl", &format!("{MC_OK}\n{MC_OK}\n"));
    write(dir.path(), "bad.jsonl", &format!("{MC_OK}\nnot json\n"));
    let source = |name: &str, role| Source {
        path: name.into(),
        layout: Layout::GauntletMc,
        role,
    };
    let task = Task {
        name: "t".into(),
        dataset: "t".into(),
        template: Template::Arc,
        metric: Metric::Acc,
        sources: vec![
            source("good.jsonl", Role::Test),
            source("bad.jsonl", Role::Train),
        ],
        shares: None,
        notes: String::new(),
    };
    let err = task.load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("bad.jsonl: line 2"), "{err}");
    assert!(task.splits(dir.path(), &Default::default()).is_err());
}
