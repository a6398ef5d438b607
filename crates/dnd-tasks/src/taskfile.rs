//! Task files a user writes, the suites shipped with dnd, and the catalog every command resolves task
//! names in.
//!
//! A task file is TOML (`[[task]]` tables) or JSON (`{"task": [...]}` or a bare array), chosen by
//! its extension. One entry:
//!
//! ```toml
//! [[task]]
//! name = "reviews"              # letters, digits, `_`, `-`, `.`; unique among all tasks
//! dataset = "my_reviews"        # source dataset, for holding out (default: the name)
//! file = "reviews.jsonl"        # relative to the task file; or `sources` (below)
//! layout = "multiple-choice"    # {query, choices, gold}; see `Layout` for the rest
//! template = "as-written"       # how records become text (default: as written)
//! metric = "acc"                # default: from the layout and template
//! split = { test = 0.5, adapter_train = 0.3, prompts = 0.1, validation = 0.1 }  # optional
//! ```
//!
//! `sources = [{ path = "train.jsonl", role = "train", layout = "..." }, ...]` replaces `file` when a
//! task has several files (roles `test`, `validation`, `train`, `pool`; `pool` by default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::layouts::Layout;
use crate::registry::{builtin_tasks, find_task, Metric, Source, Task};
use crate::split::{Role, Shares};
use crate::templates::Template;

/// One `[[task]]` of a task file, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    dataset: Option<String>,
    layout: Option<Layout>,
    template: Option<Template>,
    metric: Option<Metric>,
    file: Option<PathBuf>,
    #[serde(default)]
    sources: Vec<EntrySource>,
    split: Option<Shares>,
    notes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySource {
    path: PathBuf,
    layout: Option<Layout>,
    #[serde(default = "pool")]
    role: Role,
}

fn pool() -> Role {
    Role::Pool
}

/// Whether `name` can be a task name: it becomes a directory name in collections and reports.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Entry {
    /// The task this entry defines; relative paths are resolved against `dir`.
    fn into_task(self, dir: &Path) -> std::result::Result<Task, String> {
        if !valid_name(&self.name) {
            return Err(
                "`name` must be 1-100 letters, digits, `_`, `-` or `.`, not starting with `.`"
                    .into(),
            );
        }
        let sources = match (self.file, self.sources.is_empty()) {
            (Some(path), true) => vec![EntrySource {
                path,
                layout: None,
                role: Role::Pool,
            }],
            (None, false) => self.sources,
            (Some(_), false) => return Err("give `file` or `sources`, not both".into()),
            (None, true) => return Err("missing field `file` (or `sources`)".into()),
        };
        let sources = sources
            .into_iter()
            .map(|s| {
                let layout = s
                    .layout
                    .or(self.layout)
                    .ok_or_else(|| format!("missing field `layout` (for {})", s.path.display()))?;
                Ok(Source {
                    path: dir.join(s.path),
                    layout,
                    role: s.role,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let template = self.template.unwrap_or(Template::Gauntlet);
        if let Some(shares) = self.split {
            let parts = [
                shares.test,
                shares.adapter_train,
                shares.prompts,
                shares.validation,
            ];
            if parts.iter().any(|p| !(0.0..=1.0).contains(p))
                || parts.iter().sum::<f64>() > 1.0 + 1e-9
            {
                return Err("`split` shares must lie in [0, 1] and sum to at most 1".into());
            }
        }
        let layout = sources[0].layout;
        let metric = self
            .metric
            .unwrap_or_else(|| Metric::default_for(template, layout));
        if !metric.fits(template, layout) {
            return Err(format!(
                "metric `{}` cannot score what template `{}` makes of layout `{}` (it takes `{}`)",
                metric.name(),
                template.name(),
                layout.name(),
                Metric::default_for(template, layout).name()
            ));
        }
        Ok(Task {
            metric,
            dataset: self.dataset.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            template,
            sources,
            shares: self.split,
            notes: self.notes.unwrap_or_default(),
        })
    }
}

/// The entries of a task file as JSON values: TOML's `[[task]]` tables, JSON's `{"task": [...]}` or
/// a bare array.
fn entries(path: &Path, text: &str) -> Result<Vec<serde_json::Value>> {
    let file_error = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg,
    };
    let value: serde_json::Value = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let table: toml::Table = toml::from_str(text).map_err(|e| file_error(e.to_string()))?;
            serde_json::to_value(table).map_err(|e| file_error(e.to_string()))?
        }
        Some("json") => {
            serde_json::from_str(text).map_err(|e| file_error(format!("invalid JSON: {e}")))?
        }
        _ => return Err(file_error("a task file ends in .toml or .json".into())),
    };
    let list = match value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(mut top) => {
            if let Some(key) = top.keys().find(|k| *k != "task") {
                return Err(file_error(format!(
                    "unknown top-level key `{key}` (tasks go in `task` entries)"
                )));
            }
            match top.remove("task") {
                Some(serde_json::Value::Array(list)) => list,
                Some(_) => return Err(file_error("`task` must be a list of tables".into())),
                None => Vec::new(),
            }
        }
        _ => return Err(file_error("expected a table of `task` entries".into())),
    };
    if list.is_empty() {
        return Err(file_error("defines no tasks".into()));
    }
    Ok(list)
}

