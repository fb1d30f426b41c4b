//! Parsing and the [`GgufFile`] handle.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use memmap2::Mmap;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{value_type, MetaValue};
use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_METADATA_VALUES, MIN_KV_ENCODED_SIZE,
    MIN_TENSOR_INFO_ENCODED_SIZE,
};

/// Description of one tensor stored in a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the fastest-varying dimension (the
    /// row length). Between 1 and 4 entries.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    /// Size of the tensor data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dimensions (saturating; never overflows for tensors
    /// read from a file).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Shape in row-major (numpy / PyTorch) order: `dims` reversed.
    pub fn shape_row_major(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A 32-byte aligned chunk; owned file bytes are stored as these so that
/// tensor data is as aligned in memory as it is in the file (up to 32).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Chunk([u8; 32]);

enum Backing {
    Mmap(Mmap),
    Owned { chunks: Vec<Chunk>, len: usize },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned { chunks, len } => {
                // SAFETY: `chunks` is a contiguous allocation of
                // `chunks.len() * 32` initialised bytes (Chunk is repr(C) over
                // a byte array, no padding) and `len <= chunks.len() * 32`.
                // The slice borrows `self`, so the allocation outlives it.
                unsafe { std::slice::from_raw_parts(chunks.as_ptr().cast::<u8>(), *len) }
            }
        }
    }
}

/// A parsed, validated GGUF file. Tensor data is borrowed from the
/// memory map (or owned buffer) without copying.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<Entry>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Arrays of at least this many scalars or strings are validated when the file is opened but
/// parsed into [`MetaValue`]s only when asked for as values (a vocabulary's 49k tokens and
/// merges cost ~10 MB as owned values; the typed accessors read them from the file bytes).
const LAZY_ARRAY: u64 = 1024;

/// One metadata key and its value.
struct Entry {
    key: String,
    value: OnceLock<MetaValue>,
    /// A long flat array still in the file (see [`LAZY_ARRAY`]); `value` is set on first use.
    lazy: Option<LazyArray>,
}

