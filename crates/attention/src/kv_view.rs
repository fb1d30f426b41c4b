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
use latent_kernels::{Elem, Kernels, RawMat};

/// Element type of a cache plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
    /// FP8 E4M3 with one f32 scale per group of elements (scale = max|x| / 448).
    Fp8,
    /// Symmetric int8 with one f32 scale per group of elements (scale = max|x| / 127).
    Int8,
}

/// Elements sharing one scale in the 8-bit types.
pub const SCALE_GROUP: usize = 128;

impl KvDtype {
    /// Bytes per element, not counting scales.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::Fp8 | KvDtype::Int8 => 1,
        }
    }
    pub fn is_8bit(self) -> bool {
        matches!(self, KvDtype::Fp8 | KvDtype::Int8)
    }
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
            KvDtype::Int8 => "int8",
        }
    }
    pub fn parse(s: &str) -> Option<KvDtype> {
        KvDtype::ALL.into_iter().find(|d| d.name() == s)
    }
    pub const ALL: [KvDtype; 5] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8, KvDtype::Int8];
    /// The types without scales.
    pub const FLOAT: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16];

    /// Encodes f32 values of a scale-free type (`dst.len() == n · bytes()`).
    fn encode_plain(self, k: &Kernels, src: &[f32], dst: &mut [u8]) {
        match self {
            KvDtype::F32 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&s.to_le_bytes());
                }
            }
            KvDtype::F16 => (k.f32_to_f16)(src, dst),
            KvDtype::Bf16 => (k.f32_to_bf16)(src, dst),
            KvDtype::Fp8 | KvDtype::Int8 => unreachable!("8-bit types encode through RowFormat"),
        }
    }

    fn decode_plain(self, k: &Kernels, src: &[u8], dst: &mut [f32]) {
        match self {
            KvDtype::F32 => (k.f32_from_bytes)(src, dst),
            KvDtype::F16 => (k.f16_to_f32)(src, dst),
            KvDtype::Bf16 => (k.bf16_to_f32)(src, dst),
            KvDtype::Fp8 | KvDtype::Int8 => unreachable!("8-bit types decode through RowFormat"),
        }
    }
}

/// How one row of `dim` elements is stored.
///
/// Byte layout: `[main | scales | tail]` where `main` is the first `dim − tail_bf16`
/// elements in `dtype`; for 8-bit types `scales` holds one little-endian f32 per `group`
/// elements of `main` (none otherwise); `tail` holds the last `tail_bf16` elements as
/// bfloat16 (MLA keeps its RoPE key in bf16 under an 8-bit latent). With R = 512, P = 64,
/// FP8 and group 128 a latent row is 512 + 16 + 128 = 656 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowFormat {
    pub dtype: KvDtype,
    pub group: usize,
    pub tail_bf16: usize,
}

impl RowFormat {
    /// Every element in `dtype` (scales per [`SCALE_GROUP`] for 8-bit types).
    pub fn plain(dtype: KvDtype) -> RowFormat {
        RowFormat { dtype, group: SCALE_GROUP, tail_bf16: 0 }
    }
    /// An MLA latent row `[c_KV (R) | k_rope (P)]`: with an 8-bit dtype the RoPE part stays
    /// bf16.
    pub fn latent(dtype: KvDtype, rope_dim: usize) -> RowFormat {
        RowFormat { dtype, group: SCALE_GROUP, tail_bf16: if dtype.is_8bit() { rope_dim } else { 0 } }
    }

    /// Every element in a scale-free type (rows can be converted many at a time).
    pub fn is_plain(&self) -> bool {
        !self.dtype.is_8bit() && self.tail_bf16 == 0
    }

    fn split(&self, dim: usize) -> (usize, usize) {
        let tail = self.tail_bf16.min(dim);
        (dim - tail, tail)
    }

    /// Bytes of one row of `dim` elements, scales included.
    pub fn row_bytes(&self, dim: usize) -> usize {
        let (main, tail) = self.split(dim);
        let scales = if self.dtype.is_8bit() { main.div_ceil(self.group.max(1)) * 4 } else { 0 };
        main * self.dtype.bytes() + scales + tail * 2
    }

    /// Encodes one row `src` `[dim]` into `dst` (`row_bytes(dim)` bytes).
    pub fn encode(&self, k: &Kernels, src: &[f32], dst: &mut [u8]) {
        let (main, tail) = self.split(src.len());
        let mb = main * self.dtype.bytes();
        if self.dtype.is_8bit() {
            let g = self.group.max(1);
            let (data, rest) = dst.split_at_mut(mb);
            for (gi, (chunk, out)) in src[..main].chunks(g).zip(data.chunks_mut(g)).enumerate() {
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let qmax = if self.dtype == KvDtype::Fp8 { latent_kernels::fp8::E4M3_MAX } else { 127.0 };
                let scale = if amax > 0.0 { amax / qmax } else { 1.0 };
                for (o, v) in out.iter_mut().zip(chunk) {
                    *o = match self.dtype {
                        KvDtype::Fp8 => latent_kernels::fp8::f32_to_e4m3(v / scale),
                        _ => (v / scale).round().clamp(-127.0, 127.0) as i8 as u8,
                    };
                }
                rest[gi * 4..gi * 4 + 4].copy_from_slice(&scale.to_le_bytes());
            }
        } else {
            self.dtype.encode_plain(k, &src[..main], &mut dst[..mb]);
        }
        if tail > 0 {
            let off = self.row_bytes(src.len()) - tail * 2;
            (k.f32_to_bf16)(&src[main..], &mut dst[off..off + tail * 2]);
        }
    }

