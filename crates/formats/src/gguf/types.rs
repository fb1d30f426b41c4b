//! The ggml tensor element types that can appear in a GGUF file.

use std::fmt;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $size:literal; )*) => {
        /// A ggml tensor type, identified in GGUF files by a `u32` id.
        ///
        /// Every type stores its elements in blocks: [`GgmlType::block_size`]
        /// elements packed into [`GgmlType::type_size`] bytes. Plain types
        /// (`F32`, `F16`, `BF16`, integers) have a block size of 1.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant,)*];

            /// The numeric id stored in GGUF tensor infos.
            pub const fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// The type for a numeric id, or `None` for ids that ggml does not
            /// define (or no longer accepts in files).
            pub const fn from_id(id: u32) -> Option<GgmlType> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }

            /// Canonical upper-case name, e.g. `"Q4_K"`, `"F32"`.
            pub const fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Number of elements in one block.
            pub const fn block_size(self) -> u64 {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Number of bytes in one block.
            pub const fn type_size(self) -> u64 {
                match self { $(GgmlType::$variant => $size,)* }
            }
        }
    };
}

ggml_types! {
    /// 32-bit IEEE float.
    F32 = 0, "F32", 1, 4;
    /// 16-bit IEEE half float.
    F16 = 1, "F16", 1, 2;
    /// 4-bit, f16 scale.
    Q4_0 = 2, "Q4_0", 32, 18;
    /// 4-bit, f16 scale and f16 minimum.
    Q4_1 = 3, "Q4_1", 32, 20;
    /// 5-bit, f16 scale.
    Q5_0 = 6, "Q5_0", 32, 22;
    /// 5-bit, f16 scale and f16 minimum.
    Q5_1 = 7, "Q5_1", 32, 24;
    /// 8-bit, f16 scale.
    Q8_0 = 8, "Q8_0", 32, 34;
    /// 8-bit, f16 scale and f16 sum.
    Q8_1 = 9, "Q8_1", 32, 36;
    /// 2-bit k-quant.
    Q2_K = 10, "Q2_K", 256, 84;
    /// 3-bit k-quant.
    Q3_K = 11, "Q3_K", 256, 110;
    /// 4-bit k-quant.
    Q4_K = 12, "Q4_K", 256, 144;
    /// 5-bit k-quant.
    Q5_K = 13, "Q5_K", 256, 176;
    /// 6-bit k-quant.
    Q6_K = 14, "Q6_K", 256, 210;
    /// 8-bit k-quant (f32 scale, block sums).
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    /// 8-bit signed integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit signed integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit signed integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit signed integer.
    I64 = 27, "I64", 1, 8;
    /// 64-bit IEEE float.
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    /// bfloat16.
    BF16 = 30, "BF16", 1, 2;
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34, "TQ1_0", 256, 54;
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35, "TQ2_0", 256, 66;
    /// Microscaling FP4 (E8M0 scale).
    MXFP4 = 39, "MXFP4", 32, 17;
    /// NVIDIA FP4 (E4M3 scales).
    NVFP4 = 40, "NVFP4", 64, 36;
    /// 1-bit, f16 scale.
    Q1_0 = 41, "Q1_0", 128, 18;
}

impl GgmlType {
    /// Parses a type name case-insensitively (`"q4_k"`, `"F32"`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// True for block-quantized types (block size > 1).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not
    /// a multiple of the block size or the result overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
