//! A safetensors file read one tensor at a time.
//!
//! `candle_core::safetensors::load` reads the whole file and makes a tensor of every entry
//! before the model takes any; converted to f32 for search, the shipped f16 models then
//! held the file, its f16 tensors and their f32 copies at once (15 + 15 + 30 MB for the
//! default model, most of the peak memory of a one-sentence `rnmt translate`). Here only
//! the header is read up front, and each tensor's bytes when the model asks for it, so
//! the peak is the f32 model plus one tensor.

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
    pub dtype: DType,
    pub shape: Vec<usize>,
    start: u64,
    len: usize,
}

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
                },
            );
        }
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

    /// Tensor `name`, read from the file now, in `dtype` on `device`.
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            bail!("{}: tensor `{name}` is missing", self.path.display());
        };
        let mut bytes = vec![0u8; entry.len];
        {
            let mut file = self.file.lock().expect("not poisoned");
            file.seek(SeekFrom::Start(entry.start))
                .and_then(|_| file.read_exact(&mut bytes))
                .with_context(|| format!("reading tensor `{name}` of {}", self.path.display()))?;
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
}
