//! `.npz` archives as numpy's `np.savez` writes them: a ZIP file whose
//! members are uncompressed ("stored") `.npy` files, one per array, named
//! `NAME.npy`, so that `np.load(path)["NAME"]` reads array `NAME`.
//!
//! Written here (a ZIP of stored members is three fixed-layout records and
//! a CRC-32) rather than through npyz's `npz` feature, which pulls the
//! `zip` crate with its deflate, bzip2, zstd and AES dependencies (C
//! builds among them) for archives that need none of them. No ZIP64:
//! each member and the whole archive stay under 4 GiB (an error
//! otherwise), far beyond what `attn run`'s per-row statistics reach.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use npyz::WriterBuilder;

/// CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), the checksum
/// of ZIP members: one 256-entry table, built at compile time.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// A float32 C-order `.npy` file's bytes.
fn npy_bytes(shape: &[usize], data: &[f32]) -> io::Result<Vec<u8>> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::with_capacity(128 + 4 * data.len());
    let mut w = npyz::WriteOptions::<f32>::new()
        .dtype(npyz::DType::Plain("<f4".parse().expect("'<f4' is a valid type string")))
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(bytes)
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} exceeds 4 GiB (.npz without ZIP64)"),
    )
}

/// DOS date of 1980-01-01 (the earliest ZIP can say; no clock read, so the
/// archive's bytes depend on its arrays only), time 00:00.
const DOS_DATE: u16 = (1 << 5) | 1;

/// Writes `arrays` (name, C-order shape, data) to `path` as an `.npz` of
/// float32 `.npy` members `NAME.npy`. Creates or truncates `path`; on
/// error the file may be partial (callers write to a temporary file).
pub fn write_f32(path: &Path, arrays: &[(&str, &[usize], &[f32])]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut central = Vec::new();
    let mut offset = 0u64;
    for &(name, shape, data) in arrays {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
        let member = format!("{name}.npy");
        let body = npy_bytes(shape, data)?;
        let size = u32::try_from(body.len()).map_err(|_| too_large(&member))?;
        let at = u32::try_from(offset).map_err(|_| too_large("the archive"))?;
        let crc = crc32(&body);
        let name_len = u16::try_from(member.len()).map_err(|_| too_large(&member))?;
        // the fields local and central headers share, from "version needed"
        let mut common = Vec::with_capacity(26);
        for x in [20u16, 0, 0, 0, DOS_DATE] {
            common.extend(x.to_le_bytes()); // version 2.0, flags, stored, time, date
        }
        for x in [crc, size, size] {
            common.extend(x.to_le_bytes());
        }
        common.extend(name_len.to_le_bytes());
        common.extend(0u16.to_le_bytes()); // extra field length
        out.write_all(&0x0403_4b50u32.to_le_bytes())?;
        out.write_all(&common)?;
        out.write_all(member.as_bytes())?;
        out.write_all(&body)?;
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // made by: version 2.0
        central.extend(&common);
        for x in [0u16, 0, 0] {
            central.extend(x.to_le_bytes()); // comment length, disk, internal attributes
        }
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(at.to_le_bytes());
        central.extend(member.as_bytes());
        offset += (30 + member.len() + body.len()) as u64;
    }
    let at = u32::try_from(offset).map_err(|_| too_large("the archive"))?;
    let n = u16::try_from(arrays.len()).map_err(|_| too_large("the member count"))?;
    let size = u32::try_from(central.len()).map_err(|_| too_large("the directory"))?;
    out.write_all(&central)?;
    let mut end = Vec::with_capacity(22);
    end.extend(0x0605_4b50u32.to_le_bytes());
    for x in [0u16, 0, n, n] {
        end.extend(x.to_le_bytes()); // this disk, directory's disk, entries here, entries
    }
    end.extend(size.to_le_bytes());
    end.extend(at.to_le_bytes());
    end.extend(0u16.to_le_bytes()); // comment length
    out.write_all(&end)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// One array of an `.npz` ([`read_f32`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NpzArray {
    /// The member's name without `.npy`.
    pub name: String,
    /// C-order shape.
    pub shape: Vec<usize>,
    /// The values.
    pub data: Vec<f32>,
}

