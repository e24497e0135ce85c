//! All-or-nothing output files that never destroy what was there.
//!
//! Before any compute, [`Outputs::prepare`] resolves every output to the
//! file it points to (through symbolic links and hard links) and refuses
//! two outputs naming one file or an output naming an input; then it
//! creates each output's temporary file beside its target, which proves the
//! directory exists and is writable. After the compute, [`Outputs::commit`]
//! moves each existing target aside to a backup name, renames the
//! temporary file over it, and deletes the backups only once every output
//! is in place; if any step fails, every target gets its previous contents
//! back. Temporary files are named `.NAME.attn-partial-PID` and backups
//! `.NAME.attn-backup-PID`: a killed run leaves only such dot-files, which
//! nothing reads as results.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::npy::{self, FileError};
use super::npz;

/// The identity of a file: its device and inode when it exists (so hard
/// links and symbolic links compare equal), else its canonical directory
/// and name.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Path(PathBuf),
}

fn identity(path: &Path) -> Result<Identity, FileError> {
    #[cfg(unix)]
    if let Ok(m) = fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        return Ok(Identity::Inode(m.dev(), m.ino()));
    }
    let name =
        path.file_name().ok_or_else(|| FileError::new(path, "output path does not name a file"))?;
    let dir = parent(path);
    let dir = dir.canonicalize().map_err(|_| {
        FileError::new(path, format!("output directory {} does not exist", dir.display()))
    })?;
    Ok(Identity::Path(dir.join(name)))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn beside(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.attn-{what}-{}", std::process::id()))
}

/// The outputs of one run, from preparation to commit.
#[derive(Debug)]
pub struct Outputs {
    targets: Vec<PathBuf>,
    temps: Vec<PathBuf>,
    committed: bool,
}

impl Outputs {
    /// Checks `outputs` (flag, path) against each other and against
    /// `inputs` (flag, path), then creates their temporary files.
    pub fn prepare(
        outputs: &[(&str, &Path)],
        inputs: &[(&str, &Path)],
    ) -> Result<Outputs, FileError> {
        let mut seen: Vec<(&str, Identity)> = Vec::new();
        for (flag, path) in inputs {
            if let Ok(id) = identity(path) {
                seen.push((flag, id));
            }
        }
        let n_inputs = seen.len();
        for (flag, path) in outputs {
            if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
                return Err(FileError::new(path, "output path is a directory"));
            }
            let id = identity(path)?;
            if let Some((i, (other, _))) = seen.iter().enumerate().find(|(_, (_, s))| *s == id) {
                let what = if i < n_inputs { "input" } else { "output" };
                return Err(FileError::new(
                    path,
                    format!("{flag} names the same file as the {what} {other}"),
                ));
            }
            seen.push((flag, id));
        }
        let mut out = Outputs { targets: Vec::new(), temps: Vec::new(), committed: false };
        for (_, path) in outputs {
            let tmp = beside(path, "partial");
            // create_new: never clobber a file of that name
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| {
                FileError::new(path, format!("cannot write in {}: {e}", parent(path).display()))
            })?;
            out.targets.push(path.to_path_buf());
            out.temps.push(tmp);
        }
        Ok(out)
    }

    /// Writes output `i` (as float32 `.npy`) to its temporary file.
    pub fn write(&self, i: usize, shape: &[usize], data: &[f32]) -> Result<(), FileError> {
        npy::write_f32(&self.temps[i], shape, data)
            .map_err(|e| FileError::new(&self.targets[i], format!("cannot write: {e}")))
    }

    /// Writes output `i` as an `.npz` of float32 arrays `(name, shape,
    /// data)` ([`npz::write_f32`]) to its temporary file.
    pub fn write_npz(
        &self,
        i: usize,
        arrays: &[(&str, &[usize], &[f32])],
    ) -> Result<(), FileError> {
        npz::write_f32(&self.temps[i], arrays)
            .map_err(|e| FileError::new(&self.targets[i], format!("cannot write: {e}")))
    }

    /// Puts every written output in place, or none (see the module docs).
    pub fn commit(mut self) -> Result<(), FileError> {
        let mut done: Vec<(usize, Option<PathBuf>)> = Vec::new();
        let mut failure = None;
        for (i, (target, tmp)) in self.targets.iter().zip(&self.temps).enumerate() {
            let backup = if target.exists() {
                let b = beside(target, "backup");
                if let Err(e) = fs::rename(target, &b) {
                    failure = Some(FileError::new(target, format!("cannot replace: {e}")));
                    break;
                }
                Some(b)
            } else {
                None
            };
            if let Err(e) = fs::rename(tmp, target) {
                if let Some(b) = &backup {
                    let _ = fs::rename(b, target);
                }
                failure = Some(FileError::new(target, format!("cannot write: {e}")));
                break;
            }
            done.push((i, backup));
        }
        match failure {
            None => {
                for (_, b) in done.iter().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))) {
                    let _ = fs::remove_file(b);
                }
                self.committed = true;
                Ok(())
            }
            Some(e) => {
                // restore in reverse order: earlier targets get their old
                // contents (or disappear if they did not exist)
                for (i, backup) in done.into_iter().rev() {
                    match backup {
                        Some(b) => {
                            let _ = fs::rename(b, &self.targets[i]);
                        }
                        None => {
                            let _ = fs::remove_file(&self.targets[i]);
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

impl Drop for Outputs {
    /// Removes the temporary files of a run that did not commit.
    fn drop(&mut self) {
        if !self.committed {
            for t in &self.temps {
                let _ = fs::remove_file(t);
            }
        }
    }
}

/// An empty file for tests that need one.
#[cfg(test)]
fn touch(p: &Path, text: &str) {
    use std::fs::File;
    use std::io::Write;
    File::create(p).unwrap().write_all(text.as_bytes()).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_refused_and_nothing_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
        touch(&a, "old a");
        // two spellings of one file
        let a2 = dir.path().join(".").join("a.npy");
        let e = Outputs::prepare(&[("--out", &a), ("--lse", &a2)], &[]).unwrap_err();
        assert!(e.to_string().contains("--lse names the same file as the output --out"), "{e}");
        // a hard link to an input
        fs::hard_link(&a, &b).unwrap();
        let e = Outputs::prepare(&[("--out", &b)], &[("--q", &a)]).unwrap_err();
        assert!(e.to_string().contains("same file as the input --q"), "{e}");
        assert_eq!(fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no stray files");
    }

    #[test]
    fn a_failed_commit_restores_every_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
        touch(&a, "old a");
        let o = Outputs::prepare(&[("--out", &a), ("--lse", &b)], &[]).unwrap();
        o.write(0, &[1], &[1.0]).unwrap();
        o.write(1, &[1], &[2.0]).unwrap();
        // make the second rename fail: its temporary file disappears
        fs::remove_file(&o.temps[1]).unwrap();
        assert!(o.commit().is_err());
        assert_eq!(fs::read_to_string(&a).unwrap(), "old a");
        assert!(!b.exists());
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.npy")]);
    }

    #[test]
    fn a_dropped_run_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        touch(&a, "old a");
        drop(Outputs::prepare(&[("--out", &a)], &[]).unwrap());
        assert_eq!(fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = Outputs::prepare(&[("--out", &dir.path().join("no/such/dir/o.npy"))], &[]);
        assert!(e.unwrap_err().to_string().contains("does not exist"));
    }
}
