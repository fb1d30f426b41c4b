//! latent-formats: model file formats.
//!
//! Currently: GGUF ([`gguf`]), read through a memory map with full
//! validation, and written with [`gguf::GgufBuilder`].

pub mod gguf;

pub use gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, MetaValue, TensorInfo};
