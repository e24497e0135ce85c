//! Results files on disk: where the workspace is, writing a run
//! (`results/runs/<stamp>-<machine>-<profile>.json`, and `latest.json` when
//! published) and reading one back (any schema up to [`SCHEMA`]).

use super::row::{RunFile, SCHEMA};
use std::path::{Path, PathBuf};

/// The workspace root: the nearest ancestor of the current directory with
/// a `Cargo.toml` declaring `[workspace]`, else the one this crate was
/// built in.
pub fn workspace_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let toml = dir.join("Cargo.toml");
            if std::fs::read_to_string(&toml).is_ok_and(|s| s.contains("[workspace]")) {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes `results/runs/<stamp>-<machine>-<profile>.json` and, when `publish`,
/// `results/latest.json`. Returns the paths written.
pub fn write_run(
    run: &RunFile,
    results_dir: &Path,
    publish: bool,
) -> std::io::Result<Vec<PathBuf>> {
    let runs = results_dir.join("runs");
    std::fs::create_dir_all(&runs)?;
    let stamp = run.started_utc.replace([' ', ':', '-'], "").replace("UTC", "Z");
    let path = runs.join(format!("{stamp}-{}-{}.json", run.machine.slug(), run.profile));
    let text = serde_json::to_string_pretty(run).map_err(std::io::Error::other)? + "\n";
    std::fs::write(&path, &text)?;
    let mut paths = vec![path];
    if publish {
        let latest = results_dir.join("latest.json");
        std::fs::write(&latest, &text)?;
        paths.push(latest);
    }
    Ok(paths)
}

/// Reads a results file (schema 1 or 2, see [`SCHEMA`]).
pub fn load(path: &Path) -> Result<RunFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let run: RunFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a results file: {e}", path.display()))?;
    if run.schema > SCHEMA {
        return Err(format!(
            "{}: schema {} is newer than this attn's ({}): rebuild attn",
            path.display(),
            run.schema,
            SCHEMA
        ));
    }
    Ok(run)
}
