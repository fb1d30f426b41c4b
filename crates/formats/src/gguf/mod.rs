//! Reading and writing GGUF (versions 2 and 3, little-endian).
//!
//! [`GgufFile`] parses and validates a whole file up front: any malformed
//! input yields a [`GgufError`] naming the byte offset of the bad field,
//! never a panic, and no count read from the file is used to allocate memory
//! before it has been checked against the bytes that remain. Tensor data is
//! then served as borrowed slices of the memory map.
//!
//! [`GgufBuilder`] produces valid files in memory or on disk.
//!
//! The format is described in `docs/GGUF.md` at the repository root.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{value_type, MetaValue};
pub use writer::{FieldKind, FieldSpan, GgufBuilder};

/// The four magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when the file has no
/// `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides the alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// Tensors have between 1 and this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Deepest accepted nesting of arrays (an array of scalars has depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Upper bound on the number of metadata values in one file, counting each
/// key/value pair and each array element. Bounds the memory a hostile file
/// can make the parser allocate (each value takes ~32 bytes in memory)
/// while leaving ample room for real tokenizers (a few hundred thousand
/// entries per array).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Fewest bytes a key/value pair can occupy: key length (8), value type (4),
/// one byte of value.
pub(crate) const MIN_KV_ENCODED_SIZE: u64 = 13;
/// Fewest bytes a tensor info can occupy: name length (8), n_dims (4), one
/// dimension (8), type (4), offset (8).
pub(crate) const MIN_TENSOR_INFO_ENCODED_SIZE: u64 = 32;
