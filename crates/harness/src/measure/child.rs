//! The child-process protocol: the sweep measures each configuration in a
//! fresh process (its own executable re-executed with [`CHILD_ENV`] set
//! to a JSON [`ChildRequest`]), which prints its [`Row`] as one JSON line.
//! Peak RSS is then that of one configuration, and a crash or an
//! out-of-memory kill costs one row, not the sweep.

use super::{MeasureOpts, measure};
use crate::config::Config;
use crate::results::Row;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

/// Environment variable that turns a re-executed bench binary into a
/// one-configuration child (its value: a JSON [`ChildRequest`]).
pub const CHILD_ENV: &str = "ATTNLAB_HARNESS_CHILD";

/// What a child process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRequest {
    /// The configuration.
    pub config: Config,
    /// How to time it.
    pub opts: MeasureOpts,
}

/// In a binary that may be re-executed as a child (the sweep's bench
/// binary, which installs the counting allocator): if
/// [`CHILD_ENV`] is set, measures its configuration, prints the row as one
/// JSON line on stdout and returns the exit code; otherwise `None`.
pub fn child_main_if_requested() -> Option<ExitCode> {
    let req = std::env::var(CHILD_ENV).ok()?;
    let req: ChildRequest = match serde_json::from_str(&req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("harness child: bad request: {e}");
            return Some(ExitCode::from(2));
        }
    };
    let row = measure(&req.config, &req.opts);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(&row).expect("rows serialize"));
    let _ = out.flush();
    Some(ExitCode::SUCCESS)
}

/// Runs `cfg` in a fresh process: `exe` (default: this executable)
/// re-executed with [`CHILD_ENV`]. A crash or a kill (e.g. out of memory)
/// becomes an error row.
pub fn run_child(exe: Option<&Path>, cfg: &Config, opts: &MeasureOpts) -> Row {
    let exe = match exe.map(Path::to_path_buf).or_else(|| std::env::current_exe().ok()) {
        Some(e) => e,
        None => return Row::error(cfg, "cannot find the current executable"),
    };
    let req = ChildRequest { config: cfg.clone(), opts: opts.clone() };
    let out = Command::new(&exe)
        .env(CHILD_ENV, serde_json::to_string(&req).expect("requests serialize"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Row::error(cfg, format!("cannot start {}: {e}", exe.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{'))
        && let Ok(row) = serde_json::from_str::<Row>(line)
    {
        return row;
    }
    let why = match out.status.code() {
        Some(c) => format!("child process exited with status {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match out.status.signal() {
                Some(9) => "child process killed (signal 9: out of memory?)".to_string(),
                Some(s) => format!("child process killed by signal {s}"),
                None => "child process failed".to_string(),
            }
        }
    };
    Row::error(cfg, why)
}
