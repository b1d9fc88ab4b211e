//! A safetensors file read one tensor at a time.
//!
//! `candle_core::safetensors::load` reads the whole file and makes a tensor of every entry
//! before the model takes any; converted to f32 for search, the shipped f16 models then
//! held the file, its f16 tensors and their f32 copies at once (15 + 15 + 30 MB for the
//! default model, most of the peak memory of a one-sentence `rnmt translate`). Here only
//! the header is read up front, and each tensor's bytes when the model asks for it, so
//! the peak is the f32 model plus one tensor.
//!
//! An int8 matrix (`rnmt average --dtype int8`) is stored as a U8 tensor `NAME`, each value
//! `q + 128` with `q` in [-127, 127], beside an F32 tensor `NAME.int8_scale` of one scale
//! per row: row i is `scale[i] · q[i]`. safetensors has an I8 dtype, but candle has none to
//! read it into; as two plain tensors the file stays readable by any safetensors reader.
//! It reads as the dequantized f32 matrix.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// The header is JSON of at most this many bytes (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

pub struct WeightsFile {
    path: PathBuf,
    file: Mutex<File>,
    entries: HashMap<String, Entry>,
}

/// A tensor's place in the file, checked against the file's size when the header is read.
pub struct Entry {
    /// The dtype it reads as: F32 for an int8 matrix.
    pub dtype: DType,
    pub shape: Vec<usize>,
    start: u64,
    len: usize,
    /// An int8 matrix: where its row scales are (F32, one per row).
    int8_scales: Option<(u64, usize)>,
}

/// The suffix of an int8 matrix's row scales (see the module notes).
pub const INT8_SCALE_SUFFIX: &str = ".int8_scale";

/// The offset of the stored bytes of an int8 matrix: `u8 = q + 128`.
const INT8_OFFSET: i32 = 128;

/// A header entry as the safetensors format writes it.
#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The candle dtype of a safetensors dtype name, for the whole-byte types candle reads.
fn dtype_of(name: &str) -> Option<DType> {
    const READ: [&str; 9] = [
        "U8", "U32", "I16", "I32", "I64", "BF16", "F16", "F32", "F64",
    ];
    if !READ.contains(&name) {
        return None;
    }
    name.to_ascii_lowercase().parse().ok()
}

/// The two tensors that store matrix `name` (`[rows, cols]`, any float dtype) in int8:
/// `NAME` (U8, `q + 128`) and `NAME.int8_scale` (F32, one per row), quantized row by row
/// with search's quantizer ([`super::int8_matmul::quantize_row`]).
pub fn int8_matrix(name: &str, matrix: &Tensor) -> Result<[(String, Tensor); 2]> {
    let (rows, cols) = matrix.dims2()?;
    let values = matrix
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut q = vec![0i8; cols];
    let mut bytes = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(cols.max(1)).take(rows) {
        scales.push(super::int8_matmul::quantize_row(row, &mut q));
        bytes.extend(q.iter().map(|&v| (v as i32 + INT8_OFFSET) as u8));
    }
    let device = matrix.device();
    Ok([
        (
            name.to_string(),
            Tensor::from_vec(bytes, (rows, cols), device)?,
        ),
        (
            format!("{name}{INT8_SCALE_SUFFIX}"),
            Tensor::from_vec(scales, rows, device)?,
        ),
    ])
}

