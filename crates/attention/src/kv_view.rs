//! Views of a (paged) KV cache as the kernels read it.
//!
//! A cache is a pool of fixed-size blocks; a sequence owns a block table mapping its logical
//! blocks to physical ones. The kernels read every cache through this view: a contiguous
//! cache is the one-block case (`block_size ≥ len`, table `[0]`), not a second code path.
//!
//! A row is the `dim` elements of one (token, KV head) in one plane (K or V). Its bytes
//! start at `table[pos / block_size] · block_bytes + (pos % block_size) · token_bytes +
//! head · head_bytes + offset_bytes` in the pool.

use crate::AttnError;
use latent_kernels::Kernels;

/// Element type of a cache plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
        }
    }
    pub fn parse(s: &str) -> Option<KvDtype> {
        match s {
            "f32" => Some(KvDtype::F32),
            "f16" => Some(KvDtype::F16),
            "bf16" => Some(KvDtype::Bf16),
            _ => None,
        }
    }
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16];

    /// Encode f32 values into this type's little-endian bytes (`dst.len() == n · bytes()`).
    pub fn encode(self, k: &Kernels, src: &[f32], dst: &mut [u8]) {
        match self {
            KvDtype::F32 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&s.to_le_bytes());
                }
            }
            KvDtype::F16 => (k.f32_to_f16)(src, dst),
            KvDtype::Bf16 => (k.f32_to_bf16)(src, dst),
        }
    }

    /// Decode this type's bytes into f32 (`src.len() == n · bytes()`).
    pub fn decode(self, k: &Kernels, src: &[u8], dst: &mut [f32]) {
        match self {
            KvDtype::F32 => (k.f32_from_bytes)(src, dst),
            KvDtype::F16 => (k.f16_to_f32)(src, dst),
            KvDtype::Bf16 => (k.bf16_to_f32)(src, dst),
        }
    }
}

/// Where one plane's rows live inside the pool (all strides in bytes).
#[derive(Clone, Copy, Debug)]
pub struct KvPlane<'a> {
    /// The whole block pool: `[num_blocks, block_bytes]`.
    pub pool: &'a [u8],
    pub dtype: KvDtype,
    pub block_bytes: usize,
    pub token_bytes: usize,
    pub head_bytes: usize,
    pub offset_bytes: usize,
    /// Elements per row.
    pub dim: usize,
}

/// Where value rows come from.
#[derive(Clone, Copy, Debug)]
pub enum ValueSource<'a> {
    /// A plane of its own (MHA/GQA/MQA).
    Plane(KvPlane<'a>),
    /// The first `dim` elements of each key row (MLA's latent cache: keys `[c_KV | k_rope]`,
    /// values `c_KV`). The kernel reuses the key tile it already loaded.
    KeyPrefix { dim: usize },
}

/// One sequence's view of one layer's cache.
#[derive(Clone, Copy, Debug)]
pub struct KvSeq<'a> {
    pub k: KvPlane<'a>,
    pub v: ValueSource<'a>,
    pub kv_heads: usize,
    /// Tokens per block (≥ 1).
    pub block_size: usize,
    /// Logical → physical block ids; at least `ceil(len / block_size)` entries.
    pub table: &'a [u32],
    /// Valid tokens.
    pub len: usize,
}

impl<'a> KvSeq<'a> {
    pub fn dk(&self) -> usize {
        self.k.dim
    }
    pub fn dv(&self) -> usize {
        match self.v {
            ValueSource::Plane(p) => p.dim,
            ValueSource::KeyPrefix { dim } => dim,
        }
    }

    /// Checks every row a kernel may read lies inside the pool.
    pub fn validate(&self, seq: usize) -> Result<(), AttnError> {
        let err = |msg: String| AttnError::Seq { seq, msg };
        if self.block_size == 0 {
            return Err(err("block size 0".into()));
        }
        let blocks = self.len.div_ceil(self.block_size);
        if self.table.len() < blocks {
            return Err(err(format!(
                "block table has {} entries, {} tokens need {}",
                self.table.len(),
                self.len,
                blocks
            )));
        }
        if let ValueSource::KeyPrefix { dim } = self.v {
            if dim > self.k.dim {
                return Err(err(format!("value prefix {dim} longer than key row {}", self.k.dim)));
            }
        }
        let planes: Vec<&KvPlane> = match &self.v {
            ValueSource::Plane(p) => vec![&self.k, p],
            ValueSource::KeyPrefix { .. } => vec![&self.k],
        };
        for p in planes {
            if self.len == 0 {
                continue;
            }
            let last_tok = (self.block_size.min(self.len) - 1) * p.token_bytes;
            let row_end = p.offset_bytes + (self.kv_heads - 1) * p.head_bytes + p.dim * p.dtype.bytes();
            for &b in &self.table[..blocks] {
                let end = (b as usize)
                    .checked_mul(p.block_bytes)
                    .and_then(|s| s.checked_add(last_tok + row_end))
                    .ok_or_else(|| err("block offset overflows".into()))?;
                if end > p.pool.len() {
                    return Err(err(format!("block {b} ends at byte {end}, pool has {}", p.pool.len())));
                }
            }
        }
        Ok(())
    }
}

