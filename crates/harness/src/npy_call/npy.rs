//! `.npy` files for `attn run`: reading float32 and float16 arrays,
//! writing float32 ones.
//!
//! Reads float32 and float16 arrays (either byte order; `npyz` swaps
//! big-endian data) in C order into flat vectors, and writes float32 arrays.
//! Every failure is a [`FileError`] whose message is `"<path>: <problem>"`,
//! so the command line can print it as one line.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use crate::config::Dtype;
use attnlab::f16;
use npyz::{DType, Order, TypeChar, WriterBuilder};

/// The dtypes `attn run` accepts, for error messages.
pub const ACCEPTED_DTYPES: &str = "float32 ('<f4') or float16 ('<f2')";

/// The elements of an array in file (C) order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// float32 elements.
    F32(Vec<f32>),
    /// float16 elements, kept as `f16` (not widened).
    F16(Vec<f16>),
}

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Shape as written in the header (C order).
    pub shape: Vec<usize>,
    /// Flat elements, `shape.iter().product()` of them.
    pub data: NpyData,
}

impl NpyArray {
    /// Element type: [`Dtype::F32`] (`<f4` or `>f4`) or [`Dtype::F16`]
    /// (`<f2` or `>f2`).
    pub fn dtype(&self) -> Dtype {
        match self.data {
            NpyData::F32(_) => Dtype::F32,
            NpyData::F16(_) => Dtype::F16,
        }
    }
}

/// A problem with one file. Displays as `"<path>: <problem>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong with it, without the path.
    pub problem: String,
}

impl FileError {
    /// A problem with `path`.
    pub fn new(path: &Path, problem: impl Into<String>) -> Self {
        FileError { path: path.to_path_buf(), problem: problem.into() }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for FileError {}

/// Formats a shape the way numpy prints it: `(2, 3)`, `(5,)`, `()`.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// numpy's name for a dtype, e.g. `float64` for `'<f8'`, else its descr.
fn dtype_name(dtype: &DType) -> String {
    if let DType::Plain(ts) = dtype {
        let bits = ts.size_field() * 8;
        let kind = match ts.type_char() {
            TypeChar::Float => Some("float"),
            TypeChar::Int => Some("int"),
            TypeChar::Uint => Some("uint"),
            TypeChar::Complex => Some("complex"),
            _ => None,
        };
        if let Some(kind) = kind {
            return format!("{kind}{bits} ({})", dtype.descr());
        }
        if ts.type_char() == TypeChar::Bool {
            return format!("bool ({})", dtype.descr());
        }
    }
    dtype.descr()
}

/// Reads a float32 or float16 `.npy` file in C order, of any rank.
pub fn read(path: &Path) -> Result<NpyArray, FileError> {
    let err = |problem: String| FileError::new(path, problem);
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => err("no such file".into()),
        _ => err(format!("cannot open: {e}")),
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    check_shape_product(path)?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            err(format!("not a valid .npy file ({e})"))
        }
        _ => err(format!("cannot read: {e}")),
    })?;

    let dtype = npy.dtype();
    let kind = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => Dtype::F32,
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 2 => Dtype::F16,
        _ => {
            return Err(err(format!(
                "dtype {} is not supported; expected {ACCEPTED_DTYPES}",
                dtype_name(&dtype)
            )));
        }
    };
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| err("shape does not fit in memory".into()))?;
    if npy.order() == Order::Fortran {
        return Err(err(format!(
            "array of shape {} is in Fortran order; attn needs C order \
             (save np.ascontiguousarray(x))",
            shape_str(&shape)
        )));
    }
    let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let item = kind.row_bytes(1);
    // A corrupt header could promise more elements than the file holds:
    // never reserve more than the file could contain.
    let len = len.ok_or_else(|| err("element count overflows usize".into()))?;
    let cap = len.min(usize::try_from(file_len / item).unwrap_or(usize::MAX));
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => err(format!(
            "file is truncated: shape {} needs {len} elements but the data ends early",
            shape_str(&shape)
        )),
        _ => err(format!("cannot read: {e}")),
    };
    let data = match kind {
        Dtype::F32 => NpyData::F32(collect(npy, len, cap).map_err(truncated)?),
        Dtype::F16 => NpyData::F16(collect(npy, len, cap).map_err(truncated)?),
        Dtype::Bf16 | Dtype::Q8_0 => {
            unreachable!(".npy has no bfloat16 or q8_0: only f32 and f16 are read")
        }
    };
    Ok(NpyArray { shape, data })
}

