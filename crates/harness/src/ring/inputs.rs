//! `attn ring`'s inputs: Q, K, V read from `.npy` files (float32 or
//! float16, C order; [`crate::npy_call::npy`]) and checked before any rank
//! computes: each is 4-d, they share one dtype, their dims fit together
//! and every value is finite. Every error is a [`FileError`] naming the
//! file, the tensor and the dimension at fault. float16 inputs are
//! widened to f32, the type the ring's blocks travel in.

use std::path::Path;

use attnlab::{AttnError, AttnInputs, AttnShape, Layout, TensorView};

use crate::npy_call::layout_name;
use crate::npy_call::npy::{self, FileError, NpyArray, NpyData, shape_str};

/// The whole problem's inputs, in the file's memory layout, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeInputs {
    /// The problem's shape, from the three arrays.
    pub shape: AttnShape,
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

/// The three tensors, by name, with their files.
struct Named<'a> {
    paths: [&'a Path; 3],
    /// Memory-order shapes as read.
    shapes: [Vec<usize>; 3],
    layout: Layout,
}

const NAMES: [&str; 3] = ["q", "k", "v"];

impl Named<'_> {
    fn path(&self, tensor: &str) -> &Path {
        let i = NAMES.iter().position(|n| *n == tensor).unwrap_or(0);
        self.paths[i]
    }

    fn note(&self) -> String {
        format!(
            "(q {}, k {}, v {}, layout {})",
            shape_str(&self.shapes[0]),
            shape_str(&self.shapes[1]),
            shape_str(&self.shapes[2]),
            layout_name(self.layout)
        )
    }

    /// An attnlab shape error, on the file of the tensor it names.
    fn error(&self, e: AttnError) -> FileError {
        let tensor = match &e {
            AttnError::Dim { tensor, .. }
            | AttnError::BufferLen { tensor, .. }
            | AttnError::Overflow { tensor } => tensor,
            AttnError::HeadsNotDivisible { .. } => "k",
            AttnError::ZeroDim { dim } => match *dim {
                "kv_heads" => "k",
                "v_dim" => "v",
                _ => "q",
            },
            _ => "q",
        };
        let problem = match &e {
            AttnError::HeadsNotDivisible { .. } | AttnError::ZeroDim { .. } => {
                format!("{tensor}: {e} {}", self.note())
            }
            _ => format!("{e} {}", self.note()),
        };
        FileError::new(self.path(tensor), problem)
    }
}

/// Reads one tensor and checks that it is 4-d.
fn read_4d(path: &Path, tensor: &str, dims: &str, layout: Layout) -> Result<NpyArray, FileError> {
    let a = npy::read(path)?;
    if a.shape.len() != 4 {
        return Err(FileError::new(
            path,
            format!(
                "{tensor} must be a 4-d array {dims} (layout {}), got a {}-d array of shape {}",
                layout_name(layout),
                a.shape.len(),
                shape_str(&a.shape)
            ),
        ));
    }
    Ok(a)
}

fn widen(a: NpyArray) -> Vec<f32> {
    match a.data {
        NpyData::F32(x) => x,
        NpyData::F16(x) => x.into_iter().map(f32::from).collect(),
    }
}

/// The multi-index of flat `index` in a C-order array of `shape`.
fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = index % d;
            index /= d;
        }
    }
    idx
}