/// Joins every `NAME.int8_scale` to its matrix `NAME` (see the module notes), checking
/// both: a U8 matrix of rows, F32 scales one per row, every stored byte a `q + 128` with `q`
/// in [-127, 127] (checked when read: no byte 0).
fn pair_int8_scales(entries: &mut HashMap<String, Entry>) -> std::result::Result<(), String> {
    let scale_names: Vec<String> = entries
        .keys()
        .filter(|n| n.ends_with(INT8_SCALE_SUFFIX))
        .cloned()
        .collect();
    for scale_name in scale_names {
        let name = &scale_name[..scale_name.len() - INT8_SCALE_SUFFIX.len()];
        let scales = entries.remove(&scale_name).expect("listed above");
        let Some(matrix) = entries.get_mut(name) else {
            return Err(format!(
                "int8 scales `{scale_name}` without a matrix `{name}`"
            ));
        };
        let rows = match matrix.shape.as_slice() {
            [rows, _] if matrix.dtype == DType::U8 => *rows,
            _ => {
                return Err(format!(
                    "int8 matrix `{name}` is {:?} {:?}, not a U8 matrix",
                    matrix.dtype, matrix.shape
                ))
            }
        };
        if scales.dtype != DType::F32 || scales.shape != [rows] {
            return Err(format!(
                "int8 scales `{scale_name}` are {:?} {:?}, not F32 [{rows}]",
                scales.dtype, scales.shape
            ));
        }
        matrix.dtype = DType::F32;
        matrix.int8_scales = Some((scales.start, scales.len));
    }
    Ok(())
}