fn collect<T: npyz::Deserialize, R: io::Read>(
    npy: npyz::NpyFile<R>,
    len: usize,
    cap: usize,
) -> io::Result<Vec<T>> {
    let reader = npy.data::<T>().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(cap);
    for x in reader {
        out.push(x?);
    }
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// Writes `data` as a C-order little-endian float32 (`<f4`) `.npy` file of
/// `shape`. Creates or truncates `path`; on error the file may be partial.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> io::Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let out = BufWriter::new(File::create(path)?);
    let mut w = npyz::WriteOptions::<f32>::new()
        .dtype(DType::Plain("<f4".parse().expect("'<f4' is a valid type string")))
        .shape(&shape)
        .writer(out)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    // finish() flushes the BufWriter and reports its errors.
    w.finish()
}

/// Refuses a header whose shape's dims multiply beyond u64 (zeros left
/// out: `npyz` multiplies them unchecked, strides included), before
/// `npyz` sees it. Anything this quick look
/// cannot parse is left to `npyz`'s own errors.
fn check_shape_product(path: &Path) -> Result<(), FileError> {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(1 << 17).read_to_end(&mut head);
    }
    let Some(text) = head.get(10..).map(String::from_utf8_lossy) else { return Ok(()) };
    let Some(start) = text.find("'shape'").and_then(|i| text[i..].find('(').map(|j| i + j + 1))
    else {
        return Ok(());
    };
    let Some(end) = text[start..].find(')').map(|j| start + j) else { return Ok(()) };
    let mut product = Some(1u64);
    for part in text[start..end].split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u64>() {
            Ok(d) => product = product.and_then(|p| p.checked_mul(d.max(1))),
            Err(_) => return Ok(()),
        }
    }
    if product.is_none() {
        let shape = text[start - 1..=end].to_string();
        return Err(FileError::new(
            path,
            format!("shape {shape} has more elements than fit in memory"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_formatting() {
        assert_eq!(shape_str(&[]), "()");
        assert_eq!(shape_str(&[5]), "(5,)");
        assert_eq!(shape_str(&[1, 2, 3]), "(1, 2, 3)");
    }

    #[test]
    fn f32_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("attn-npy-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&p, &[2, 3, 4], &data).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3, 4]);
        assert_eq!(a.data, NpyData::F32(data));

        let missing = dir.join("missing.npy");
        let e = read(&missing).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: no such file", missing.display()));

        let text = dir.join("t.npy");
        std::fs::write(&text, "hello").unwrap();
        assert!(read(&text).unwrap_err().problem.starts_with("not a valid .npy file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `.npy` v1 file: magic, header dict padded to 16 bytes, body.
    fn npy_bytes(header: &str, body: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(16) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(body);
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// Arbitrary bytes, and arbitrary (often absurd) headers over
        /// bodies of any length: an array or an error, never a panic, and
        /// never an allocation the file cannot back.
        #[test]
        fn any_bytes_or_header_read_or_fail_cleanly(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            shape in proptest::collection::vec(
                proptest::prop_oneof![0u64..5, proptest::prelude::Just(1u64 << 32), proptest::prelude::Just(u64::MAX)],
                0..5,
            ),
            descr in proptest::prop_oneof![
                proptest::prelude::Just("<f4"), proptest::prelude::Just(">f4"), proptest::prelude::Just("<f2"),
                proptest::prelude::Just("<f8"), proptest::prelude::Just("|u1"), proptest::prelude::Just("<i4"),
                proptest::prelude::Just("garbage"),
            ],
            fortran in proptest::prelude::any::<bool>(),
            body in 0usize..100,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.npy");
            std::fs::write(&p, &raw).unwrap();
            let _ = read(&p);
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let tuple = match dims.len() { 1 => format!("({},)", dims[0]), _ => format!("({})", dims.join(", ")) };
            let header = format!(
                "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {tuple}, }}",
                if fortran { "True" } else { "False" }
            );
            std::fs::write(&p, npy_bytes(&header, &vec![0x3fu8; body])).unwrap();
            if let Ok(a) = read(&p) {
                let n: usize = a.shape.iter().product();
                let bytes = a.dtype().row_bytes(n as u64) as usize;
                proptest::prop_assert!(bytes <= body, "read {bytes} bytes from a {body}-byte body");
            }
        }
    }
}
