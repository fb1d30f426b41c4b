#![allow(dead_code)]
//! Builds paged caches for tests: random physical block order, NaN in every byte the
//! kernels must not read (unused blocks, rows past the end, padding between heads).

use latent_attention::testing::Rng;
use latent_attention::{KvDtype, KvPlane, KvSeq, ValueSource};
use latent_kernels::Kernels;

pub struct PagedCache {
    pub k_pool: Vec<u8>,
    pub v_pool: Vec<u8>,
    pub table: Vec<u32>,
    pub dtype: KvDtype,
    pub block_size: usize,
    pub kv_heads: usize,
    pub dk: usize,
    pub dv: usize,
    pub len: usize,
    pub head_major: bool,
    pub pad: usize,
}

fn nan_bytes(dtype: KvDtype, n_elems: usize) -> Vec<u8> {
    let mut out = vec![0u8; n_elems * dtype.bytes()];
    let nan = vec![f32::NAN; n_elems];
    dtype.encode(Kernels::best(), &nan, &mut out);
    out
}

impl PagedCache {
    /// `k` `[len, Hkv, dk]`, `v` `[len, Hkv, dv]` stored in `block_size`-token blocks placed at
    /// random physical slots among `extra` more (NaN-filled) blocks. `head_major` lays a
    /// block out `[Hkv, block_size, D]` instead of `[block_size, Hkv, D]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rng: &mut Rng,
        dtype: KvDtype,
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
        let pad = 3; // elements of NaN padding after each row
        let mut c = PagedCache {
            k_pool: Vec::new(),
            v_pool: Vec::new(),
            table,
            dtype,
            block_size,
            kv_heads,
            dk,
            dv,
            len,
            head_major,
            pad,
        };
        c.k_pool = nan_bytes(dtype, total * c.block_elems(dk));
        c.v_pool = nan_bytes(dtype, total * c.block_elems(dv));
        let kern = Kernels::best();
        let e = dtype.bytes();
        for pos in 0..len {
            for h in 0..kv_heads {
                let off = c.row_offset(pos, h, dk);
                let row = &k[(pos * kv_heads + h) * dk..][..dk];
                dtype.encode(kern, row, &mut c.k_pool[off..off + dk * e]);
                let off = c.row_offset(pos, h, dv);
                let row = &v[(pos * kv_heads + h) * dv..][..dv];
                dtype.encode(kern, row, &mut c.v_pool[off..off + dv * e]);
            }
        }
        c
    }

    fn block_elems(&self, d: usize) -> usize {
        self.block_size * self.kv_heads * (d + self.pad)
    }

    fn strides(&self, d: usize) -> (usize, usize, usize) {
        let e = self.dtype.bytes();
        let row = (d + self.pad) * e;
        let block = self.block_elems(d) * e;
        if self.head_major {
            (block, row, self.block_size * row) // (block, token, head)
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
            KvPlane { pool, dtype: c.dtype, block_bytes: bb, token_bytes: tb, head_bytes: hb, offset_bytes: 0, dim: d }
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

/// Rounds f32 values through `dtype` (what the cache stores).
pub fn round_trip(dtype: KvDtype, x: &[f32]) -> Vec<f32> {
    let k = Kernels::best();
    let mut b = vec![0u8; x.len() * dtype.bytes()];
    dtype.encode(k, x, &mut b);
    let mut y = vec![0f32; x.len()];
    dtype.decode(k, &b, &mut y);
    y
}

pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}
