//! Building GGUF files.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{value_type, MetaValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_METADATA_VALUES};

/// Which header field a [`FieldSpan`] locates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Magic,
    Version,
    TensorCount,
    KvCount,
    /// Length prefix of a metadata key.
    KeyLength,
    /// Value type id of a key/value pair.
    ValueType,
    /// Element type id of an array.
    ArrayType,
    /// Element count of an array.
    ArrayLength,
    /// Length prefix of a string value (or string array element).
    StringLength,
    /// A bool value byte.
    Bool,
    /// Length prefix of a tensor name.
    TensorNameLength,
    NDims,
    Dim,
    TensorType,
    /// Tensor data offset (relative to the data section).
    TensorOffset,
}

/// Position of one numeric field in a built file, as reported by
/// [`GgufBuilder::build_with_layout`]; useful for diagnostics and for
/// producing deliberately corrupted files in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpan {
    pub kind: FieldKind,
    /// Absolute byte offset of the field.
    pub offset: u64,
    /// Width of the field in bytes (1, 4 or 8).
    pub len: u8,
}

struct Head {
    bytes: Vec<u8>,
    spans: Vec<FieldSpan>,
}

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a valid GGUF file from metadata and tensors.
///
/// ```
/// use latent_formats::gguf::{GgufBuilder, GgufFile, GgmlType};
/// let mut b = GgufBuilder::new();
/// b.meta("general.architecture", "llama")
///     .meta("llama.block_count", 2u32)
///     .tensor_f32("norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0]);
/// let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
/// assert_eq!(f.architecture().unwrap(), "llama");
/// assert_eq!(f.tensor("norm.weight").unwrap().ggml_type, GgmlType::F32);
/// ```
///
/// Tensor data is laid out in insertion order, each tensor starting at a
/// multiple of the alignment and padded with zeros up to the next multiple
/// (including the last one, as ggml does). Arrays are written with the type
/// of their first element; an empty array is written as `array<u8>`.
pub struct GgufBuilder<'a> {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufBuilder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufBuilder<'a> {
    /// An empty version-3 file.
    pub fn new() -> Self {
        GgufBuilder { version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Sets the version written in the header (2 or 3; both share one layout).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets `general.alignment` (as a `u32`). Must be a power of two.
    pub fn alignment(&mut self, alignment: u32) -> &mut Self {
        self.meta(KEY_ALIGNMENT, alignment)
    }

    /// Adds a metadata pair, or replaces the value of an existing key in place.
    pub fn meta(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor. `dims` are in ggml order (`dims[0]` = row length);
    /// `data` must be exactly the tensor's size in bytes (checked by `build`).
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor { name: name.into(), dims: dims.to_vec(), ggml_type, data: data.into() });
        self
    }

    /// Adds an `F32` tensor from values.
    pub fn tensor_f32(&mut self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> &mut Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, bytes)
    }

    /// The complete file.
    pub fn build(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// The complete file, and where each numeric header field was written.
    pub fn build_with_layout(&self) -> Result<(Vec<u8>, Vec<FieldSpan>), GgufError> {
        let Head { bytes: mut out, spans } = self.encode_head()?;
        let alignment = self.effective_alignment()?;
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad_vec(&mut out, alignment);
        }
        Ok((out, spans))
    }

    /// Streams the file to `w`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<u64, GgufError> {
        let head = self.encode_head()?.bytes;
        let alignment = self.effective_alignment()?;
        w.write_all(&head).map_err(GgufError::Write)?;
        let mut written = head.len() as u64;
        let zeros = vec![0u8; alignment.min(4096) as usize];
        for t in &self.tensors {
            w.write_all(&t.data).map_err(GgufError::Write)?;
            written += t.data.len() as u64;
            let mut pad = padding(written, alignment);
            while pad > 0 {
                let n = pad.min(zeros.len() as u64);
                w.write_all(&zeros[..n as usize]).map_err(GgufError::Write)?;
                pad -= n;
            }
            written += padding(written, alignment);
        }
        w.flush().map_err(GgufError::Write)?;
        Ok(written)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| GgufError::Io { path: path.to_path_buf(), source })?;
        self.write_to(BufWriter::new(file))
    }

    fn effective_alignment(&self) -> Result<u64, GgufError> {
        let Some((_, v)) = self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= u64::from(u32::MAX) => Ok(a),
            _ => Err(GgufError::Build(format!("{KEY_ALIGNMENT} must be a power of two that fits in u32, got {v:?}"))),
        }
    }

    /// Header, metadata, tensor infos and padding up to the data section,
    /// with the positions of the numeric fields.
    fn encode_head(&self) -> Result<Head, GgufError> {
        if self.version != 2 && self.version != 3 {
            return Err(GgufError::Build(format!("version must be 2 or 3, got {}", self.version)));
        }
        let alignment = self.effective_alignment()?;

        // Validate tensors and lay out the data section.
        let mut names = HashSet::new();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut cursor = 0u64;
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::Build(format!("duplicate tensor {:?}", t.name)));
            }
            let n_bytes = validate_tensor(t)?;
            offsets.push(cursor);
            cursor = cursor
                .checked_add(n_bytes)
                .map(|end| end + padding(end, alignment))
                .ok_or_else(|| GgufError::Build("data section too large".into()))?;
        }

        let mut e = Encoder { out: Vec::new(), spans: Vec::new(), values: 0 };
        e.out.extend_from_slice(GGUF_MAGIC);
        e.spans.push(FieldSpan { kind: FieldKind::Magic, offset: 0, len: 4 });
        e.u32(FieldKind::Version, self.version);
        e.u64(FieldKind::TensorCount, self.tensors.len() as u64);
        e.u64(FieldKind::KvCount, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            e.string(FieldKind::KeyLength, key);
            e.u32(FieldKind::ValueType, value.type_id());
            e.payload(value, 0)?;
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            e.string(FieldKind::TensorNameLength, &t.name);
            e.u32(FieldKind::NDims, t.dims.len() as u32);
            for &d in &t.dims {
                e.u64(FieldKind::Dim, d);
            }
            e.u32(FieldKind::TensorType, t.ggml_type.id());
            e.u64(FieldKind::TensorOffset, off);
        }
        pad_vec(&mut e.out, alignment);
        Ok(Head { bytes: e.out, spans: e.spans })
    }
}

