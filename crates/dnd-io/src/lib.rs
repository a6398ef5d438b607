//! The file layer every stage of dnd shares, so each promise about files is kept in one place:
//!
//! - an I/O error always names its file ([`PathIoError`]), a malformed JSON file too ([`JsonError`]);
//! - whatever the pipeline writes (JSON, Markdown, safetensors, PNG, whole adapter directories) appears
//!   under its final name complete or not at all: it is written under a temporary name beside its
//!   destination and renamed, so a killed run never leaves a half-written file that a resumed run would
//!   trust ([`write_atomic`], [`write_atomic_with`], [`replace_dir`]).
//!
//! It also holds [`sha256_file`], the content hash stages pin their inputs with, and [`peak_rss_mb`], the
//! one process measurement several stages record.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("point.json");
//! dnd_io::write_json::<_, dnd_io::PathIoError>(&path, &[1, 2])?;
//! let back: Vec<u32> = dnd_io::read_json::<_, dnd_io::FileError>(&path)?;
//! assert_eq!(back, [1, 2]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An I/O error and the file it happened on; shows as `<path>: <error>`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIoError {
    /// The file or directory the operation was on.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: std::io::Error,
}

/// A file that was read but is not the JSON its reader expects; shows as `<path>: invalid JSON: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: invalid JSON: {reason}")]
pub struct JsonError {
    /// The file.
    pub path: PathBuf,
    /// serde_json's message: the line, column and what was wrong there.
    pub reason: String,
}

/// Either failure of [`read_json`], for callers with no error type of their own.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// The text is not the expected JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, PathIoError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(io_err::<PathIoError>(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err::<PathIoError>(path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// For `map_err`: an I/O error on `path`, as any error type that takes a [`PathIoError`].
pub fn io_err<E: From<PathIoError>>(path: &Path) -> impl FnOnce(std::io::Error) -> E + '_ {
    move |source| {
        PathIoError {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }
}

/// A fresh temporary name beside `path`: hidden, unique to this process and call (two writers of one
/// destination never share a temporary file), and ending in `path`'s own file name, so a writer that
/// picks the format from the extension (PNG, safetensors) sees the right one.
pub fn temp_path(path: &Path) -> PathBuf {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".tmp-{}-{serial}-{name}", std::process::id()))
}

/// Whether `path` is a temporary name: one of [`temp_path`]'s, or the `tempfile` crate's default
/// (`.tmp` and six random characters), which libraries we call use for their own atomic writes
/// (safetensors 0.8 saves through one beside the path it is given). A writer's unfinished file, or one
/// left by a killed run, which a reader listing a directory must pass over.
pub fn is_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
}

/// Remove the temporary files and directories ([`is_temp`]) directly in `dir`: what a writer killed
/// mid-write left behind. Only for a directory no other process writes to at the same time (a run's
/// own directory, before it resumes). A missing `dir` has nothing to remove.
pub fn remove_temps(dir: &Path) -> Result<(), PathIoError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let p = e.map_err(io_err::<PathIoError>(dir))?.path();
        if !is_temp(&p) {
            continue;
        }
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.map_err(io_err::<PathIoError>(&p))?;
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file beside it and a rename, creating missing parent
/// directories. The error names the directory or temporary file if writing failed, `path` if the
/// rename did.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), PathIoError> {
    write_atomic_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(io_err::<PathIoError>(tmp))
    })
}

/// Let `write` create the file at the temporary path it is given (a library that writes to a path
/// itself: safetensors, a PNG encoder), then rename it to `path`. Missing parent directories are
/// created. If `write` fails, its error is returned and the temporary file removed.
pub fn write_atomic_with<E: From<PathIoError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    create_parent(path)?;
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Create the directory `path` will live in, if it has one and it is missing.
fn create_parent(path: &Path) -> Result<(), PathIoError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(io_err(dir)),
        None => Ok(()),
    }
}

/// Build the directory `out` through `fill`, which gets an empty temporary directory beside it, then
/// put it in place of `out` (removing an older one): a directory that exists under its final name is
/// complete. Missing parent directories are created. If `fill` fails, its error is returned and the
/// temporary directory removed.
pub fn replace_dir<E: From<PathIoError>>(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    create_parent(out)?;
    let tmp = temp_path(out);
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))
}

