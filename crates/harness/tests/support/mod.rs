//! Helpers shared by the `attn` command-line tests: running the binary,
//! writing and reading `.npy` files, scratch directories, error checks.

#![allow(dead_code)]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attnlab::{AttnShape, Element, Layout};
use npyz::{Order, WriterBuilder};
use rand::{RngExt, SeedableRng, rngs::StdRng};

pub fn attn() -> Command {
    // the instruction-set warning (baseline CI builds) would add a line
    // to the one-line errors checked below; it has its own test
    let mut c = Command::new(env!("CARGO_BIN_EXE_attn"));
    c.env("ATTNLAB_NO_ISA_WARNING", "1");
    c
}

/// Writes a C- or Fortran-order `.npy` of `T`'s default dtype.
pub fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
    order: Order,
) {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .order(order)
        .writer(BufWriter::new(File::create(path).unwrap()))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// Reads a float32 `.npy` written by `attn run`: (shape, data).
pub fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
    assert_eq!(npy.dtype().descr(), "'<f4'", "{}", path.display());
    assert_eq!(npy.order(), Order::C);
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

pub fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// Paths of one run's files in a scratch directory.
pub struct Files {
    _dir: tempfile::TempDir,
    pub q: PathBuf,
    pub k: PathBuf,
    pub v: PathBuf,
    pub out: PathBuf,
    pub lse: PathBuf,
}

impl Files {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        Files {
            q: p("q.npy"),
            k: p("k.npy"),
            v: p("v.npy"),
            out: p("o.npy"),
            lse: p("lse.npy"),
            _dir: dir,
        }
    }
    /// Writes Q, K, V of `shape` in `layout` and returns them (memory order).
    pub fn write<T: npyz::AutoSerialize + Element>(
        &self,
        shape: &AttnShape,
        layout: Layout,
        seed: u64,
    ) -> [Vec<T>; 3] {
        let mut rng = StdRng::seed_from_u64(seed);
        let dims = [shape.q_dims(), shape.k_dims(), shape.v_dims()];
        let data = dims.map(|d| {
            random(&mut rng, d.iter().product()).into_iter().map(T::from_f32).collect::<Vec<T>>()
        });
        for ((path, d), x) in [&self.q, &self.k, &self.v].into_iter().zip(dims).zip(&data) {
            write_npy(path, &layout.memory_dims(d), x, Order::C);
        }
        data
    }
    /// `attn run` on these files with extra flags.
    pub fn run(&self, extra: &[&str]) -> Output {
        attn()
            .arg("run")
            .args(["--q".as_ref(), self.q.as_os_str()])
            .args(["--k".as_ref(), self.k.as_os_str()])
            .args(["--v".as_ref(), self.v.as_os_str()])
            .args(["--out".as_ref(), self.out.as_os_str()])
            .args(["--lse".as_ref(), self.lse.as_os_str()])
            .args(extra)
            .output()
            .unwrap()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs with `extra` flags and checks the failure; returns stderr.
pub fn expect_error(files: &Files, extra: &[&str], needles: &[&str]) -> String {
    let o = files.run(extra);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{extra:?}: {n:?} not in {err:?}");
    }
    assert!(!files.out.exists(), "{extra:?}: output written");
    assert!(!files.lse.exists(), "{extra:?}: lse written");
    for entry in std::fs::read_dir(files.out.parent().unwrap()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(["q.npy", "k.npy", "v.npy"].contains(&name.to_str().unwrap()), "stray {name:?}");
    }
    err
}

/// Like `expect_error`, and the message is a single line.
pub fn expect_one_line_error(files: &Files, extra: &[&str], needles: &[&str]) {
    let err = expect_error(files, extra, needles);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A scratch directory with valid GQA inputs (Hq 4, Hkv 2).
pub fn valid_files() -> Files {
    let files = Files::new();
    files.write::<f32>(
        &AttnShape::builder()
            .batch(1)
            .q_heads(4)
            .kv_heads(2)
            .q_len(5)
            .kv_len(7)
            .head_dim(8)
            .v_dim(8)
            .build()
            .unwrap(),
        Layout::Bhnd,
        600,
    );
    files
}

pub fn q_name(files: &Files) -> String {
    files.q.display().to_string()
}
