#![allow(dead_code)]
//! Builds paged caches for tests: random physical block order, NaN in every byte the
//! kernels must not read (unused blocks, rows past the end, padding between rows).

use latent_attention::testing::Rng;
use latent_attention::{round_trip_rows, KvDtype, KvPlane, KvSeq, RowFormat, ValueSource};
use latent_kernels::Kernels;

pub struct PagedCache {
    pub k_pool: Vec<u8>,
    pub v_pool: Vec<u8>,
    pub table: Vec<u32>,
    pub fmt: RowFormat,
    pub block_size: usize,
    pub kv_heads: usize,
    pub dk: usize,
    pub dv: usize,
    pub len: usize,
    pub head_major: bool,
}

/// Bytes of NaN padding after each row.
const PAD: usize = 12;

/// A pool of `n` bytes filled with NaN patterns (f32 NaN bytes also decode as NaN in f16,
/// bf16; for 8-bit types 0x7F/0xFF are NaN codes and the scale bytes form NaN f32s).
fn nan_pool(n: usize) -> Vec<u8> {
    let nan = f32::NAN.to_le_bytes();
    (0..n).map(|i| nan[i % 4] | 0x7F).collect()
}

impl PagedCache {
    /// `k` `[len, Hkv, dk]`, `v` `[len, Hkv, dv]` stored in `block_size`-token blocks placed at
    /// random physical slots among `extra` more NaN-filled blocks. `head_major` lays a block
    /// out `[Hkv, block_size]` rows instead of `[block_size, Hkv]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rng: &mut Rng,
        fmt: RowFormat,
        kv_heads: usize,
        dk: usize,
        dv: usize,
        k: &[f32],
        v: &[f32],
        block_size: usize,
        extra: usize,
        head_major: bool,
    ) -> PagedCache {
        let len = k.len() / (kv_heads * dk);
        let nblocks = len.div_ceil(block_size);
        let total = nblocks + extra;
        let mut perm: Vec<u32> = (0..total as u32).collect();
        for i in (1..total).rev() {
            let j = rng.below(i + 1);
            perm.swap(i, j);
        }
        let table: Vec<u32> = perm[..nblocks].to_vec();
        let mut c = PagedCache {
            k_pool: Vec::new(),
            v_pool: Vec::new(),
            table,
            fmt,
            block_size,
            kv_heads,
            dk,
            dv,
            len,
            head_major,
        };
        c.k_pool = nan_pool(total * c.strides(dk).0);
        c.v_pool = nan_pool(total * c.strides(dv).0);
        let kern = Kernels::best();
        for pos in 0..len {
            for h in 0..kv_heads {
                let off = c.row_offset(pos, h, dk);
                let row = &k[(pos * kv_heads + h) * dk..][..dk];
                fmt.encode(kern, row, &mut c.k_pool[off..off + fmt.row_bytes(dk)]);
                let off = c.row_offset(pos, h, dv);
                let row = &v[(pos * kv_heads + h) * dv..][..dv];
                fmt.encode(kern, row, &mut c.v_pool[off..off + fmt.row_bytes(dv)]);
            }
        }
        c
    }

    /// (block, token, head) strides in bytes.
    fn strides(&self, d: usize) -> (usize, usize, usize) {
        let row = self.fmt.row_bytes(d) + PAD;
        let block = self.block_size * self.kv_heads * row;
        if self.head_major {
            (block, row, self.block_size * row)
        } else {
            (block, self.kv_heads * row, row)
        }
    }

    fn row_offset(&self, pos: usize, h: usize, d: usize) -> usize {
        let (bb, tb, hb) = self.strides(d);
        self.table[pos / self.block_size] as usize * bb + (pos % self.block_size) * tb + h * hb
    }

    pub fn view(&self) -> KvSeq<'_> {
        fn plane<'b>(c: &PagedCache, pool: &'b [u8], d: usize) -> KvPlane<'b> {
            let (bb, tb, hb) = c.strides(d);
            KvPlane { pool, fmt: c.fmt, block_bytes: bb, token_bytes: tb, head_bytes: hb, offset_bytes: 0, dim: d }
        }
        KvSeq {
            k: plane(self, &self.k_pool, self.dk),
            v: ValueSource::Plane(plane(self, &self.v_pool, self.dv)),
            kv_heads: self.kv_heads,
            block_size: self.block_size,
            table: &self.table,
            len: self.len,
        }
    }
}

/// Rounds f32 rows of width `dim` through `fmt` (what the cache returns).
pub fn round_trip(fmt: RowFormat, x: &[f32], dim: usize) -> Vec<f32> {
    round_trip_rows(fmt, x, dim)
}

pub fn plain(d: KvDtype) -> RowFormat {
    RowFormat::plain(d)
}

pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}