/// Where a validated flat array's elements lie in the file.
#[derive(Clone, Copy, Debug)]
struct LazyArray {
    elem_ty: u32,
    len: u64,
    /// Offset of the first element.
    start: usize,
    /// Offset of the array's element-type field (as the eager parser reports it).
    array_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("file_bytes", &self.file_bytes())
            .field("data_offset", &self.data_offset)
            .field("metadata_kv", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, then parses and validates it.
    ///
    /// The file must not be modified or truncated by anyone while the
    /// returned value is alive (the usual memory-map caveat).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        if meta.len() == 0 {
            // Nothing to map; report it as the parser would.
            return Err(GgufError::Truncated { offset: 0, needed: 4, available: 0 });
        }
        // SAFETY: mapping a regular file read-only. Soundness relies on the
        // file not being changed underneath the map, as documented above.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parses a GGUF image held in memory. The bytes are copied once into a
    /// 32-byte aligned buffer.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_slice(&bytes)
    }

    /// Like [`GgufFile::from_bytes`], from a borrowed slice.
    pub fn from_slice(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let mut chunks = vec![Chunk([0; 32]); bytes.len().div_ceil(32)];
        for (chunk, src) in chunks.iter_mut().zip(bytes.chunks(32)) {
            chunk.0[..src.len()].copy_from_slice(src);
        }
        Self::parse(Backing::Owned { chunks, len: bytes.len() })
    }

    fn parse(backing: Backing) -> Result<GgufFile, GgufError> {
        let parsed = parse_bytes(backing.bytes())?;
        Ok(GgufFile {
            backing,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment: `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset where the tensor data section starts (the end of the
    /// tensor infos rounded up to the alignment).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Drops this process's resident pages of the file bytes `range` (whole pages inside
    /// it) when the file is memory-mapped: for data that was copied out (e.g. repacked
    /// weights), so it does not count twice in the resident set. Later reads of the range
    /// fault the same bytes back in from the file. Best effort: a refused request changes
    /// nothing.
    pub fn release_pages(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Backing::Mmap(m) = &self.backing {
            const PAGE: usize = 4096;
            let start = range.start.next_multiple_of(PAGE);
            let end = (range.end.min(m.len()) / PAGE) * PAGE;
            if end > start {
                // SAFETY: the map is read-only and shared with the file, and this process
                // never writes the file; MADV_DONTNEED only unmaps the pages, and any later
                // access faults in the file's (unchanged) bytes again, so every borrow of
                // the mapping keeps seeing the same contents.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// All metadata key/value pairs, in file order (long arrays are parsed on this call if
    /// they were not yet).
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &MetaValue)> + '_ {
        self.metadata.iter().map(|e| (e.key.as_str(), self.value_of(e)))
    }

    /// Number of metadata key/value pairs.
    pub fn metadata_len(&self) -> usize {
        self.metadata.len()
    }

    /// Whether `key` is present, without parsing a lazy array's elements.
    pub fn contains(&self, key: &str) -> bool {
        self.key_index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| self.value_of(&self.metadata[i]))
    }

    fn value_of<'s>(&'s self, e: &'s Entry) -> &'s MetaValue {
        e.value.get_or_init(|| {
            let la = e.lazy.expect("an entry without a value is a lazy array");
            let mut c = self.lazy_cursor(&la);
            let items = (0..la.len).map(|_| c.value(la.elem_ty, la.array_offset, 1)).collect::<Result<Vec<_>, _>>();
            // The bytes were validated when the file was opened and a file is never changed
            // under its map (see `open`).
            MetaValue::Array(items.expect("a lazy array was validated at open"))
        })
    }

    /// A cursor on the first element of a lazy array.
    fn lazy_cursor(&self, la: &LazyArray) -> Cursor<'_> {
        let buf = self.backing.bytes();
        Cursor { buf, pos: la.start.min(buf.len()), values: 0 }
    }

    /// The lazy array behind `key`, while it has not been parsed into a value.
    fn lazy(&self, key: &str) -> Option<LazyArray> {
        let e = &self.metadata[*self.key_index.get(key)?];
        e.lazy.filter(|_| e.value.get().is_none())
    }

    /// The elements of a lazy scalar array, one at a time.
    fn lazy_scalars(&self, la: LazyArray) -> impl Iterator<Item = Result<MetaValue, GgufError>> + '_ {
        let mut c = self.lazy_cursor(&la);
        (0..la.len).map(move |_| c.value(la.elem_ty, la.array_offset, 1))
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong_type(key, "string", v))
    }

    /// Any integer type whose value fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        int_as(key, self.require(key)?, "u32")
    }

    /// Any integer type whose value fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        int_as(key, self.require(key)?, "u64")
    }

    /// Any integer type whose value fits in `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        int_as(key, self.require(key)?, "i32")
    }

    /// Any integer type whose value fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        int_as(key, self.require(key)?, "i64")
    }

    /// `f32`, `f64` (if finite values stay finite) or any integer.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        to_f32(key, self.require(key)?)
    }

    /// `f32`, `f64` or any integer.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| wrong_type(key, "f64", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| wrong_type(key, "bool", v))
    }

    /// The raw elements of an array value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong_type(key, "array", v))
    }

    /// An array whose elements are all strings (read in place from the file bytes when the
    /// array was left there).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        if let Some(la) = self.lazy(key).filter(|la| la.elem_ty == value_type::STRING) {
            let mut c = self.lazy_cursor(&la);
            return (0..la.len).map(|_| c.str_ref()).collect();
        }
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| wrong_type(key, "array<string>", v))?;
        items.iter().map(|e| e.as_str().ok_or_else(|| wrong_type(key, "array<string>", v))).collect()
    }

    /// An array of `f32`, `f64` or integers, converted to `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        if let Some(la) = self.lazy(key).filter(|la| is_number(la.elem_ty)) {
            return self.lazy_scalars(la).map(|e| to_f32(key, &e?)).collect();
        }
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| wrong_type(key, "array<f32>", v))?;
        items
            .iter()
            .map(|e| match e {
                MetaValue::Array(_) | MetaValue::String(_) | MetaValue::Bool(_) => {
                    Err(wrong_type(key, "array<f32>", v))
                }
                e => to_f32(key, e),
            })
            .collect()
    }

    /// An array of integers that each fit in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.int_array(key, "array<i32>", "i32")
    }

    /// An array of integers that each fit in `u32`.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>, GgufError> {
        self.int_array(key, "array<u32>", "u32")
    }

    fn int_array<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected_array: &'static str,
        expected_elem: &'static str,
    ) -> Result<Vec<T>, GgufError> {
        if let Some(la) = self.lazy(key).filter(|la| is_integer(la.elem_ty)) {
            return self.lazy_scalars(la).map(|e| int_as(key, &e?, expected_elem)).collect();
        }
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| wrong_type(key, expected_array, v))?;
        items
            .iter()
            .map(|e| {
                if e.as_i128().is_none() {
                    return Err(wrong_type(key, expected_array, v));
                }
                int_as(key, e, expected_elem)
            })
            .collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `t.n_bytes` bytes of a tensor of this file. For a `TensorInfo`
    /// that does not describe a range inside this file, returns an empty
    /// slice (never panics).
    ///
    /// In memory, the returned slice starts at an address aligned to
    /// `min(alignment, 32)` bytes (page-aligned base when memory-mapped).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        self.range(t.offset, t.n_bytes).unwrap_or(&[])
    }

    /// Data of the tensor called `name`, if there is one.
    pub fn tensor_data_by_name(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    fn range(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.backing.bytes().get(start..end)
    }
}

