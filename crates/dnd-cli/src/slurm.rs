//! Job units: which units an array element (or a local worker) runs, the `sbatch` script of a plan,
//! and local worker processes. dnd holds no scheduler code beyond this: reading the element's index,
//! and writing a script for the user to submit.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The job-unit options of a command whose work splits into independent units (`dnd collect`: one
/// task each; `dnd eval`: one (adapter, task) run each).
#[derive(clap::Args)]
pub struct UnitArgs {
    /// Run only job unit I of this plan (in plan order, from 0), for a scheduler's array job: `env`
    /// reads SLURM_ARRAY_TASK_ID, else JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs). Leaves the
    /// summary to --merge. A unit already done is skipped.
    #[arg(long, conflicts_with_all = ["merge", "emit_slurm"])]
    pub unit: Option<String>,
    /// With --unit: each array element runs this many consecutive units (element i: units i*K ..).
    #[arg(long, default_value_t = 1)]
    pub units_per_job: usize,
    /// Build the summary from the finished units of this plan; names the units not done.
    #[arg(long, conflicts_with = "emit_slurm")]
    pub merge: bool,
    /// Write a Slurm batch script running this plan as a job array (one element per --units-per-job
    /// units) to FILE, and print how to submit and merge it. Nothing is run.
    #[arg(long, value_name = "FILE")]
    pub emit_slurm: Option<PathBuf>,
    /// Slurm settings of --emit-slurm: most array elements at once, memory and CPUs per element, and
    /// the log directory.
    #[arg(long, default_value_t = 8)]
    pub slurm_throttle: usize,
    #[arg(long, default_value = "4G")]
    pub slurm_mem: String,
    #[arg(long, default_value_t = 2)]
    pub slurm_cpus: usize,
    #[arg(long, default_value = "slurm-logs")]
    pub slurm_logs: PathBuf,
    /// Run the plan's units in N worker processes on this machine, one thread each (worker i: units
    /// i, i+N, ...), then merge. Small models use two cores poorly: on 2 cores two single-threaded
    /// workers collect twice the tasks per hour of one run on both (results/collect/README.md).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["unit", "merge", "emit_slurm"])]
    pub jobs: usize,
    /// Set by --jobs for the worker processes it starts: the worker's number.
    #[arg(long, hide = true, requires = "jobs")]
    pub worker: Option<usize>,
}

impl UnitArgs {
    /// The units this array element (--unit) or local worker (--worker) runs; `None` for neither
    /// (run the whole plan).
    pub fn selected(&self, units: usize) -> Result<Option<Vec<usize>>> {
        if let Some(w) = self.worker {
            if w >= self.jobs {
                bail!("--worker {w}: there are {} workers", self.jobs);
            }
            return Ok(Some((w..units).step_by(self.jobs).collect()));
        }
        let Some(unit) = &self.unit else {
            return Ok(None);
        };
        if self.units_per_job == 0 {
            bail!("--units-per-job must be at least 1");
        }
        let first = unit_index(unit)? * self.units_per_job;
        let range = first..(first + self.units_per_job).min(units);
        if range.is_empty() {
            bail!("unit {first}: the plan has {units} units");
        }
        Ok(Some(range.collect()))
    }

    /// Whether this process should start --jobs workers (and merge after them).
    pub fn starts_workers(&self) -> bool {
        self.jobs > 1 && self.worker.is_none()
    }
}

/// Run this same command in `jobs` worker processes of one thread each and wait for all of them. A
/// worker that fails does not stop the others (their units are independent); the error names it, and
/// rerunning the command resumes every unfinished unit.
pub fn run_workers(jobs: usize) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the dnd binary")?;
    let mut children = Vec::new();
    for w in 0..jobs {
        let mut cmd = std::process::Command::new(&exe);
        // --fresh was done by this process: a worker repeating it would delete the others' work.
        cmd.args(plan_args().into_iter().filter(|a| a != "--fresh"))
            .args(["--worker", &w.to_string()])
            .env("RAYON_NUM_THREADS", "1")
            .env("CANDLE_NUM_THREADS", "1");
        // SAFETY: prctl only sets a flag on the child; a worker must not outlive a killed parent
        // (a rerun would start a second worker on the same units).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        children.push(cmd.spawn().context("starting a worker process")?);
    }
    let mut failed = Vec::new();
    for (w, mut child) in children.into_iter().enumerate() {
        let status = child.wait().context("waiting for a worker process")?;
        if !status.success() {
            failed.push(format!("worker {w} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} failed (see its output above); rerun the same command to resume",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The unit index from `--unit`: a number, or `env` for the scheduler's array index.
pub fn unit_index(arg: &str) -> Result<usize> {
    if arg != "env" {
        return arg
            .parse()
            .with_context(|| format!("--unit {arg}: a unit number or `env`"));
    }
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .parse()
                .with_context(|| format!("{var}={v}: not a unit number"));
        }
    }
    bail!("--unit env: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set")
}

/// Write the `sbatch` script running this same `dnd <subcommand>` as an array over `units` units.
pub fn emit(script: &Path, a: &UnitArgs, subcommand: &str, units: usize) -> Result<()> {
    if a.units_per_job == 0 {
        bail!("--units-per-job must be at least 1");
    }
    let elements = units.div_ceil(a.units_per_job);
    let dnd = std::env::current_exe().context("locating the dnd binary")?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut args = vec![dnd.display().to_string()];
    args.extend(plan_args());
    args.extend(["--unit".into(), "env".into()]);
    args.extend(["--units-per-job".into(), a.units_per_job.to_string()]);
    let command = args.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" ");
    let logs = cwd.join(&a.slurm_logs);
    let text = format!(
        "#!/bin/bash\n\
         #SBATCH --job-name=dnd-{subcommand}\n\
         #SBATCH --array=0-{last}%{throttle}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --mem={mem}\n\
         #SBATCH --output={logs}/%A_%a.out\n\
         #SBATCH --requeue\n\
         # {units} units ({per} per array element), written by `dnd {subcommand} --emit-slurm`. A shared\n\
         # file system is assumed: the output directory, the data and the model cache must be at the\n\
         # same paths on every node. A unit already done is skipped, so requeued or resubmitted elements\n\
         # are safe. When every element has finished: the same dnd {subcommand} command with --merge.\n\
         set -euo pipefail\n\
         mkdir -p {logs_q}\n\
         cd {cwd}\n\
         export CANDLE_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cpus}}}\n\
         {command}\n",
        last = elements - 1,
        throttle = a.slurm_throttle.max(1),
        cpus = a.slurm_cpus,
        mem = a.slurm_mem,
        logs = logs.display(),
        logs_q = quote(&logs.display().to_string()),
        per = a.units_per_job,
        cwd = quote(&cwd.display().to_string()),
    );
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    dnd_io::write_atomic(script, text)?;
    println!(
        "{}: {elements} array elements for {units} units\n  submit: sbatch {}\n  then:   {} --merge",
        script.display(),
        script.display(),
        std::iter::once(dnd.display().to_string())
            .chain(plan_args())
            .map(|s| quote(&s))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// This command's own arguments (from `collect` on) without the options that only shape the script.
fn plan_args() -> Vec<String> {
    const SCRIPT_ONLY: [&str; 6] = [
        "--emit-slurm",
        "--slurm-throttle",
        "--slurm-mem",
        "--slurm-cpus",
        "--slurm-logs",
        "--units-per-job",
    ];
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or("");
        if SCRIPT_ONLY.contains(&name) {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        }
        out.push(arg);
    }
    out
}

/// A shell word: as is when it is plainly safe, else single-quoted.
fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
