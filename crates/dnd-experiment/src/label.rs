//! The label of a scored run: the key of its files in the score store (`scores/runs/<label>/`) and of
//! its row in the report. Built and read in one place, so a new baseline is a new variant, not a new
//! string format scattered over the experiment.

use std::fmt;
use std::str::FromStr;

/// Which adapter a scored run used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunLabel {
    /// The base model, no adapter: `base`.
    Base,
    /// A task's training LoRA, its collection's last checkpoint: `lora-<task>`.
    Lora(String),
    /// An earlier checkpoint of a task's LoRA (the oracle trajectory): `lora-<task>@step-<step>`.
    LoraStep {
        /// The task.
        task: String,
        /// The training step of the checkpoint.
        step: usize,
    },
    /// The `index`-th adapter generated for `target`: `<target>/dnd-<index>`.
    Dnd {
        /// The held-out target.
        target: String,
        /// Which prompt batch.
        index: usize,
    },
    /// The uniform average of the training checkpoints for `target`: `<target>/uniform-avg`.
    UniformAverage(String),
    /// One LoRA fine-tuned on the union of the training tasks of `target`: `<target>/multitask`.
    MultiTask(String),
}

impl fmt::Display for RunLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunLabel::Base => f.write_str("base"),
            RunLabel::Lora(task) => write!(f, "lora-{task}"),
            RunLabel::LoraStep { task, step } => write!(f, "lora-{task}@step-{step}"),
            RunLabel::Dnd { target, index } => write!(f, "{target}/dnd-{index}"),
            RunLabel::UniformAverage(target) => write!(f, "{target}/uniform-avg"),
            RunLabel::MultiTask(target) => write!(f, "{target}/multitask"),
        }
    }
}

/// A string that is no run label of the experiment.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a run label (base, lora-<task>, lora-<task>@step-<n>, <target>/dnd-<i>, <target>/uniform-avg, <target>/multitask)")]
pub struct BadLabel(String);

impl FromStr for RunLabel {
    type Err = BadLabel;

    fn from_str(s: &str) -> Result<Self, BadLabel> {
        let bad = || BadLabel(s.to_string());
        if s == "base" {
            return Ok(RunLabel::Base);
        }
        if let Some(rest) = s.strip_prefix("lora-") {
            return Ok(match rest.split_once("@step-") {
                Some((task, step)) => RunLabel::LoraStep {
                    task: task.to_string(),
                    step: step.parse().map_err(|_| bad())?,
                },
                None => RunLabel::Lora(rest.to_string()),
            });
        }
        let (target, what) = s.split_once('/').ok_or_else(bad)?;
        match what.strip_prefix("dnd-") {
            Some(i) => Ok(RunLabel::Dnd {
                target: target.to_string(),
                index: i.parse().map_err(|_| bad())?,
            }),
            None if what == "uniform-avg" => Ok(RunLabel::UniformAverage(target.to_string())),
            None if what == "multitask" => Ok(RunLabel::MultiTask(target.to_string())),
            None => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_store_strings_and_parse_back() {
        let cases = [
            (RunLabel::Base, "base"),
            (RunLabel::Lora("arc_easy".into()), "lora-arc_easy"),
            (
                RunLabel::LoraStep {
                    task: "siqa".into(),
                    step: 35,
                },
                "lora-siqa@step-35",
            ),
            (
                RunLabel::Dnd {
                    target: "boolq".into(),
                    index: 4,
                },
                "boolq/dnd-4",
            ),
            (RunLabel::UniformAverage("piqa".into()), "piqa/uniform-avg"),
            (RunLabel::MultiTask("piqa".into()), "piqa/multitask"),
        ];
        for (label, text) in cases {
            assert_eq!(label.to_string(), text);
            assert_eq!(text.parse::<RunLabel>().unwrap(), label);
        }
        for bad in ["", "lora-x@step-y", "boolq/dnd-", "boolq/other", "boolq"] {
            assert!(bad.parse::<RunLabel>().is_err(), "{bad}");
        }
    }
}
