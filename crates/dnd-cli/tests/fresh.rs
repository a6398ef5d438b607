//! `dnd collect --fresh` deletes a collection before collecting it again: with the job-unit options it
//! would delete every finished unit of a plan, so it is refused before anything is touched.

use std::process::Command;

#[test]
fn fresh_with_job_unit_options_is_refused_and_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("collection");
    std::fs::create_dir_all(dir.join("units")).unwrap();
    std::fs::write(dir.join("units/alpha.json"), "{}").unwrap();
    for extra in [
        &["--merge"][..],
        &["--unit", "0"],
        &["--emit-slurm", "x.sbatch"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dnd"))
            .current_dir(tmp.path())
            .args(["collect", "--fresh", "--dir"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(
            err.contains("--fresh cannot be combined"),
            "{extra:?}: {err}"
        );
        assert!(dir.join("units/alpha.json").is_file(), "{extra:?} deleted");
        assert!(!tmp.path().join("x.sbatch").exists());
    }
}