impl WeightsFile {
    /// Reads and checks the header of `path`: every entry's dtype known, its byte range
    /// inside the file and of the size its shape and dtype imply.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |what: String| {
            anyhow::anyhow!(
                "{}: not a readable safetensors file: {what}",
                path.display()
            )
        };
        let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| fail(format!("{file_len} bytes, too short for a header")))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(fail(format!(
                "a header of {header_len} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| fail(format!("its header is not a JSON object: {e}")))?;
        raw.remove("__metadata__");
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let info: TensorInfo =
                serde_json::from_value(value).map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
            let dtype = dtype_of(&info.dtype).ok_or_else(|| {
                fail(format!(
                    "tensor `{name}`: dtype {} is not supported",
                    info.dtype
                ))
            })?;
            let (start, end) = info.data_offsets;
            let elements = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let expected = elements.and_then(|n| n.checked_mul(dtype.size_in_bytes()));
            if start > end || end as u64 > data_len || expected != Some(end - start) {
                return Err(fail(format!(
                    "tensor `{name}` ({:?} {:?}) has bytes {start}..{end} of a data section of {data_len}",
                    info.dtype, info.shape
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape: info.shape,
                    start: data_start + start as u64,
                    len: end - start,
                    int8_scales: None,
                },
            );
        }
        pair_int8_scales(&mut entries).map_err(fail)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Whether any matrix is stored in int8.
    pub fn has_int8(&self) -> bool {
        self.entries.values().any(|e| e.int8_scales.is_some())
    }

    fn read_bytes(&self, name: &str, start: u64, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        let mut file = self.file.lock().expect("not poisoned");
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| format!("reading tensor `{name}` of {}", self.path.display()))?;
        Ok(bytes)
    }

    /// Tensor `name`, read from the file now, in `dtype` on `device`.
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            bail!("{}: tensor `{name}` is missing", self.path.display());
        };
        let bytes = self.read_bytes(name, entry.start, entry.len)?;
        if let Some((start, len)) = entry.int8_scales {
            let scales = self.read_bytes(name, start, len)?;
            let scales: Vec<f32> = scales
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if bytes.contains(&0) {
                bail!(
                    "{}: int8 matrix `{name}` holds the byte 0 (-128), outside [-127, 127]",
                    self.path.display()
                );
            }
            let cols = entry.shape[1];
            let values: Vec<f32> = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as i32 - INT8_OFFSET) as f32 * scales[i / cols])
                .collect();
            return Ok(Tensor::from_vec(values, entry.shape.as_slice(), device)?.to_dtype(dtype)?);
        }
        let tensor = Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, device)?;
        drop(bytes);
        Ok(tensor.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::safetensors::save;

    fn tensors() -> HashMap<String, Tensor> {
        let a = Tensor::new(&[[1.5f32, -2.0, 0.25], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[7.0f32, 8.0], &Device::Cpu).unwrap();
        HashMap::from([
            ("a".to_string(), a.to_dtype(DType::F16).unwrap()),
            ("b".to_string(), b),
        ])
    }

    #[test]
    fn reads_each_tensor_as_candle_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&tensors(), &path).unwrap();
        let file = WeightsFile::open(&path).unwrap();
        let reference = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let mut names: Vec<&String> = file.names().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(file.entry("a").unwrap().dtype, DType::F16);
        assert_eq!(file.entry("a").unwrap().shape, [2, 3]);
        for name in ["b", "a", "b"] {
            let got = file.read(name, DType::F32, &Device::Cpu).unwrap();
            let want = reference[name].to_dtype(DType::F32).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        let err = file.read("c", DType::F32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("tensor `c` is missing"), "{err}");
    }

    #[test]
    fn a_truncated_or_garbled_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&tensors(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cases: [(&[u8], &str); 3] = [
            (&bytes[..5], "too short for a header"),
            (&bytes[..bytes.len() - 1], "of a data section of"),
            (b"\x04\x00\x00\x00\x00\x00\x00\x00[1]!", "not a JSON object"),
        ];
        for (content, message) in cases {
            std::fs::write(&path, content).unwrap();
            let err = WeightsFile::open(&path).err().expect("an error");
            let text = format!("{err:#}");
            assert!(
                text.contains("model.safetensors: not a readable safetensors file"),
                "{text}"
            );
            assert!(text.contains(message), "{text}");
        }
    }

    /// An int8 matrix reads as its rows' scales times their integers, within half a step
    /// of the original; its scales are no tensor of their own; a broken pair is an error.
    #[test]
    fn int8_matrices_read_dequantized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let values = [
            [0.5f32, -1.0, 0.25, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [3.0, 2.9, -0.01, 1.5],
        ];
        let matrix = Tensor::new(&values, &Device::Cpu).unwrap();
        let bias = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let mut tensors: HashMap<String, Tensor> = int8_matrix("w", &matrix).unwrap().into();
        tensors.insert("b".to_string(), bias);
        save(&tensors, &path).unwrap();
        let file = WeightsFile::open(&path).unwrap();
        assert!(file.has_int8());
        let mut names: Vec<&String> = file.names().collect();
        names.sort();
        assert_eq!(names, ["b", "w"]);
        assert_eq!(file.entry("w").unwrap().dtype, DType::F32);
        let got = file.read("w", DType::F32, &Device::Cpu).unwrap();
        let got = got.to_vec2::<f32>().unwrap();
        for (row, want) in got.iter().zip(&values) {
            let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in row.iter().zip(want) {
                assert!((g - w).abs() <= max / 254.0 + 1e-7, "{g} vs {w}");
            }
        }
        // The largest value of each row is exact: it is 127 steps.
        assert_eq!((got[0][1], got[2][0]), (-1.0, 3.0));
        assert_eq!(got[1], [0.0; 4]);

        let u8_matrix = |bytes: Vec<u8>| Tensor::from_vec(bytes, (1, 2), &Device::Cpu).unwrap();
        let one_scale = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let cases: [(Vec<(&str, Tensor)>, &str); 3] = [
            (
                vec![("w.int8_scale", one_scale.clone())],
                "int8 scales `w.int8_scale` without a matrix `w`",
            ),
            (
                vec![
                    ("w", u8_matrix(vec![1, 255])),
                    (
                        "w.int8_scale",
                        Tensor::new(&[0.5f32, 1.0], &Device::Cpu).unwrap(),
                    ),
                ],
                "are F32 [2], not F32 [1]",
            ),
            (
                vec![
                    ("w", one_scale.clone()),
                    ("w.int8_scale", one_scale.clone()),
                ],
                "not a U8 matrix",
            ),
        ];
        for (tensors, message) in cases {
            let tensors: HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
            save(&tensors, &path).unwrap();
            let err = WeightsFile::open(&path).err().expect("an error");
            assert!(format!("{err:#}").contains(message), "{err:#}");
        }
        let tensors = HashMap::from([
            ("w".to_string(), u8_matrix(vec![0, 128])),
            ("w.int8_scale".to_string(), one_scale),
        ]);
        save(&tensors, &path).unwrap();
        let file = WeightsFile::open(&path).unwrap();
        let err = file.read("w", DType::F32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("holds the byte 0"), "{err}");
    }
}
