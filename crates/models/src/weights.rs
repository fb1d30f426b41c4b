//! Weights borrowed from the memory-mapped GGUF: a matrix is a byte range plus its type and
//! shape, checked once at load time.

use crate::ModelError;
use latent_formats::gguf::{GgufFile, MetaValue, TensorInfo};
use latent_quant::{PackedMatrix, QMatrix, WeightType};
use std::ops::Range;
use std::sync::Arc;

/// A weight matrix `[rows N, cols K]` (GGUF dims `[K, N]`) stored in the file.
#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    range: Range<usize>,
    /// The same matrix repacked 16 rows at a time for the decode/prefill kernels (Q4_0,
    /// Q4_1 and Q8_0 when [`repack_enabled`]); the file's pages of it are then released.
    packed: Option<Arc<PackedMatrix>>,
}

/// Whether Q4_0/Q4_1/Q8_0 matrices are repacked at load (`LATENT_REPACK=0` keeps the file layout:
/// no copy, but slower integer kernels).
pub fn repack_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LATENT_REPACK").map(|v| v != "0").unwrap_or(true))
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
    /// The repacked copy, if any.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        self.packed.as_deref()
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
            packed: None,
        }
    }
}

fn info<'a>(f: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// The matrix `name` with GGUF dims `[cols, rows]`.
/// Q4_0/Q4_1/Q8_0 matrices are repacked (see [`Linear::packed`]) unless disabled.
pub fn linear(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
    let mut lin = linear_dims(f, name, rows, cols, &[cols as u64, rows as u64])?;
    if repack_enabled() && PackedMatrix::supports(lin.wtype) {
        let start = lin.range.start;
        lin.packed =
            PackedMatrix::pack_releasing(&lin.mat(f), &mut |r| f.release_pages(start + r.start..start + r.end))?
                .map(Arc::new);
    }
    Ok(lin)
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
    if rb.checked_mul(rows) != Some(t.n_bytes as usize) {
        return Err(ModelError::Shape { name: name.into(), expected, found: t.dims.clone() });
    }
    let start = t.offset as usize;
    Ok(Linear { name: name.into(), wtype, rows, cols, range: start..start + t.n_bytes as usize, packed: None })
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

/// Hyper-parameters read from a file's metadata, each checked where it enters: a missing
/// required key, a value of the wrong type (never replaced by a default), a value out of its
/// range or not finite is an error naming the key.
pub struct Meta<'a> {
    pub f: &'a GgufFile,
    /// Key prefix, e.g. `"llama."`.
    pub prefix: &'a str,
}

/// Upper bound for any count or length read from metadata (layers, heads, dims, context):
/// large enough for every published model, small enough that sizes computed from it fit.
pub const META_MAX: usize = 1 << 24;

impl Meta<'_> {
    pub fn key(&self, s: &str) -> String {
        format!("{}{s}", self.prefix)
    }
    fn err(&self, s: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Metadata { key: self.key(s), msg: msg.into() }
    }
    /// An unsigned integer in `lo..=hi`, `None` when absent.
    pub fn opt_usize(&self, s: &str, lo: usize, hi: usize) -> Result<Option<usize>, ModelError> {
        let Some(v) = self.f.get(&self.key(s)) else { return Ok(None) };
        let n: u64 = match *v {
            MetaValue::U8(x) => x as u64,
            MetaValue::U16(x) => x as u64,
            MetaValue::U32(x) => x as u64,
            MetaValue::U64(x) => x,
            MetaValue::I8(x) if x >= 0 => x as u64,
            MetaValue::I16(x) if x >= 0 => x as u64,
            MetaValue::I32(x) if x >= 0 => x as u64,
            MetaValue::I64(x) if x >= 0 => x as u64,
            _ => return Err(self.err(s, format!("expected a non-negative integer, found {}", describe(v)))),
        };
        if n < lo as u64 || n > hi as u64 {
            return Err(self.err(s, format!("{n} is outside {lo}..={hi}")));
        }
        Ok(Some(n as usize))
    }
    /// A required unsigned integer in `lo..=hi`.
    pub fn usize(&self, s: &str, lo: usize, hi: usize) -> Result<usize, ModelError> {
        self.opt_usize(s, lo, hi)?.ok_or_else(|| self.err(s, "missing"))
    }
    /// A finite float with `ok(value)`, `None` when absent.
    pub fn opt_f32(&self, s: &str, what: &str, ok: impl Fn(f32) -> bool) -> Result<Option<f32>, ModelError> {
        let Some(v) = self.f.get(&self.key(s)) else { return Ok(None) };
        let x = match *v {
            MetaValue::F32(x) => x,
            MetaValue::F64(x) => x as f32,
            _ => return Err(self.err(s, format!("expected a float, found {}", describe(v)))),
        };
        if !x.is_finite() || !ok(x) {
            return Err(self.err(s, format!("{x} is not {what}")));
        }
        Ok(Some(x))
    }
    /// A required finite float with `ok(value)`.
    pub fn f32(&self, s: &str, what: &str, ok: impl Fn(f32) -> bool) -> Result<f32, ModelError> {
        self.opt_f32(s, what, ok)?.ok_or_else(|| self.err(s, "missing"))
    }
    pub fn opt_bool(&self, s: &str) -> Result<Option<bool>, ModelError> {
        match self.f.get(&self.key(s)) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(s, format!("expected a bool, found {}", describe(v)))),
        }
    }
    pub fn opt_str(&self, s: &str) -> Result<Option<&str>, ModelError> {
        match self.f.get(&self.key(s)) {
            None => Ok(None),
            Some(MetaValue::String(x)) => Ok(Some(x)),
            Some(v) => Err(self.err(s, format!("expected a string, found {}", describe(v)))),
        }
    }
    /// The vocabulary size: `vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub fn vocab(&self) -> Result<usize, ModelError> {
        match self.opt_usize("vocab_size", 1, META_MAX)? {
            Some(v) => Ok(v),
            None => self
                .f
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .map_err(|e| ModelError::Metadata { key: "tokenizer.ggml.tokens".into(), msg: e.to_string() }),
        }
    }
}

fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) => format!("the string {s:?}"),
        MetaValue::Array(a) => format!("an array of {}", a.len()),
        other => format!("{other:?}"),
    }
}

/// Dequantizes a whole tensor (of exactly `dims`, ggml order) to f32, row-major.
/// The bytes of tensor `name` (shape `dims`) when it is stored as BF16; `None` for any other
/// type (the caller dequantizes those).
pub fn stored_bf16(f: &GgufFile, name: &str, dims: &[u64]) -> Result<Option<Vec<u8>>, ModelError> {
    let t = shaped(f, name, dims)?;
    if latent_quant::WeightType::from_ggml_id(t.ggml_type.id()) != Some(latent_quant::WeightType::BF16) {
        return Ok(None);
    }
    let n = (t.n_elements() as usize).checked_mul(2);
    match f.tensor_data(t).get(..n.unwrap_or(usize::MAX)) {
        Some(b) => Ok(Some(b.to_vec())),
        None => Err(ModelError::Shape { name: name.into(), expected: dims.to_vec(), found: t.dims.clone() }),
    }
}

/// Tensor `name`, required to have GGUF dims `dims`.
fn shaped<'f>(f: &'f GgufFile, name: &str, dims: &[u64]) -> Result<&'f TensorInfo, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.dims != dims {
        return Err(ModelError::Shape { name: name.into(), expected: dims.to_vec(), found: t.dims.clone() });
    }
    Ok(t)
}

/// `[H, A, B]` → `[H, B, A]`: each of `h` row-major `[A, B]` matrices transposed (the
/// per-head up-projections between GGUF's `attn_k_b` layout and the absorbed path's).
pub fn transpose_heads<T: Copy + Default>(w: &[T], h: usize, a: usize, b: usize) -> Vec<T> {
    let mut out = vec![T::default(); h * a * b];
    for hi in 0..h {
        for ai in 0..a {
            for bi in 0..b {
                out[(hi * b + bi) * a + ai] = w[(hi * a + ai) * b + bi];
            }
        }
    }
    out
}

pub fn dequantize(f: &GgufFile, name: &str, dims: &[u64]) -> Result<Vec<f32>, ModelError> {
    let t = shaped(f, name, dims)?;
    let wtype = latent_quant::WeightType::from_ggml_id(t.ggml_type.id())
        .ok_or_else(|| ModelError::TensorType { name: name.into(), ty: t.ggml_type.name().to_string() })?;
    let row = dims[0] as usize;
    let rows = (t.n_elements() as usize) / row.max(1);
    let rb = wtype.row_bytes(row)?;
    let data = f.tensor_data(t);
    if rb.checked_mul(rows).is_none_or(|n| n > data.len()) {
        return Err(ModelError::Shape { name: name.into(), expected: dims.to_vec(), found: t.dims.clone() });
    }
    let mut out = vec![0f32; rows * row];
    for r in 0..rows {
        latent_quant::dequantize_row(wtype, &data[r * rb..(r + 1) * rb], &mut out[r * row..(r + 1) * row])?;
    }
    Ok(out)
}
