//! Import errors. Every error names the file, and a record error also names where in it, so a user
//! can open the file at the bad record. Loading is all-or-nothing: the first bad record fails the
//! whole file, so a task is never silently scored on half its data.

use std::fmt;
use std::path::PathBuf;

/// Where a bad record sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// 1-based line of a line-oriented file (JSONL, the HellaSwag text layout).
    Line(usize),
    /// 1-based position of a record in a JSON array file (LLM-Adapters).
    Record(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Record(n) => write!(f, "record {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    /// The file as a whole is unusable (not JSON, not UTF-8, truncated layout).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// One record is malformed; the whole file is rejected.
    #[error("{}: {at}: {msg}", path.display())]
    Record { path: PathBuf, at: Loc, msg: String },
    /// A task asked for a layout its template cannot read.
    #[error("{}: template {template} cannot read layout {layout}", path.display())]
    Unsupported {
        path: PathBuf,
        template: String,
        layout: String,
    },
    #[error("unknown task `{0}` (not built in, nor in a --task-file)")]
    UnknownTask(String),
    #[error("unknown suite `{0}` (`dnd tasks --suites` lists them)")]
    UnknownSuite(String),
    /// A task file entry that does not define a task.
    #[error("{}: task entry {entry} (`{name}`): {msg}", path.display())]
    Entry {
        path: PathBuf,
        entry: usize,
        name: String,
        msg: String,
    },
    #[error("task `{name}` is defined twice: in {first} and in {second}")]
    DuplicateTask {
        name: String,
        first: String,
        second: String,
    },
    /// A source file differs from the one a collection was made from.
    #[error("task `{task}`: {} changed since it was collected (sha256 {now}, recorded {recorded})", path.display())]
    SourceChanged {
        task: String,
        path: PathBuf,
        recorded: String,
        now: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