/// Every task of a task file, validated; source paths resolved against the file's directory.
/// An error names the file and the entry (its position and name).
pub fn read_task_file(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).map_err(dnd_io::io_err::<Error>(path))?;
    let dir = std::fs::canonicalize(path)
        .map_err(dnd_io::io_err::<Error>(path))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    parse_tasks(path, &text, &dir)
}

/// The tasks of task file text; `path` names it in errors (and picks the format by its extension),
/// relative source paths are joined to `dir` (left relative, to the data root, when it is empty).
fn parse_tasks(path: &Path, text: &str, dir: &Path) -> Result<Vec<Task>> {
    let mut tasks: Vec<Task> = Vec::new();
    for (i, value) in entries(path, text)?.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let entry_error = |msg: String| Error::Entry {
            path: path.to_path_buf(),
            entry: i + 1,
            name: name.clone(),
            msg,
        };
        let entry: Entry = serde_json::from_value(value).map_err(|e| entry_error(e.to_string()))?;
        let task = entry.into_task(dir).map_err(&entry_error)?;
        if let Some(j) = tasks.iter().position(|t| t.name == task.name) {
            return Err(entry_error(format!(
                "duplicate task name (entry {} has it)",
                j + 1
            )));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// `tasks` as a TOML task file (what [`read_task_file`] reads back; relative paths stay relative).
pub fn to_toml(tasks: &[Task]) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        task: &'a [Task],
    }
    toml::to_string(&File { task: tasks }).expect("task definitions serialise")
}

/// The suites shipped with dnd, by name, with what each holds.
pub const SUITES: [(&str, &str); 3] = [
    (
        "commonsense",
        "the paper's eight common-sense reasoning tasks",
    ),
    ("builtin", "every built-in task"),
    (
        "universe",
        "every usable task of ../shared/data: T0 templates, BIG-Bench Hard, Gauntlet, arithmetic, code, built-ins",
    ),
];

/// The universe suite file (written by `dnd tasks --scan-universe`); paths relative to the data root.
pub const UNIVERSE_FILE: &str = include_str!("../suites/universe.toml");

/// The tasks of the suite `name`.
pub fn suite(name: &str) -> Result<Vec<Task>> {
    /// In the order the project's collections have always held them.
    const COMMONSENSE: [&str; 8] = [
        "arc_easy",
        "arc_challenge",
        "boolq",
        "hellaswag",
        "openbookqa",
        "piqa",
        "winogrande",
        "siqa",
    ];
    match name {
        "builtin" => Ok(builtin_tasks()),
        "commonsense" => COMMONSENSE.iter().map(|t| find_task(t)).collect(),
        "universe" => parse_tasks(
            Path::new("suites/universe.toml"),
            UNIVERSE_FILE,
            Path::new(""),
        ),
        _ => Err(Error::UnknownSuite(name.to_string())),
    }
}

/// Tasks by name: the built-in tasks, then those of task files. Names are unique across all of them.
#[derive(Debug, Clone)]
pub struct Catalog {
    tasks: Vec<Task>,
    origin: HashMap<String, String>,
    /// How many of `tasks` are built in (they come first).
    builtin: usize,
}

impl Catalog {
    /// The built-in tasks and those of `task_files`, in that order.
    pub fn new(task_files: &[PathBuf]) -> Result<Catalog> {
        let mut catalog = Catalog {
            tasks: Vec::new(),
            origin: HashMap::new(),
            builtin: 0,
        };
        catalog.add(builtin_tasks(), "the built-in tasks")?;
        catalog.builtin = catalog.tasks.len();
        for file in task_files {
            catalog.add(read_task_file(file)?, &file.display().to_string())?;
        }
        Ok(catalog)
    }

    /// Add tasks from `origin`; a name already present is an error naming both places.
    fn add(&mut self, tasks: Vec<Task>, origin: &str) -> Result<()> {
        for t in tasks {
            if let Some(first) = self.origin.get(&t.name) {
                return Err(Error::DuplicateTask {
                    name: t.name,
                    first: first.clone(),
                    second: origin.to_string(),
                });
            }
            self.origin.insert(t.name.clone(), origin.to_string());
            self.tasks.push(t);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Task> {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::UnknownTask(name.to_string()))
    }

    /// The named tasks, in the order given.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Task>> {
        names.iter().map(|n| self.get(n).cloned()).collect()
    }

    /// The tasks of the task files, in file order.
    pub fn file_tasks(&self) -> &[Task] {
        &self.tasks[self.builtin..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", "a b", "a\\b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("t0.ag_news-classify_2"));
    }

    #[test]
    fn suites_hold_their_tasks() {
        assert_eq!(suite("commonsense").unwrap().len(), 8);
        assert_eq!(suite("builtin").unwrap().len(), builtin_tasks().len());
        assert!(matches!(suite("nope"), Err(Error::UnknownSuite(_))));
    }
}
