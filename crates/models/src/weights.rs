//! Weights borrowed from the memory-mapped GGUF: a matrix is a byte range plus its type and
//! shape, checked once at load time.

use crate::ModelError;
use latent_formats::gguf::{GgufFile, TensorInfo};
use latent_quant::{QMatrix, WeightType};
use std::ops::Range;

/// A weight matrix `[rows N, cols K]` (GGUF dims `[K, N]`) stored in the file.
#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    range: Range<usize>,
}

impl Linear {
    /// The matrix over the file's bytes.
    pub fn mat<'a>(&self, file: &'a GgufFile) -> QMatrix<'a> {
        QMatrix { wtype: self.wtype, rows: self.rows, cols: self.cols, data: &file.as_bytes()[self.range.clone()] }
    }
    /// Rows `r` of the matrix (contiguous bytes).
    pub fn rows_of<'a>(&self, file: &'a GgufFile, r: Range<usize>) -> QMatrix<'a> {
        let rb = self.range.len() / self.rows.max(1);
        let start = self.range.start + r.start * rb;
        QMatrix {
            wtype: self.wtype,
            rows: r.len(),
            cols: self.cols,
            data: &file.as_bytes()[start..start + r.len() * rb],
        }
    }
    pub fn bytes(&self) -> usize {
        self.range.len()
    }
    /// Rows `r` as a matrix of their own (one expert of a stacked expert tensor).
    pub fn sub_rows(&self, r: Range<usize>) -> Linear {
        let rb = self.range.len() / self.rows.max(1);
        let start = self.range.start + r.start * rb;
        Linear {
            name: self.name.clone(),
            wtype: self.wtype,
            rows: r.len(),
            cols: self.cols,
            range: start..start + r.len() * rb,
        }
    }
}

fn info<'a>(f: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// The matrix `name` with GGUF dims `[cols, rows]`.
pub fn linear(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
    linear_dims(f, name, rows, cols, &[cols as u64, rows as u64])
}

/// The tensor `name` with GGUF dims `dims` seen as a `[rows, cols]` matrix.
pub fn linear_dims(f: &GgufFile, name: &str, rows: usize, cols: usize, dims: &[u64]) -> Result<Linear, ModelError> {
    let t = info(f, name)?;
    let expected = dims.to_vec();
    if t.dims != expected {
        return Err(ModelError::Shape { name: name.into(), expected, found: t.dims.clone() });
    }
    let wtype = WeightType::from_ggml_id(t.ggml_type.id())
        .ok_or_else(|| ModelError::TensorType { name: name.into(), ty: t.ggml_type.name().to_string() })?;
    let rb = wtype.row_bytes(cols)?;
    if t.n_bytes as usize != rb * rows {
        return Err(ModelError::Shape { name: name.into(), expected, found: t.dims.clone() });
    }
    let start = t.offset as usize;
    Ok(Linear { name: name.into(), wtype, rows, cols, range: start..start + t.n_bytes as usize })
}

/// A vector `[n]` (any float or quantized type), dequantized to f32.
pub fn vector(f: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = info(f, name)?;
    if t.dims != [n as u64] {
        return Err(ModelError::Shape { name: name.into(), expected: vec![n as u64], found: t.dims.clone() });
    }
    let wtype = WeightType::from_ggml_id(t.ggml_type.id())
        .ok_or_else(|| ModelError::TensorType { name: name.into(), ty: t.ggml_type.name().to_string() })?;
    let mut out = vec![0f32; n];
    latent_quant::dequantize_row(wtype, f.tensor_data(t), &mut out)?;
    Ok(out)
}

/// Typed metadata getters with the key in the error.
pub fn meta_u32(f: &GgufFile, key: &str) -> Result<usize, ModelError> {
    f.get_u32(key).map(|v| v as usize).map_err(|e| ModelError::Metadata { key: key.into(), msg: e.to_string() })
}

pub fn meta_f32(f: &GgufFile, key: &str) -> Result<f32, ModelError> {
    f.get_f32(key).map_err(|e| ModelError::Metadata { key: key.into(), msg: e.to_string() })
}