fn is_integer(ty: u32) -> bool {
    use value_type as vt;
    matches!(ty, vt::U8 | vt::I8 | vt::U16 | vt::I16 | vt::U32 | vt::I32 | vt::U64 | vt::I64)
}

fn is_number(ty: u32) -> bool {
    is_integer(ty) || matches!(ty, value_type::F32 | value_type::F64)
}

fn wrong_type(key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
    GgufError::WrongType { key: key.to_string(), expected, found: found.describe() }
}

fn int_as<T: TryFrom<i128>>(key: &str, v: &MetaValue, expected: &'static str) -> Result<T, GgufError> {
    let i = v.as_i128().ok_or_else(|| wrong_type(key, expected, v))?;
    T::try_from(i).map_err(|_| GgufError::OutOfRange { key: key.to_string(), expected, value: i.to_string() })
}

fn to_f32(key: &str, v: &MetaValue) -> Result<f32, GgufError> {
    match *v {
        MetaValue::F32(x) => Ok(x),
        MetaValue::F64(x) => {
            let y = x as f32;
            if x.is_finite() && !y.is_finite() {
                Err(GgufError::OutOfRange { key: key.to_string(), expected: "f32", value: x.to_string() })
            } else {
                Ok(y)
            }
        }
        _ => v.as_i128().map(|i| i as f32).ok_or_else(|| wrong_type(key, "f32", v)),
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<Entry>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Bounds-checked little-endian cursor. Every read either succeeds or
/// returns `Truncated` naming the offset; nothing here can panic.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values created so far (scalars, arrays and array elements).
    values: u64,
}

impl<'a> Cursor<'a> {
    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(GgufError::Truncated { offset: self.pos(), needed: n as u64, available: rest.len() as u64 });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Fails with `CountTooLarge` unless `count` items of at least
    /// `min_size` bytes each could fit in what is left of the file.
    fn check_count(&self, offset: u64, what: &'static str, count: u64, min_size: u64) -> Result<(), GgufError> {
        let remaining = self.remaining();
        match count.checked_mul(min_size) {
            Some(total) if total <= remaining => Ok(()),
            _ => Err(GgufError::CountTooLarge { offset, what, count, remaining }),
        }
    }

    fn string(&mut self) -> Result<String, GgufError> {
        self.str_ref().map(str::to_owned)
    }

    /// A string borrowed from the buffer.
    fn str_ref(&mut self) -> Result<&'a str, GgufError> {
        let offset = self.pos();
        let len = self.u64()?;
        self.check_count(offset, "string length", len, 1)?;
        // `len <= remaining`, so it fits in usize.
        let bytes = self.take(len as usize)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    /// Reads the rest of an array value (after its type id) if it is a flat array of at least
    /// [`LAZY_ARRAY`] elements: every element is validated as [`Cursor::value`] would, and
    /// where they lie is returned instead of the values. Anything else leaves the cursor
    /// where it was and returns `None`.
    fn lazy_array(&mut self, depth: usize) -> Result<Option<LazyArray>, GgufError> {
        use value_type as vt;
        let (save, array_offset) = (self.pos, self.pos());
        if depth >= MAX_ARRAY_DEPTH {
            return Ok(None);
        }
        let (Ok(elem_ty), Ok(len)) = (self.u32(), self.u64()) else {
            self.pos = save;
            return Ok(None);
        };
        let size = match elem_ty {
            vt::ARRAY => None,
            t => vt::min_encoded_size(t),
        };
        let Some(size) = size.filter(|_| len >= LAZY_ARRAY) else {
            self.pos = save;
            return Ok(None);
        };
        let len_offset = array_offset + 4;
        self.check_count(len_offset, "array length", len, size)?;
        self.add_values(len_offset, len)?;
        let start = self.pos;
        match elem_ty {
            vt::STRING => {
                for _ in 0..len {
                    self.str_ref()?;
                }
            }
            vt::BOOL => {
                for _ in 0..len {
                    self.value(elem_ty, array_offset, depth + 1)?;
                }
            }
            // Fixed-size numbers: `check_count` above showed they fit.
            _ => {
                self.take((len * size) as usize)?;
            }
        }
        Ok(Some(LazyArray { elem_ty, len, start, array_offset }))
    }

    fn add_values(&mut self, offset: u64, n: u64) -> Result<(), GgufError> {
        match self.values.checked_add(n) {
            Some(total) if total <= MAX_METADATA_VALUES => {
                self.values = total;
                Ok(())
            }
            _ => Err(GgufError::TooManyValues { offset, max: MAX_METADATA_VALUES }),
        }
    }

    /// Reads one value of type `ty` (whose id was read at `ty_offset`).
    /// `depth` is the number of arrays enclosing it.
    fn value(&mut self, ty: u32, ty_offset: u64, depth: usize) -> Result<MetaValue, GgufError> {
        use value_type as vt;
        Ok(match ty {
            vt::U8 => MetaValue::U8(self.u8()?),
            vt::I8 => MetaValue::I8(self.u8()? as i8),
            vt::U16 => MetaValue::U16(self.u16()?),
            vt::I16 => MetaValue::I16(self.u16()? as i16),
            vt::U32 => MetaValue::U32(self.u32()?),
            vt::I32 => MetaValue::I32(self.u32()? as i32),
            vt::U64 => MetaValue::U64(self.u64()?),
            vt::I64 => MetaValue::I64(self.u64()? as i64),
            vt::F32 => MetaValue::F32(f32::from_bits(self.u32()?)),
            vt::F64 => MetaValue::F64(f64::from_bits(self.u64()?)),
            vt::BOOL => {
                let offset = self.pos();
                match self.u8()? {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    value => return Err(GgufError::InvalidBool { offset, value }),
                }
            }
            vt::STRING => MetaValue::String(self.string()?),
            vt::ARRAY => {
                let array_offset = self.pos();
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { offset: ty_offset, max: MAX_ARRAY_DEPTH });
                }
                let elem_ty = self.u32()?;
                let Some(min_size) = vt::min_encoded_size(elem_ty) else {
                    return Err(GgufError::UnknownValueType { offset: array_offset, type_id: elem_ty });
                };
                let len_offset = self.pos();
                let len = self.u64()?;
                self.check_count(len_offset, "array length", len, min_size)?;
                self.add_values(len_offset, len)?;
                // Both checks passed: `len` is at most the file size and at
                // most MAX_METADATA_VALUES, so this allocation is bounded.
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_ty, array_offset, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => return Err(GgufError::UnknownValueType { offset: ty_offset, type_id: other }),
        })
    }
}

