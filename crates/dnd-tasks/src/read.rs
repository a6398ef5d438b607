//! Reading source files: transparent bzip2/gzip, JSONL and JSON-array record iteration with
//! 1-based locations, and the plain prompts layout users bring.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Loc, Result};
use crate::example::Example;

/// A file being imported: its path for errors, its name (path relative to the data root) for ids.
pub(crate) struct Src<'a> {
    pub path: &'a Path,
    pub name: &'a str,
}

impl Src<'_> {
    pub fn record_error(&self, at: Loc, msg: impl Into<String>) -> Error {
        Error::Record {
            path: self.path.to_path_buf(),
            at,
            msg: msg.into(),
        }
    }

    pub fn file_error(&self, msg: impl Into<String>) -> Error {
        Error::File {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// Give a rendered example its id, or turn a renderer's complaint into a located error.
    pub fn finish(&self, at: Loc, rendered: Result<Example, String>) -> Result<Example> {
        let mut ex = rendered.map_err(|msg| self.record_error(at, msg))?;
        let n = match at {
            Loc::Line(n) | Loc::Record(n) => n,
        };
        ex.id = format!("{}:{n}", self.name);
        Ok(ex)
    }
}

/// The whole file as text, decompressed when it ends in `.bz2` or `.gz`.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).map_err(dnd_io::io_err::<Error>(path))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut bytes = Vec::new();
    let decoded = match ext {
        "bz2" => bzip2::read::BzDecoder::new(raw.as_slice()).read_to_end(&mut bytes),
        "gz" => flate2::read::MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut bytes),
        _ => {
            bytes = raw;
            Ok(0)
        }
    };
    let file_error = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg,
    };
    decoded.map_err(|e| file_error(format!("cannot decompress: {e}")))?;
    String::from_utf8(bytes).map_err(|e| file_error(format!("not UTF-8: {e}")))
}

/// One record per non-blank line; the first bad line fails the file.
pub(crate) fn jsonl<T: DeserializeOwned>(
    src: &Src<'_>,
    convert: impl Fn(T) -> Result<Example, String>,
) -> Result<Vec<Example>> {
    let text = read_text(src.path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = Loc::Line(i + 1);
        let record = serde_json::from_str::<T>(line).map_err(|e| format!("bad record: {e}"));
        out.push(src.finish(at, record.and_then(&convert))?);
    }
    Ok(out)
}

/// A JSON array of records (LLM-Adapters); the first bad record fails the file.
pub(crate) fn json_array<T: DeserializeOwned>(
    src: &Src<'_>,
    convert: impl Fn(T) -> Result<Example, String>,
) -> Result<Vec<Example>> {
    let values: Vec<serde_json::Value> = serde_json::from_str(&read_text(src.path)?)
        .map_err(|e| src.file_error(format!("not a JSON array of records: {e}")))?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let record = T::deserialize(v).map_err(|e| format!("bad record: {e}"));
            src.finish(Loc::Record(i + 1), record.and_then(&convert))
        })
        .collect()
}

/// Unlabeled prompts a user brings to condition DnD on their own task: a JSONL whose lines are
/// JSON strings or objects with a `prompt`, `text`, `question` or `instruction` field (first found).
pub fn load_prompts(path: &Path) -> Result<Vec<String>> {
    const FIELDS: [&str; 4] = ["prompt", "text", "question", "instruction"];
    let text = read_text(path)?;
    let src = Src { path, name: "" };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| src.record_error(Loc::Line(i + 1), msg);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("bad record: {e}")))?;
        let prompt = match &value {
            serde_json::Value::String(s) => Some(s.as_str()),
            serde_json::Value::Object(map) => FIELDS.iter().find_map(|f| map.get(*f)?.as_str()),
            _ => None,
        }
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            err(format!(
                "expected a non-empty string or an object with one of {FIELDS:?}"
            ))
        })?;
        out.push(prompt.to_string());
    }
    Ok(out)
}
