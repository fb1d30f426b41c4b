//! Errors.

use std::path::PathBuf;

use super::types::GgmlType;

/// Everything that can go wrong reading or building a GGUF file.
///
/// Every variant caused by file content carries `offset`: the absolute byte
/// offset in the file of the field that was found to be invalid (see
/// [`GgufError::offset`]).
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, inspected or mapped.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a built file failed.
    #[error("cannot write GGUF: {0}")]
    Write(#[source] std::io::Error),

    #[error("unexpected end of file at offset {offset}: need {needed} bytes, {available} available")]
    Truncated { offset: u64, needed: u64, available: u64 },
    #[error("bad magic at offset {offset}: expected \"GGUF\", found {found:02x?}")]
    BadMagic { offset: u64, found: [u8; 4] },
    #[error("unsupported GGUF version {version} at offset {offset} (supported: 2, 3)")]
    UnsupportedVersion { offset: u64, version: u32 },
    #[error("big-endian GGUF is not supported (version field at offset {offset} reads {raw:#010x})")]
    BigEndian { offset: u64, raw: u32 },
    /// A count or length cannot possibly be satisfied by the bytes left in
    /// the file; rejected before anything is allocated for it.
    #[error("{what} {count} at offset {offset} cannot fit in the {remaining} bytes that follow")]
    CountTooLarge { offset: u64, what: &'static str, count: u64, remaining: u64 },
    #[error("invalid UTF-8 in string at offset {offset}")]
    InvalidUtf8 { offset: u64 },
    #[error("unknown metadata value type {type_id} at offset {offset}")]
    UnknownValueType { offset: u64, type_id: u32 },
    #[error("invalid bool {value} at offset {offset} (must be 0 or 1)")]
    InvalidBool { offset: u64, value: u8 },
    #[error("arrays nested more than {max} deep at offset {offset}")]
    NestingTooDeep { offset: u64, max: usize },
    #[error("metadata holds more than {max} values (array at offset {offset})")]
    TooManyValues { offset: u64, max: u64 },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { offset: u64, key: String },
    #[error("invalid general.alignment at offset {offset}: {detail}")]
    InvalidAlignment { offset: u64, detail: String },

    #[error("duplicate tensor name {name:?} at offset {offset}")]
    DuplicateTensor { offset: u64, name: String },
    #[error("tensor {name:?}: n_dims {n_dims} at offset {offset} is not in 1..=4")]
    InvalidDimCount { offset: u64, name: String, n_dims: u32 },
    #[error("tensor {name:?}: dimension {index} at offset {offset} has invalid size {value}")]
    InvalidDimension { offset: u64, name: String, index: usize, value: u64 },
    #[error("tensor {name:?}: shape {dims:?} (dims at offset {offset}) overflows")]
    ShapeOverflow { offset: u64, name: String, dims: Vec<u64> },
    #[error("tensor {name:?}: unknown ggml type id {type_id} at offset {offset}")]
    UnknownTensorType { offset: u64, name: String, type_id: u32 },
    #[error("tensor {name:?}: row length {row_len} (offset {offset}) is not a multiple of the {ggml_type} block size {block_size}")]
    RowNotBlockMultiple { offset: u64, name: String, ggml_type: GgmlType, row_len: u64, block_size: u64 },
    #[error("tensor {name:?}: data offset {data_offset} (field at offset {offset}) is not a multiple of the alignment {alignment}")]
    MisalignedTensor { offset: u64, name: String, data_offset: u64, alignment: u64 },
    /// `start`/`end` are absolute file positions (`end` saturates at `u64::MAX`).
    #[error("tensor {name:?}: data [{start}, {end}) (offset field at {offset}) extends past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds { offset: u64, name: String, start: u64, end: u64, file_len: u64 },
    #[error("tensor {name:?}: data [{start}, {end}) (offset field at {offset}) overlaps tensor {other:?}")]
    OverlappingTensors { offset: u64, name: String, other: String, start: u64, end: u64 },

    #[error("missing metadata key {key:?}")]
    MissingKey { key: String },
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("metadata key {key:?}: value {value} does not fit in {expected}")]
    OutOfRange { key: String, expected: &'static str, value: String },

    /// The builder was given something that cannot be written as valid GGUF.
    #[error("cannot build GGUF: {0}")]
    Build(String),
}

impl GgufError {
    /// Absolute byte offset of the offending field, for errors caused by
    /// file content; `None` for I/O, lookup and builder errors.
    pub fn offset(&self) -> Option<u64> {
        use GgufError::*;
        match self {
            Truncated { offset, .. }
            | BadMagic { offset, .. }
            | UnsupportedVersion { offset, .. }
            | BigEndian { offset, .. }
            | CountTooLarge { offset, .. }
            | InvalidUtf8 { offset }
            | UnknownValueType { offset, .. }
            | InvalidBool { offset, .. }
            | NestingTooDeep { offset, .. }
            | TooManyValues { offset, .. }
            | DuplicateKey { offset, .. }
            | InvalidAlignment { offset, .. }
            | DuplicateTensor { offset, .. }
            | InvalidDimCount { offset, .. }
            | InvalidDimension { offset, .. }
            | ShapeOverflow { offset, .. }
            | UnknownTensorType { offset, .. }
            | RowNotBlockMultiple { offset, .. }
            | MisalignedTensor { offset, .. }
            | TensorOutOfBounds { offset, .. }
            | OverlappingTensors { offset, .. } => Some(*offset),
            Io { .. } | Write(_) | MissingKey { .. } | WrongType { .. } | OutOfRange { .. } | Build(_) => None,
        }
    }
}