    /// Decodes one row `src` (`row_bytes(dst.len())` bytes) into `dst` `[dim]`.
    #[inline]
    pub fn decode(&self, k: &Kernels, src: &[u8], dst: &mut [f32]) {
        let (main, tail) = self.split(dst.len());
        let mb = main * self.dtype.bytes();
        if self.dtype.is_8bit() {
            let g = self.group.max(1);
            let scales = &src[mb..];
            let f = if self.dtype == KvDtype::Fp8 { k.fp8_to_f32 } else { k.i8_to_f32 };
            for (gi, (q, out)) in src[..mb].chunks(g).zip(dst[..main].chunks_mut(g)).enumerate() {
                let s =
                    f32::from_le_bytes([scales[gi * 4], scales[gi * 4 + 1], scales[gi * 4 + 2], scales[gi * 4 + 3]]);
                f(q, s, out);
            }
        } else {
            self.dtype.decode_plain(k, &src[..mb], &mut dst[..main]);
        }
        if tail > 0 {
            let off = src.len() - tail * 2;
            (k.bf16_to_f32)(&src[off..], &mut dst[main..]);
        }
    }
}

/// A block-table entry whose block was released (a sliding window's dead middle): its rows
/// must never be read.
pub const EVICTED: u32 = u32::MAX;

/// Where one plane's rows live inside the pool (all strides in bytes).
#[derive(Clone, Copy, Debug)]
pub struct KvPlane<'a> {
    /// The whole block pool: `[num_blocks, block_bytes]`.
    pub pool: &'a [u8],
    pub fmt: RowFormat,
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
            let row_end = p.offset_bytes + (self.kv_heads - 1) * p.head_bytes + p.fmt.row_bytes(p.dim);
            for &b in self.table[..blocks].iter().filter(|&&b| b != EVICTED) {
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

impl<'a> KvPlane<'a> {
    /// Rows `start..start+n` of `head` as one strided matrix in their stored type, when the
    /// rows lie in one block and are either scale-free or 8-bit with a single scale group per
    /// row. For 8-bit rows `scales` receives each row's multiplier (the kernels apply it to
    /// the score column or the probability column); it is left empty otherwise.
    #[inline]
    pub(crate) fn raw_rows(
        &self,
        seq: &KvSeq,
        head: usize,
        start: usize,
        n: usize,
        scales: &mut Vec<f32>,
    ) -> Option<RawMat<'a>> {
        scales.clear();
        let bs = seq.block_size;
        if n == 0 || start % bs + n > bs || self.fmt.tail_bf16 != 0 {
            return None;
        }
        let (elem, mult) = match self.fmt.dtype {
            KvDtype::F32 => (Elem::F32, 0.0),
            KvDtype::F16 => (Elem::F16, 0.0),
            KvDtype::Bf16 => (Elem::Bf16, 0.0),
            KvDtype::Int8 if self.dim <= self.fmt.group => (Elem::I8, 1.0),
            KvDtype::Fp8 if self.dim <= self.fmt.group => (Elem::Fp8Scaled256, 256.0),
            _ => return None,
        };
        let off = seq.table[start / bs] as usize * self.block_bytes
            + (start % bs) * self.token_bytes
            + head * self.head_bytes
            + self.offset_bytes;
        let rb = self.fmt.row_bytes(self.dim);
        let len = (n - 1) * self.token_bytes + rb;
        let pool: &'a [u8] = self.pool;
        let data = &pool[off..off + len];
        if mult != 0.0 {
            for r in 0..n {
                let p = r * self.token_bytes + self.dim;
                scales.push(mult * f32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]));
            }
        }
        Some(RawMat { data, elem, rows: n, cols: self.dim, stride_bytes: self.token_bytes, ahead: &[] })
    }

    /// Decodes rows `start..start+n` of `head` into `out` (`[n, dim]`, row stride `dim`).
    /// Walks block by block: one table lookup per block, not per row.
    pub(crate) fn load_rows(&self, k: &Kernels, seq: &KvSeq, head: usize, start: usize, n: usize, out: &mut [f32]) {
        let rb = self.fmt.row_bytes(self.dim);
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
            if self.token_bytes == rb && self.fmt.is_plain() {
                // Rows are back to back and scale-free: one conversion for the whole run.
                self.fmt.dtype.decode_plain(
                    k,
                    &self.pool[off..off + run * rb],
                    &mut out[i * self.dim..(i + run) * self.dim],
                );
            } else {
                for r in 0..run {
                    self.fmt.decode(k, &self.pool[off..off + rb], &mut out[(i + r) * self.dim..(i + r + 1) * self.dim]);
                    off += self.token_bytes;
                }
            }
            i += run;
        }
    }
}

