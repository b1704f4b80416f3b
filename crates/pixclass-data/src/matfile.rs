//! A small reader of MATLAB level-5 `.mat` files (uncompressed, and the
//! zlib-compressed elements MATLAB 7 writes by default), enough for
//! Oxford-17's `datasplits.mat`: named real numeric arrays, returned as f64.
//! Structs, cells, sparse and complex arrays are skipped.

use std::collections::HashMap;
use std::io::Read;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        let b = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or("truncated element tag")?;
        self.pos += 4;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    /// The next element: (type, data). Small elements pack their data into
    /// the tag; others are padded to 8 bytes (compressed ones are not).
    fn element(&mut self) -> Result<(u32, &'a [u8]), String> {
        let tag = self.u32()?;
        if tag >> 16 != 0 {
            let (ty, n) = (tag & 0xffff, (tag >> 16) as usize);
            let data = self
                .buf
                .get(self.pos..self.pos + n)
                .ok_or("truncated small element")?;
            self.pos += 4;
            return Ok((ty, data));
        }
        let n = self.u32()? as usize;
        let data = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| format!("element of {n} bytes runs past the end of the file"))?;
        self.pos += n;
        if tag != MI_COMPRESSED {
            self.pos += (8 - n % 8) % 8;
        }
        Ok((tag, data))
    }

    fn done(&self) -> bool {
        self.pos + 8 > self.buf.len()
    }
}

fn numbers(ty: u32, data: &[u8], big: bool) -> Result<Vec<f64>, String> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f64
                })
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        other => return Err(format!("unsupported numeric data type {other}")),
    })
}

/// Parses one miMATRIX element; `None` for arrays that are not real numeric.
fn matrix(data: &[u8], big: bool) -> Result<Option<(String, Vec<f64>)>, String> {
    let mut r = Reader {
        buf: data,
        pos: 0,
        big,
    };
    let (_, flags) = r.element()?;
    let flag_word = {
        let b = flags.get(0..4).ok_or("short array flags")?;
        let a = [b[0], b[1], b[2], b[3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let class = flag_word & 0xff;
    let complex = flag_word & 0x800 != 0;
    // mxCELL 1, mxSTRUCT 2, mxOBJECT 3, mxCHAR 4, mxSPARSE 5; numeric 6..=15.
    if !(6..=15).contains(&class) || complex {
        return Ok(None);
    }
    let _dims = r.element()?;
    let (_, name) = r.element()?;
    let name = String::from_utf8_lossy(name).into_owned();
    let (ty, real) = r.element()?;
    Ok(Some((name, numbers(ty, real, big)?)))
}

/// Reads every real numeric variable of a level-5 MAT file (column-major
/// values as f64).
pub fn read_mat(bytes: &[u8]) -> Result<HashMap<String, Vec<f64>>, String> {
    if bytes.len() < 128 {
        return Err(format!(
            "{} bytes is too short for a MATLAB 5 file (128-byte header)",
            bytes.len()
        ));
    }
    let big = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => {
            return Err(
                "not a MATLAB level-5 MAT file (no endian indicator; v7.3/HDF5 files are not supported)"
                    .into(),
            )
        }
    };
    let mut out = HashMap::new();
    let mut stack = vec![bytes[128..].to_vec()];
    while let Some(buf) = stack.pop() {
        let mut r = Reader {
            buf: &buf,
            pos: 0,
            big,
        };
        while !r.done() {
            let (ty, data) = r.element()?;
            match ty {
                MI_MATRIX => {
                    if let Some((name, v)) = matrix(data, big)? {
                        out.insert(name, v);
                    }
                }
                MI_COMPRESSED => {
                    let mut inflated = Vec::new();
                    flate2::read::ZlibDecoder::new(data)
                        .read_to_end(&mut inflated)
                        .map_err(|e| format!("bad compressed element: {e}"))?;
                    stack.push(inflated);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}