/// Read `path` as JSON into `T`; the error names the file, and for bad JSON the line and column.
pub fn read_json<T, E>(path: &Path) -> Result<T, E>
where
    T: DeserializeOwned,
    E: From<PathIoError> + From<JsonError>,
{
    let text = std::fs::read_to_string(path).map_err(io_err::<PathIoError>(path))?;
    serde_json::from_str(&text).map_err(|e| {
        JsonError {
            path: path.into(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// `value` as pretty-printed JSON, the form of every JSON file dnd writes.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serialising fails only for maps with non-string keys or a failing Serialize impl; dnd's
    // records are plain structs, maps keyed by strings and numbers.
    serde_json::to_string_pretty(value).expect("dnd's records serialise to JSON")
}

/// Write `value` to `path` as pretty-printed JSON, atomically ([`write_atomic`]).
pub fn write_json<T: Serialize + ?Sized, E: From<PathIoError>>(
    path: &Path,
    value: &T,
) -> Result<(), E> {
    Ok(write_atomic(path, to_json(value))?)
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`; 0 where it cannot be read).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_through_a_temporary_file_and_names_the_file_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, "1").unwrap();
        write_atomic(&path, b"22").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "22");
        assert_eq!(names(dir.path()), ["a.json"], "no temporary file left");
        let nested = dir.path().join("new/b.json");
        write_atomic(&nested, "x").unwrap();
        assert_eq!(std::fs::read_to_string(&nested).unwrap(), "x");
        let blocked = path.join("c.json"); // a.json is a file, not a directory
        let e = write_atomic(&blocked, "x").unwrap_err();
        assert_eq!(e.path, path);
        assert_eq!(e.to_string(), format!("{}: {}", e.path.display(), e.source));
    }

    #[test]
    fn temporary_names_are_unique_and_keep_the_extension() {
        let p = Path::new("/x/adapter.safetensors");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        assert!(is_temp(&a) && !is_temp(p));
        assert_eq!(a.extension().unwrap(), "safetensors");
        assert!(a.file_name().unwrap().to_string_lossy().starts_with('.'));
    }

    #[test]
    fn leftovers_of_killed_writers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("manifest.json");
        std::fs::write(&keep, "{}").unwrap();
        std::fs::write(temp_path(&keep), "").unwrap();
        // safetensors' own temporary file, left by a kill during a save.
        std::fs::write(dir.path().join(".tmpXFwIuP"), "").unwrap();
        std::fs::create_dir(temp_path(&dir.path().join("step-0003"))).unwrap();
        std::fs::create_dir(dir.path().join("checkpoints")).unwrap();
        remove_temps(dir.path()).unwrap();
        assert_eq!(names(dir.path()), ["checkpoints", "manifest.json"]);
        remove_temps(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn a_failed_callback_leaves_neither_file_nor_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let r: Result<(), PathIoError> = write_atomic_with(&path, |tmp| {
            std::fs::write(tmp, "half").unwrap();
            Err(io_err::<PathIoError>(tmp)(std::io::Error::other(
                "disk full",
            )))
        });
        assert!(r.unwrap_err().to_string().contains("disk full"));
        assert!(names(dir.path()).is_empty());
        write_atomic_with::<PathIoError>(&path, |tmp| {
            std::fs::write(tmp, "whole").map_err(io_err(tmp))
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
    }

    #[test]
    fn a_directory_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let fill = |files: &'static [&'static str]| {
            move |tmp: &Path| -> Result<(), PathIoError> {
                for f in files {
                    std::fs::write(tmp.join(f), f).map_err(io_err(tmp))?;
                }
                Ok(())
            }
        };
        replace_dir(&out, fill(&["a", "b"])).unwrap();
        let nested = dir.path().join("new/adapter");
        replace_dir(&nested, fill(&["n"])).unwrap();
        assert_eq!(names(&nested), ["n"], "missing parents are created");
        std::fs::remove_dir_all(dir.path().join("new")).unwrap();
        assert_eq!(names(&out), ["a", "b"]);
        replace_dir(&out, fill(&["c"])).unwrap();
        assert_eq!(names(&out), ["c"], "the older directory is gone");
        let failed: Result<(), PathIoError> = replace_dir(&out, |tmp| {
            std::fs::write(tmp.join("d"), "d").unwrap();
            Err(io_err::<PathIoError>(tmp)(std::io::Error::other("killed")))
        });
        assert!(failed.is_err());
        assert_eq!(names(&out), ["c"], "a failed fill leaves the old directory");
        assert_eq!(names(dir.path()), ["adapter"], "and no temporary directory");
    }

    #[test]
    fn json_round_trips_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        write_json::<_, PathIoError>(&path, &vec![1.5, 2.0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            to_json(&[1.5, 2.0])
        );
        let back: Vec<f64> = read_json::<_, FileError>(&path).unwrap();
        assert_eq!(back, [1.5, 2.0]);
        std::fs::write(&path, "[1, oops]").unwrap();
        let e = read_json::<Vec<f64>, FileError>(&path).unwrap_err();
        assert!(matches!(e, FileError::Json(_)));
        assert!(e.to_string().starts_with(&path.display().to_string()));
        assert!(e.to_string().contains("line 1"), "{e}");
        let absent = dir.path().join("absent.json");
        let e = read_json::<Vec<f64>, FileError>(&absent).unwrap_err();
        assert!(matches!(e, FileError::Io(ref p) if p.path == absent));
    }

    #[test]
    fn peak_rss_is_positive_on_linux() {
        assert!(peak_rss_mb() > 0.0);
    }
}
