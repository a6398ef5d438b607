//! The Python reference scripts of `scripts/reference/`, run in the reference virtualenv: each prints
//! its measurements as one JSON line last.

use crate::{BenchError, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the reference side runs: the interpreter and the directory of the scripts. The directory is
/// given at run time, not compiled in, so a `dnd` binary built in another checkout, or copied away from
/// its source tree, still finds the scripts of the checkout it runs in.
#[derive(Clone, Debug)]
pub struct Reference {
    /// Python with the packages the scripts import (scripts/reference/README.md).
    pub python: PathBuf,
    /// The scripts: `scripts/reference` of a checkout.
    pub scripts: PathBuf,
}

impl Reference {
    /// The path of the script `name`, or an error naming it if it is not there. The benchmarks look
    /// their scripts up before measuring dnd, so a wrong directory fails in seconds, not after the run.
    pub(crate) fn script(&self, name: &str) -> Result<PathBuf> {
        let path = self.scripts.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BenchError::MissingScript(path))
        }
    }

    /// Run the script `name` with `args` and read the JSON line it prints last as `T`.
    pub(crate) fn run<T: DeserializeOwned>(&self, name: &str, args: &[String]) -> Result<T> {
        let script = self.script(name)?;
        tracing::info!("running the reference {}", script.display());
        let out = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .env("TQDM_DISABLE", "1")
            .output()
            .map_err(|source| BenchError::Spawn {
                program: self.python.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Failed {
                what: script.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        last_json_line(&script, &String::from_utf8_lossy(&out.stdout))
    }
}

/// The last line of `stdout` that starts with `{`, as `T`: libraries may print before it.
fn last_json_line<T: DeserializeOwned>(script: &Path, stdout: &str) -> Result<T> {
    let bad = |reason: String| BenchError::ReferenceOutput {
        script: script.to_path_buf(),
        reason,
    };
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| bad("no JSON line".into()))?;
    serde_json::from_str(line).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Line {
        tok_s: f64,
    }

    #[test]
    fn a_missing_script_is_named_with_the_flag_that_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bench_torch.py"), "").unwrap();
        let r = Reference {
            python: "python3".into(),
            scripts: dir.path().into(),
        };
        assert_eq!(
            r.script("bench_torch.py").unwrap(),
            dir.path().join("bench_torch.py")
        );
        let e = r.script("bench_torch_sft.py").unwrap_err();
        let missing = dir.path().join("bench_torch_sft.py");
        assert!(matches!(&e, BenchError::MissingScript(p) if *p == missing));
        let msg = e.to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(
            msg.contains("--scripts") && msg.contains("DND_REFERENCE_SCRIPTS"),
            "{msg}"
        );
        let e = r.run::<Line>("bench_llamacpp.py", &[]).unwrap_err();
        assert!(matches!(e, BenchError::MissingScript(_)), "looked up first");
    }

    #[test]
    fn the_last_json_line_is_the_result() {
        let script = Path::new("s.py");
        let out = "loading...\n{\"tok_s\": 1.0}\nwarning: x\n{\"tok_s\": 2.5}\ndone\n";
        let line: Line = last_json_line(script, out).unwrap();
        assert_eq!(line, Line { tok_s: 2.5 });
        let e = last_json_line::<Line>(script, "no json here\n").unwrap_err();
        assert!(e.to_string().contains("no JSON line"), "{e}");
        let e = last_json_line::<Line>(script, "{\"other\": 1}\n").unwrap_err();
        assert!(e.to_string().contains("tok_s"), "{e}");
    }

    #[test]
    fn a_script_that_fails_reports_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fail.sh"), "echo broken >&2; exit 3\n").unwrap();
        std::fs::write(dir.path().join("ok.sh"), "echo '{\"tok_s\": 4}'\n").unwrap();
        let r = Reference {
            python: "sh".into(),
            scripts: dir.path().into(),
        };
        let e = r.run::<Line>("fail.sh", &[]).unwrap_err();
        assert!(matches!(&e, BenchError::Failed { stderr, .. } if stderr.contains("broken")));
        assert_eq!(r.run::<Line>("ok.sh", &[]).unwrap(), Line { tok_s: 4.0 });
    }
}