fn bad(problem: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, problem.into())
}

/// Reads an `.npz` of stored float32 members (what [`write_f32`] and
/// `np.savez` write): its arrays in directory order, every member's CRC checked. For tests and tools; compressed
/// members (`np.savez_compressed`) are an error.
pub fn read_f32(path: &Path) -> io::Result<Vec<NpzArray>> {
    let bytes = std::fs::read(path)?;
    let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let end = bytes.len().checked_sub(22).ok_or_else(|| bad("too short for a ZIP archive"))?;
    if u32_at(end) != Some(0x0605_4b50) {
        return Err(bad("no end-of-directory record (an archive comment is not supported)"));
    }
    let n = u16_at(end + 10).unwrap_or(0) as usize;
    let mut at = u32_at(end + 16).unwrap_or(0) as usize;
    let mut arrays = Vec::with_capacity(n);
    for _ in 0..n {
        if u32_at(at) != Some(0x0201_4b50) {
            return Err(bad(format!("no directory entry at byte {at}")));
        }
        let field = |o: usize| u16_at(at + o).ok_or_else(|| bad("truncated directory"));
        let (method, name_len) = (field(10)?, field(28)? as usize);
        let (extra, comment) = (field(30)? as usize, field(32)? as usize);
        let crc = u32_at(at + 16).ok_or_else(|| bad("truncated directory"))?;
        let size = u32_at(at + 20).ok_or_else(|| bad("truncated directory"))? as usize;
        let local = u32_at(at + 42).ok_or_else(|| bad("truncated directory"))? as usize;
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(bad(format!("member {name} is compressed (method {method})")));
        }
        let start = local
            + 30
            + u16_at(local + 26).ok_or_else(|| bad("truncated member"))? as usize
            + u16_at(local + 28).ok_or_else(|| bad("truncated member"))? as usize;
        let body = bytes.get(start..start + size).ok_or_else(|| bad("truncated member"))?;
        if crc32(body) != crc {
            return Err(bad(format!("member {name}: CRC mismatch")));
        }
        let npy = npyz::NpyFile::new(body)?;
        let shape = npy.shape().iter().map(|&d| d as usize).collect();
        let data = npy.into_vec::<f32>()?;
        arrays.push(NpzArray { name: name.trim_end_matches(".npy").to_string(), shape, data });
        at += 46 + name_len + extra + comment;
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_strings() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926); // the CRC-32 check value
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn arrays_round_trip_and_the_layout_is_a_zip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let (a, b) = ([1.0f32, -2.5, f32::NEG_INFINITY, 0.0, 7.0, 8.0], [3.25f32]);
        write_f32(&p, &[("max_p", &[1, 2, 3], &a), ("entropy", &[1], &b), ("empty", &[0, 4], &[])])
            .unwrap();
        let back = read_f32(&p).unwrap();
        let names: Vec<&str> = back.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["max_p", "entropy", "empty"]);
        assert_eq!((&back[0].shape[..], &back[0].data[..]), (&[1, 2, 3][..], &a[..]));
        assert_eq!((&back[1].shape[..], &back[1].data[..]), (&[1][..], &b[..]));
        assert_eq!((&back[2].shape[..], back[2].data.len()), (&[0, 4][..], 0));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        assert_eq!(&bytes[30..39], b"max_p.npy");
        assert_eq!(&bytes[39..45], b"\x93NUMPY");
        // a flipped byte of a member's data is caught
        let mut bad = bytes.clone();
        let i = bytes.windows(4).position(|w| w == (-2.5f32).to_le_bytes()).unwrap();
        bad[i] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(read_f32(&p).unwrap_err().to_string().contains("CRC mismatch"));
    }
}
