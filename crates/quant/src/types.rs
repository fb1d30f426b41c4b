//! Weight types, block geometry and errors.

use std::fmt;

/// Elements per block of the 32-element formats (Q4_0, Q4_1, Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the K-quant formats (Q4_K, Q5_K, Q6_K, Q8_K).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in a Q4_K / Q5_K super-block.
pub const K_SCALE_SIZE: usize = 12;
/// Bytes of one Q8_K block (`f32 d; i8 qs[256]; i16 bsums[16]`).
pub const Q8_K_BLOCK_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);

/// A weight storage type, with ggml's exact block layouts (little-endian).
///
/// | type | block | bytes | layout |
/// |------|-------|-------|--------|
/// | F32  | 1   | 4   | `f32` |
/// | F16  | 1   | 2   | IEEE binary16 |
/// | BF16 | 1   | 2   | bfloat16 (upper half of an f32) |
/// | Q4_0 | 32  | 18  | `f16 d; u8 qs[16]`: `x[j] = (qs[j] & 15) - 8`, `x[j+16] = (qs[j] >> 4) - 8`, times `d` |
/// | Q4_1 | 32  | 20  | `f16 d; f16 m; u8 qs[16]`: same nibble order, `x = q * d + m` |
/// | Q8_0 | 32  | 34  | `f16 d; i8 qs[32]`: `x = q * d` |
/// | Q4_K | 256 | 144 | `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]` |
/// | Q5_K | 256 | 176 | `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]` |
/// | Q6_K | 256 | 210 | `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` |
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl WeightType {
    /// Every supported type.
    pub const ALL: [WeightType; 9] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q8_0,
        WeightType::Q4_K,
        WeightType::Q5_K,
        WeightType::Q6_K,
    ];

    /// Maps a `ggml_type` id (as stored in GGUF tensor infos) to a supported type.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => WeightType::F32,
            1 => WeightType::F16,
            2 => WeightType::Q4_0,
            3 => WeightType::Q4_1,
            8 => WeightType::Q8_0,
            12 => WeightType::Q4_K,
            13 => WeightType::Q5_K,
            14 => WeightType::Q6_K,
            30 => WeightType::BF16,
            _ => return None,
        })
    }

    /// The `ggml_type` id of this type.
    pub fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q8_0 => 8,
            WeightType::Q4_K => 12,
            WeightType::Q5_K => 13,
            WeightType::Q6_K => 14,
            WeightType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => QK,
            WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => 2 + QK / 2,
            WeightType::Q4_1 => 4 + QK / 2,
            WeightType::Q8_0 => 2 + QK,
            WeightType::Q4_K => 4 + K_SCALE_SIZE + QK_K / 2,
            WeightType::Q5_K => 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2,
            WeightType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes of a row of `n` elements; `n` must be a multiple of the block size.
    pub fn row_bytes(self, n: usize) -> Result<usize, QuantError> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(QuantError::NotBlockMultiple { what: self.name(), n, block: bs });
        }
        (n / bs).checked_mul(self.type_size()).ok_or(QuantError::Overflow("row bytes"))
    }

    /// ggml's name of the type (`"q4_K"` etc.).
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::BF16 => "bf16",
            WeightType::Q4_0 => "q4_0",
            WeightType::Q4_1 => "q4_1",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_K => "q4_K",
            WeightType::Q5_K => "q5_K",
            WeightType::Q6_K => "q6_K",
        }
    }

    /// True for the block-quantized types (everything but F32/F16/BF16).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// True for the 256-element super-block types.
    pub fn is_k_quant(self) -> bool {
        self.block_size() == QK_K
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of this crate. Every public entry point validates its inputs and returns one of
/// these instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{what}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple { what: &'static str, n: usize, block: usize },
    #[error("{what}: length {got}, expected {expected}")]
    BufferLength { what: &'static str, expected: usize, got: usize },
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
    #[error("row range {start}..{end} is out of bounds for {rows} rows")]
    RowRange { start: usize, end: usize, rows: usize },
    #[error("input prepared for {prepared} weights cannot be used with {weights} weights")]
    PreparedMismatch { prepared: WeightType, weights: WeightType },
    #[error("kernel variant {0} is not available on this CPU")]
    VariantUnavailable(&'static str),
}

pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), QuantError> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::BufferLength { what, expected, got })
    }
}