/// Encodes rows `src` `[n, dim]` back to back (`n · row_bytes(dim)` bytes).
pub fn encode_rows(fmt: RowFormat, src: &[f32], dim: usize) -> Vec<u8> {
    let k = Kernels::best();
    let rb = fmt.row_bytes(dim);
    let n = src.len().checked_div(dim).unwrap_or(0);
    let mut out = vec![0u8; n * rb];
    for (row, dst) in src.chunks_exact(dim.max(1)).zip(out.chunks_exact_mut(rb.max(1))) {
        fmt.encode(k, row, dst);
    }
    out
}

/// Rounds rows `[n, dim]` through `fmt` (what a cache of that format returns).
pub fn round_trip_rows(fmt: RowFormat, src: &[f32], dim: usize) -> Vec<f32> {
    let k = Kernels::best();
    let rb = fmt.row_bytes(dim);
    let bytes = encode_rows(fmt, src, dim);
    let mut out = vec![0f32; src.len()];
    for (dst, b) in out.chunks_exact_mut(dim.max(1)).zip(bytes.chunks_exact(rb.max(1))) {
        fmt.decode(k, b, dst);
    }
    out
}

/// A dense cache in its own buffer: `[len, kv_heads]` rows for K and V, one block.
/// Handy for tests and benchmarks; the kernels see it as a one-block paged cache.
pub struct DenseKv {
    pub k: Vec<u8>, // [S, Hkv] rows of dk in `fmt`
    pub v: Vec<u8>, // [S, Hkv] rows of dv in `fmt`
    pub fmt: RowFormat,
    pub len: usize,
    pub kv_heads: usize,
    pub dk: usize,
    pub dv: usize,
}

pub const ONE_BLOCK: [u32; 1] = [0];

impl DenseKv {
    /// Encodes f32 `k` `[S, Hkv, dk]` and `v` `[S, Hkv, dv]`.
    pub fn new(dtype: KvDtype, kv_heads: usize, dk: usize, dv: usize, k: &[f32], v: &[f32]) -> DenseKv {
        let fmt = RowFormat::plain(dtype);
        let len = k.len().checked_div(kv_heads * dk).unwrap_or(0);
        assert_eq!(k.len(), len * kv_heads * dk);
        assert_eq!(v.len(), len * kv_heads * dv);
        DenseKv { k: encode_rows(fmt, k, dk), v: encode_rows(fmt, v, dv), fmt, len, kv_heads, dk, dv }
    }

    pub fn view(&self) -> KvSeq<'_> {
        let plane = |pool, dim: usize| {
            let rb = self.fmt.row_bytes(dim);
            KvPlane {
                pool,
                fmt: self.fmt,
                block_bytes: 0,
                token_bytes: self.kv_heads * rb,
                head_bytes: rb,
                offset_bytes: 0,
                dim,
            }
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
    pub rows: Vec<u8>, // [S] rows of Dk in `fmt`
    pub fmt: RowFormat,
    pub len: usize,
    pub dk: usize,
    pub dv: usize,
}

impl DenseLatent {
    /// Encodes f32 rows `[S, dk]`; values are each row's first `dv` elements.
    pub fn new(fmt: RowFormat, dk: usize, dv: usize, rows: &[f32]) -> DenseLatent {
        let len = rows.len().checked_div(dk).unwrap_or(0);
        DenseLatent { rows: encode_rows(fmt, rows, dk), fmt, len, dk, dv }
    }

    pub fn view(&self) -> KvSeq<'_> {
        let rb = self.fmt.row_bytes(self.dk);
        KvSeq {
            k: KvPlane {
                pool: &self.rows,
                fmt: self.fmt,
                block_bytes: 0,
                token_bytes: rb,
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
    /// Whether any of the rows `rows` lies in a released block.
    pub fn touches_evicted(&self, rows: std::ops::Range<usize>) -> bool {
        if rows.is_empty() || self.block_size == 0 {
            return false;
        }
        let (b0, b1) = (rows.start / self.block_size, (rows.end - 1) / self.block_size);
        self.table.get(b0..=b1).is_some_and(|t| t.contains(&EVICTED))
    }

    /// Decodes key rows `start..start+n` of `head` to f32 `[n, Dk]`.
    pub fn read_keys(&self, head: usize, start: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.k.dim];
        self.k.load_rows(Kernels::best(), self, head, start, n, &mut out);
        out
    }
}
