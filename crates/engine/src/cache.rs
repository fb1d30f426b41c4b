//! A sequence's KV cache as the model sees it: fixed-capacity per-layer planes, head-major
//! (`[Hkv, capacity]` rows), read by the kernels as a one-block paged view.

use latent_attention::kv_view::ONE_BLOCK;
use latent_attention::{KvPlane, KvSeq, RowFormat, ValueSource};
use latent_kernels::Kernels;
use latent_models::{CacheAccess, CacheSpec, ModelError};

pub struct SeqCache {
    spec: CacheSpec,
    fmt: RowFormat,
    capacity: usize,
    /// Per layer: K plane (or latent rows) and V plane (empty for latent caches).
    planes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SeqCache {
    pub fn new(spec: CacheSpec, fmt: RowFormat, capacity: usize) -> SeqCache {
        let planes = match spec {
            CacheSpec::Gqa { layers, kv_heads, head_dim } => {
                let n = kv_heads * capacity * fmt.row_bytes(head_dim);
                (0..layers).map(|_| (vec![0u8; n], vec![0u8; n])).collect()
            }
            CacheSpec::Latent { layers, rank, rope } => {
                let n = capacity * fmt.row_bytes(rank + rope);
                (0..layers).map(|_| (vec![0u8; n], Vec::new())).collect()
            }
        };
        SeqCache { spec, fmt, capacity, planes }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.planes.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    fn check(&self, pos: usize) -> Result<(), ModelError> {
        if pos >= self.capacity {
            return Err(ModelError::Cache(format!("position {pos} beyond the cache capacity {}", self.capacity)));
        }
        Ok(())
    }
}

impl CacheAccess for SeqCache {
    fn write_kv(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), ModelError> {
        self.check(pos)?;
        let CacheSpec::Gqa { kv_heads, head_dim, .. } = self.spec else {
            return Err(ModelError::Cache("K/V written to a latent cache".into()));
        };
        let rb = self.fmt.row_bytes(head_dim);
        let kern = Kernels::best();
        let (kp, vp) = &mut self.planes[layer];
        for h in 0..kv_heads {
            let off = (h * self.capacity + pos) * rb;
            self.fmt.encode(kern, &k[h * head_dim..(h + 1) * head_dim], &mut kp[off..off + rb]);
            self.fmt.encode(kern, &v[h * head_dim..(h + 1) * head_dim], &mut vp[off..off + rb]);
        }
        Ok(())
    }

    fn write_latent(&mut self, layer: usize, pos: usize, row: &[f32]) -> Result<(), ModelError> {
        self.check(pos)?;
        let CacheSpec::Latent { rank, rope, .. } = self.spec else {
            return Err(ModelError::Cache("latent written to a K/V cache".into()));
        };
        let rb = self.fmt.row_bytes(rank + rope);
        let off = pos * rb;
        self.fmt.encode(Kernels::best(), row, &mut self.planes[layer].0[off..off + rb]);
        Ok(())
    }

    fn view(&self, layer: usize, len: usize) -> Result<KvSeq<'_>, ModelError> {
        if len > self.capacity {
            return Err(ModelError::Cache(format!("{len} tokens beyond the cache capacity {}", self.capacity)));
        }
        let (kp, vp) = &self.planes[layer];
        Ok(match self.spec {
            CacheSpec::Gqa { kv_heads, head_dim, .. } => {
                let rb = self.fmt.row_bytes(head_dim);
                let plane = |pool| KvPlane {
                    pool,
                    fmt: self.fmt,
                    block_bytes: 0,
                    token_bytes: rb,
                    head_bytes: self.capacity * rb,
                    offset_bytes: 0,
                    dim: head_dim,
                };
                KvSeq {
                    k: plane(kp.as_slice()),
                    v: ValueSource::Plane(plane(vp.as_slice())),
                    kv_heads,
                    block_size: self.capacity.max(1),
                    table: &ONE_BLOCK,
                    len,
                }
            }
            CacheSpec::Latent { rank, rope, .. } => {
                let rb = self.fmt.row_bytes(rank + rope);
                KvSeq {
                    k: KvPlane {
                        pool: kp.as_slice(),
                        fmt: self.fmt,
                        block_bytes: 0,
                        token_bytes: rb,
                        head_bytes: 0,
                        offset_bytes: 0,
                        dim: rank + rope,
                    },
                    v: ValueSource::KeyPrefix { dim: rank },
                    kv_heads: 1,
                    block_size: self.capacity.max(1),
                    table: &ONE_BLOCK,
                    len,
                }
            }
        })
    }
}