impl KvPlane<'_> {
    /// Decodes rows `start..start+n` of `head` into `out` (`[n, dim]`, row stride `dim`).
    /// Walks block by block: one table lookup per block, not per row.
    pub(crate) fn load_rows(&self, k: &Kernels, seq: &KvSeq, head: usize, start: usize, n: usize, out: &mut [f32]) {
        let rb = self.dim * self.dtype.bytes();
        let bs = seq.block_size;
        let mut i = 0;
        while i < n {
            let pos = start + i;
            let (blk, within) = (pos / bs, pos % bs);
            let run = (bs - within).min(n - i);
            let mut off = seq.table[blk] as usize * self.block_bytes
                + within * self.token_bytes
                + head * self.head_bytes
                + self.offset_bytes;
            for r in 0..run {
                self.dtype.decode(k, &self.pool[off..off + rb], &mut out[(i + r) * self.dim..(i + r + 1) * self.dim]);
                off += self.token_bytes;
            }
            i += run;
        }
    }
}

/// A dense cache in its own buffer: `[len, kv_heads, dim]` rows for K and V, one block.
/// Handy for tests and benchmarks; the kernels see it as a one-block paged cache.
pub struct DenseKv {
    pub k: Vec<u8>, // [len, kv_heads, dk] in `dtype`
    pub v: Vec<u8>, // [len, kv_heads, dv] in `dtype`
    pub dtype: KvDtype,
    pub len: usize,
    pub kv_heads: usize,
    pub dk: usize,
    pub dv: usize,
}

pub const ONE_BLOCK: [u32; 1] = [0];

impl DenseKv {
    /// Encodes f32 `k` `[len, kv_heads, dk]` and `v` `[len, kv_heads, dv]`.
    pub fn new(dtype: KvDtype, kv_heads: usize, dk: usize, dv: usize, k: &[f32], v: &[f32]) -> DenseKv {
        let kern = Kernels::best();
        let len = k.len().checked_div(kv_heads * dk).unwrap_or(0);
        assert_eq!(k.len(), len * kv_heads * dk);
        assert_eq!(v.len(), len * kv_heads * dv);
        let mut kb = vec![0u8; k.len() * dtype.bytes()];
        let mut vb = vec![0u8; v.len() * dtype.bytes()];
        dtype.encode(kern, k, &mut kb);
        dtype.encode(kern, v, &mut vb);
        DenseKv { k: kb, v: vb, dtype, len, kv_heads, dk, dv }
    }

    pub fn view(&self) -> KvSeq<'_> {
        let e = self.dtype.bytes();
        let plane = |pool, dim: usize| KvPlane {
            pool,
            dtype: self.dtype,
            block_bytes: 0,
            token_bytes: self.kv_heads * dim * e,
            head_bytes: dim * e,
            offset_bytes: 0,
            dim,
        };
        KvSeq {
            k: plane(self.k.as_slice(), self.dk),
            v: ValueSource::Plane(plane(self.v.as_slice(), self.dv)),
            kv_heads: self.kv_heads,
            block_size: self.len.max(1),
            table: &ONE_BLOCK,
            len: self.len,
        }
    }
}

/// A dense latent cache (MLA / low-rank): rows `[S, Dk]`, values are the first `dv` elements.
pub struct DenseLatent {
    pub rows: Vec<u8>, // [S, Dk] in `dtype`
    pub dtype: KvDtype,
    pub len: usize,
    pub dk: usize,
    pub dv: usize,
}

impl DenseLatent {
    /// Encodes f32 rows `[S, dk]`; values are each row's first `dv` elements.
    pub fn new(dtype: KvDtype, dk: usize, dv: usize, rows: &[f32]) -> DenseLatent {
        let len = rows.len().checked_div(dk).unwrap_or(0);
        let mut b = vec![0u8; rows.len() * dtype.bytes()];
        dtype.encode(Kernels::best(), rows, &mut b);
        DenseLatent { rows: b, dtype, len, dk, dv }
    }

    pub fn view(&self) -> KvSeq<'_> {
        let e = self.dtype.bytes();
        KvSeq {
            k: KvPlane {
                pool: &self.rows,
                dtype: self.dtype,
                block_bytes: 0,
                token_bytes: self.dk * e,
                head_bytes: 0,
                offset_bytes: 0,
                dim: self.dk,
            },
            v: ValueSource::KeyPrefix { dim: self.dv },
            kv_heads: 1,
            block_size: self.len.max(1),
            table: &ONE_BLOCK,
            len: self.len,
        }
    }
}

impl KvSeq<'_> {
    /// Decodes key rows `start..start+n` of `head` to f32 `[n, Dk]`.
    pub fn read_keys(&self, head: usize, start: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.k.dim];
        self.k.load_rows(Kernels::best(), self, head, start, n, &mut out);
        out
    }
}
