//! File-system helpers every stage crate shares: an I/O error that names its file, and the atomic
//! write behind every JSON, Markdown and text file the pipeline writes.

use std::path::{Path, PathBuf};

/// An I/O error and the file it happened on; shows as `<path>: <error>`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
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

/// Write `bytes` to `path` through a temporary file beside it (`.<name>.tmp`) and a rename, so a
/// killed run never leaves a half-written file that a resumed one would trust. The directory must
/// exist. The error names the temporary file if writing failed, `path` if the rename did.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), PathIoError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io_err::<PathIoError>(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_a_temporary_file_and_names_the_file_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, "1").unwrap();
        write_atomic(&path, b"22").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "22");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        let missing = dir.path().join("absent/b.json");
        let e = write_atomic(&missing, "x").unwrap_err();
        assert_eq!(e.path, dir.path().join("absent/.b.json.tmp"));
        assert_eq!(e.to_string(), format!("{}: {}", e.path.display(), e.source));
    }
}