/// Reads Q, K, V from `paths` (in that order) in `layout` and checks them
/// (see the module docs).
pub fn read_inputs(paths: [&Path; 3], layout: Layout) -> Result<WholeInputs, FileError> {
    let dims = match layout {
        Layout::Bhnd => ["[B, Hq, Nq, d]", "[B, Hkv, Nk, d]", "[B, Hkv, Nk, dv]"],
        Layout::Bnhd => ["[B, Nq, Hq, d]", "[B, Nk, Hkv, d]", "[B, Nk, Hkv, dv]"],
    };
    let q = read_4d(paths[0], "q", dims[0], layout)?;
    let k = read_4d(paths[1], "k", dims[1], layout)?;
    let v = read_4d(paths[2], "v", dims[2], layout)?;
    for (i, a) in [(1, &k), (2, &v)] {
        if a.dtype() != q.dtype() {
            return Err(FileError::new(
                paths[i],
                format!(
                    "{}: dtype {} does not match q's {} (q, k and v must share one dtype)",
                    NAMES[i],
                    a.dtype().numpy_name(),
                    q.dtype().numpy_name()
                ),
            ));
        }
    }
    let named = Named { paths, shapes: [&q, &k, &v].map(|a| a.shape.clone()), layout };
    let logical =
        |a: &NpyArray| layout.logical_dims([a.shape[0], a.shape[1], a.shape[2], a.shape[3]]);
    let dims = [logical(&q), logical(&k), logical(&v)];
    let [[b, hq, nq, d], [_, hkv, nk, _], [.., dv]] = dims;
    let shape = AttnShape::builder()
        .batch(b)
        .q_heads(hq)
        .kv_heads(hkv)
        .q_len(nq)
        .kv_len(nk)
        .head_dim(d)
        .v_dim(dv)
        .build()
        .map_err(|e| named.error(e))?;
    let (q, k, v) = (widen(q), widen(k), widen(v));
    // Each tensor's own dims against the shape: a mismatch names the
    // tensor and the dimension.
    let view = |name, x, d| TensorView::new(name, x, d, layout).map_err(|e| named.error(e));
    let [qd, kd, vd] = dims;
    AttnInputs::new(shape, view("q", &q, qd)?, view("k", &k, kd)?, view("v", &v, vd)?)
        .map_err(|e| named.error(e))?;
    for (i, x) in [&q, &k, &v].into_iter().enumerate() {
        if let Some(at) = x.iter().position(|v| !v.is_finite()) {
            return Err(FileError::new(
                paths[i],
                format!(
                    "{}: non-finite value {} at index {} of shape {}: ring attention needs \
                     finite inputs",
                    NAMES[i],
                    x[at],
                    shape_str(&unravel(at, &named.shapes[i])),
                    shape_str(&named.shapes[i])
                ),
            ));
        }
    }
    Ok(WholeInputs { shape, q, k, v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy_call::npy::write_f32;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Self {
            Dir { dir: tempfile::tempdir().unwrap() }
        }
        fn write(
            &self,
            name: &str,
            shape: &[usize],
            fill: impl Fn(usize) -> f32,
        ) -> std::path::PathBuf {
            let p = self.dir.path().join(name);
            let n = shape.iter().product();
            write_f32(&p, shape, &(0..n).map(fill).collect::<Vec<_>>()).unwrap();
            p
        }
    }

    fn read(d: &Dir, q: &[usize], k: &[usize], v: &[usize]) -> Result<WholeInputs, FileError> {
        let q = d.write("q.npy", q, |i| i as f32 * 1e-3);
        let k = d.write("k.npy", k, |i| i as f32 * 1e-3);
        let v = d.write("v.npy", v, |i| i as f32 * 1e-3);
        read_inputs([&q, &k, &v], Layout::Bhnd)
    }

    #[test]
    fn good_inputs_give_the_shape() {
        let d = Dir::new();
        let w = read(&d, &[1, 4, 5, 8], &[1, 2, 7, 8], &[1, 2, 7, 3]).unwrap();
        let s = w.shape;
        assert_eq!(
            [s.batch(), s.q_heads(), s.kv_heads(), s.q_len(), s.kv_len(), s.head_dim(), s.v_dim()],
            [1, 4, 2, 5, 7, 8, 3]
        );
        assert_eq!(w.v.len(), 42);
    }

    #[test]
    fn errors_name_the_file_the_tensor_and_the_dimension() {
        let d = Dir::new();
        let e = read(&d, &[4, 5, 8], &[1, 2, 7, 8], &[1, 2, 7, 8]).unwrap_err();
        assert!(e.path.ends_with("q.npy"), "{e}");
        assert!(e.problem.contains("q must be a 4-d array [B, Hq, Nq, d]"), "{e}");
        assert!(e.problem.contains("3-d array of shape (4, 5, 8)"), "{e}");

        let e = read(&d, &[1, 4, 5, 8], &[1, 3, 7, 8], &[1, 3, 7, 8]).unwrap_err();
        assert!(e.path.ends_with("k.npy"), "{e}");
        assert!(e.problem.contains("q heads (4) must be a multiple of kv heads (3)"), "{e}");

        let e = read(&d, &[1, 4, 5, 8], &[1, 2, 7, 8], &[1, 2, 6, 8]).unwrap_err();
        assert!(e.path.ends_with("v.npy"), "{e}");
        assert!(e.problem.starts_with("v: expected 7 key positions, got 6"), "{e}");

        let e = read(&d, &[1, 4, 5, 8], &[2, 2, 7, 8], &[2, 2, 7, 8]).unwrap_err();
        assert!(e.path.ends_with("k.npy") && e.problem.contains("batch"), "{e}");
    }

    #[test]
    fn a_non_finite_value_is_found_and_located() {
        let d = Dir::new();
        let q = d.write("q.npy", &[1, 2, 3, 4], |_| 0.5);
        let k = d.write("k.npy", &[1, 2, 3, 4], |i| if i == 13 { f32::NAN } else { 0.5 });
        let v = d.write("v.npy", &[1, 2, 3, 4], |_| 0.5);
        let e = read_inputs([&q, &k, &v], Layout::Bhnd).unwrap_err();
        assert!(e.path.ends_with("k.npy"), "{e}");
        assert!(e.problem.contains("k: non-finite value NaN at index (0, 1, 0, 1)"), "{e}");
    }
}