/// Where the fields of one tensor info were found, for error reporting
/// after all infos have been read.
struct InfoOffsets {
    offset_field: u64,
}

fn parse_bytes(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0, values: 0 };
    let file_len = buf.len() as u64;

    // --- header ---
    let magic: [u8; 4] = c.array()?;
    if &magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { offset: 0, found: magic });
    }
    let version = c.u32()?;
    match version {
        2 | 3 => {}
        v if v != 0 && v & 0xFFFF == 0 => {
            return Err(GgufError::BigEndian { offset: 4, raw: v });
        }
        v => return Err(GgufError::UnsupportedVersion { offset: 4, version: v }),
    }
    let tensor_count = c.u64()?;
    let kv_count = c.u64()?;
    c.check_count(8, "tensor count", tensor_count, MIN_TENSOR_INFO_ENCODED_SIZE)?;
    c.check_count(16, "metadata kv count", kv_count, MIN_KV_ENCODED_SIZE)?;
    // Both infos and kvs must fit together as well.
    let min_total = tensor_count * MIN_TENSOR_INFO_ENCODED_SIZE + kv_count * MIN_KV_ENCODED_SIZE;
    if min_total > c.remaining() {
        return Err(GgufError::CountTooLarge {
            offset: 8,
            what: "tensor count",
            count: tensor_count,
            remaining: c.remaining().saturating_sub(kv_count * MIN_KV_ENCODED_SIZE),
        });
    }
    // The kv pairs count towards the value budget.
    c.add_values(16, kv_count)?;

    // --- metadata ---
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut key_index = HashMap::with_capacity(kv_count as usize);
    let mut alignment_value_offset = None;
    for i in 0..kv_count as usize {
        let key_offset = c.pos();
        let key = c.string()?;
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { offset: key_offset, key });
        }
        let ty_offset = c.pos();
        let ty = c.u32()?;
        let value_offset = c.pos();
        let lazy = if ty == value_type::ARRAY { c.lazy_array(0)? } else { None };
        let value = match lazy {
            Some(_) => OnceLock::new(),
            None => OnceLock::from(c.value(ty, ty_offset, 0)?),
        };
        if key == super::KEY_ALIGNMENT {
            alignment_value_offset = Some(value_offset);
        }
        key_index.insert(key.clone(), i);
        metadata.push(Entry { key, value, lazy });
    }

    // --- alignment ---
    let alignment = match alignment_value_offset {
        None => DEFAULT_ALIGNMENT,
        Some(offset) => {
            // A long array is no alignment: any stand-in of the wrong type reports it.
            static NOT_A_NUMBER: MetaValue = MetaValue::Array(Vec::new());
            let v = metadata[key_index[super::KEY_ALIGNMENT]].value.get().unwrap_or(&NOT_A_NUMBER);
            let invalid = |detail: String| GgufError::InvalidAlignment { offset, detail };
            let Some(i) = v.as_i128() else {
                return Err(invalid(format!("expected an unsigned integer, found {}", v.describe())));
            };
            match u32::try_from(i) {
                Ok(a) if a.is_power_of_two() => u64::from(a),
                Ok(0) => return Err(invalid("alignment is 0".to_string())),
                Ok(a) => return Err(invalid(format!("{a} is not a power of two"))),
                Err(_) => return Err(invalid(format!("{i} is out of the u32 range"))),
            }
        }
    };

    // --- tensor infos ---
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut tensor_index = HashMap::with_capacity(tensor_count as usize);
    let mut info_offsets = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count as usize {
        let name_offset = c.pos();
        let name = c.string()?;
        if tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor { offset: name_offset, name });
        }
        let n_dims_offset = c.pos();
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::InvalidDimCount { offset: n_dims_offset, name, n_dims });
        }
        let dims_offset = c.pos();
        let mut dims = Vec::with_capacity(n_dims as usize);
        for index in 0..n_dims as usize {
            let dim_offset = c.pos();
            let value = c.u64()?;
            // Stored as int64 by ggml: negative sizes are invalid.
            if value > i64::MAX as u64 {
                return Err(GgufError::InvalidDimension { offset: dim_offset, name, index, value });
            }
            dims.push(value);
        }
        let type_offset = c.pos();
        let type_id = c.u32()?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType { offset: type_offset, name, type_id });
        };
        let offset_field = c.pos();
        let rel_offset = c.u64()?;

        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        let Some(n_elements) = n_elements else {
            return Err(GgufError::ShapeOverflow { offset: dims_offset, name, dims });
        };
        if dims[0] % ggml_type.block_size() != 0 {
            return Err(GgufError::RowNotBlockMultiple {
                offset: dims_offset,
                name,
                ggml_type,
                row_len: dims[0],
                block_size: ggml_type.block_size(),
            });
        }
        let Some(n_bytes) = ggml_type.bytes_for(n_elements) else {
            return Err(GgufError::ShapeOverflow { offset: dims_offset, name, dims });
        };
        if rel_offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor { offset: offset_field, name, data_offset: rel_offset, alignment });
        }
        tensor_index.insert(name.clone(), i);
        tensors.push(TensorInfo { name, dims, ggml_type, offset: rel_offset, n_bytes });
        info_offsets.push(InfoOffsets { offset_field });
    }

    // --- data section ---
    let infos_end = c.pos();
    let data_offset = infos_end.div_ceil(alignment) * alignment;
    for (t, at) in tensors.iter_mut().zip(&info_offsets) {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    offset: at.offset_field,
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }

    // --- overlaps --- (empty tensors occupy no bytes and never overlap)
    let mut order: Vec<usize> = (0..tensors.len()).filter(|&i| tensors[i].n_bytes > 0).collect();
    order.sort_by_key(|&i| (tensors[i].offset, i));
    let mut furthest: Option<usize> = None; // tensor with the largest end so far
    for &i in &order {
        let t = &tensors[i];
        if let Some(f) = furthest {
            let prev = &tensors[f];
            if t.offset < prev.offset + prev.n_bytes {
                // Report whichever of the two comes later in the file's infos.
                let (later, other) = if i > f { (i, f) } else { (f, i) };
                let lt = &tensors[later];
                return Err(GgufError::OverlappingTensors {
                    offset: info_offsets[later].offset_field,
                    name: lt.name.clone(),
                    other: tensors[other].name.clone(),
                    start: lt.offset,
                    end: lt.offset + lt.n_bytes,
                });
            }
        }
        if furthest.is_none_or(|f| t.offset + t.n_bytes > tensors[f].offset + tensors[f].n_bytes) {
            furthest = Some(i);
        }
    }

    Ok(Parsed { version, alignment, data_offset, metadata, key_index, tensors, tensor_index })
}