fn validate_tensor(t: &PendingTensor<'_>) -> Result<u64, GgufError> {
    let err = |msg: String| Err(GgufError::Build(format!("tensor {:?}: {msg}", t.name)));
    if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
        return err(format!("needs 1..={MAX_DIMS} dims, got {}", t.dims.len()));
    }
    if t.dims.iter().any(|&d| d > i64::MAX as u64) {
        return err(format!("dims {:?} out of range", t.dims));
    }
    let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
    let Some(n) = n else {
        return err(format!("dims {:?} overflow", t.dims));
    };
    if !t.dims[0].is_multiple_of(t.ggml_type.block_size()) {
        return err(format!(
            "row length {} is not a multiple of the {} block size {}",
            t.dims[0],
            t.ggml_type,
            t.ggml_type.block_size()
        ));
    }
    let Some(n_bytes) = t.ggml_type.bytes_for(n) else {
        return err(format!("dims {:?} overflow", t.dims));
    };
    if t.data.len() as u64 != n_bytes {
        return err(format!(
            "has {} bytes of data, its shape {:?} of {} needs {n_bytes}",
            t.data.len(),
            t.dims,
            t.ggml_type
        ));
    }
    Ok(n_bytes)
}

fn padding(pos: u64, alignment: u64) -> u64 {
    (alignment - pos % alignment) % alignment
}

fn pad_vec(out: &mut Vec<u8>, alignment: u64) {
    let pad = padding(out.len() as u64, alignment);
    out.resize(out.len() + pad as usize, 0);
}

struct Encoder {
    out: Vec<u8>,
    spans: Vec<FieldSpan>,
    values: u64,
}

impl Encoder {
    fn span(&mut self, kind: FieldKind, len: u8) {
        self.spans.push(FieldSpan { kind, offset: self.out.len() as u64, len });
    }

    fn u32(&mut self, kind: FieldKind, v: u32) {
        self.span(kind, 4);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, kind: FieldKind, v: u64) {
        self.span(kind, 8);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, kind: FieldKind, s: &str) {
        self.u64(kind, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    fn count_values(&mut self, n: u64) -> Result<(), GgufError> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(GgufError::Build(format!("more than {MAX_METADATA_VALUES} metadata values")));
        }
        Ok(())
    }

    /// The value's bytes without its own type id. `depth` = enclosing arrays.
    fn payload(&mut self, v: &MetaValue, depth: usize) -> Result<(), GgufError> {
        if depth == 0 {
            self.count_values(1)?;
        }
        let o = &mut self.out;
        match v {
            MetaValue::U8(x) => o.push(*x),
            MetaValue::I8(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U16(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U64(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => o.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => {
                self.span(FieldKind::Bool, 1);
                self.out.push(u8::from(*x));
            }
            MetaValue::String(s) => self.string(FieldKind::StringLength, s),
            MetaValue::Array(items) => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Build(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem_ty = items.first().map_or(value_type::U8, MetaValue::type_id);
                if let Some(bad) = items.iter().find(|i| i.type_id() != elem_ty) {
                    return Err(GgufError::Build(format!(
                        "array mixes element types {} and {}",
                        value_type::name(elem_ty).unwrap_or("?"),
                        bad.type_name()
                    )));
                }
                self.count_values(items.len() as u64)?;
                self.u32(FieldKind::ArrayType, elem_ty);
                self.u64(FieldKind::ArrayLength, items.len() as u64);
                for item in items {
                    self.payload(item, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}
