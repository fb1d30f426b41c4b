//! `latent bench attention`: decode and causal prefill per mechanism, timed through the same
//! entry points the runtime calls (`latent_attention::decode` / `prefill`), reported beside
//! the machine's own limits measured in the same run.

use crate::util::{check_memory, checked_product, parse_sizes, thread_pool};
use anyhow::{bail, Result};
use latent_attention::testing::Rng;
use latent_attention::*;
use latent_kernels::machine::{self, MachineLimits};
use latent_kernels::Kernels;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchAttnArgs {
    /// Threads (0 = all cores; at most 4× the cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Mechanisms: gqa, mha, mqa, swa (gqa with a sliding window of --window tokens plus
    /// --sinks sink tokens), mla (absorbed decode over the latent cache), mla-layer (a whole
    /// MLA layer's attention on its absorbed and naive paths: prefill, a 512-token chunk over
    /// each context, decode), smol-gqa and smol-mla (SmolLM2-135M's shape and its 50 % MLA
    /// conversion's).
    #[arg(long, default_value = "gqa,mla")]
    mechanisms: String,
    /// Decode context lengths.
    #[arg(long, default_value = "1k,4k,16k,32k")]
    contexts: String,
    /// Causal prefill lengths (empty to skip).
    #[arg(long, default_value = "512,2k,4k")]
    prefill: String,
    /// KV element type: f32, f16, bf16, fp8, int8 (8-bit with per-128 scales; MLA keeps k_rope bf16).
    #[arg(long, default_value = "bf16")]
    kv_dtype: String,
    /// Batch (sequences per decode step).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Window W of the swa mechanism.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Sink tokens of the swa mechanism (the first S positions stay visible).
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    /// Minimum timed repetitions per case.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Read the cache through the paged block pool (latent-kv) instead of one contiguous block.
    #[arg(long)]
    paged: bool,
    /// Tokens per block with --paged.
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// With --paged: time the same cache contiguous too, the two layouts alternating
    /// repetition by repetition, and report paged / contiguous as the median of the pairs'
    /// ratios (one process, one window of the machine's noise).
    #[arg(long, requires = "paged")]
    vs_contiguous: bool,
    /// With --vs-contiguous: evict the caches before every timed call (by reading a
    /// 128 MiB buffer), as a decode step finds a layer's cache after the other layers ran.
    #[arg(long, requires = "vs_contiguous")]
    cold: bool,
    /// One JSON object per line on stdout.
    #[arg(long)]
    json: bool,
}

struct Mech {
    name: &'static str,
    shape: AttnShape,
    /// MLA: values are the key prefix (latent cache).
    latent: bool,
    scale: f32,
    mask: MaskSpec,
}

impl Mech {
    /// Cached positions a query at position `p` (0-based) sees.
    fn visible(&self, p: usize) -> usize {
        let n = p + 1;
        match self.mask.window {
            None => n,
            Some(w) => n.min(w) + self.mask.sinks.min(n.saturating_sub(w)),
        }
    }
}

fn mechanism(name: &str, window: usize, sinks: usize) -> Result<Mech> {
    let gqa = |h, hk| AttnShape { heads: h, kv_heads: hk, dk: 128, dv: 128 };
    let plain = |name, shape| Mech { name, shape, latent: false, scale: 1.0 / 128f32.sqrt(), mask: MaskSpec::CAUSAL };
    Ok(match name {
        "gqa" => plain("gqa", gqa(32, 8)),
        "mha" => plain("mha", gqa(32, 32)),
        "mqa" => plain("mqa", gqa(32, 1)),
        "swa" => {
            if window == 0 {
                bail!("--window must be ≥ 1");
            }
            Mech { mask: MaskSpec { causal: true, window: Some(window), sinks }, ..plain("swa", gqa(32, 8)) }
        }
        // DeepSeek-V2: 128 heads, R = 512, P = 64, nope 128: scale 1/√192.
        "mla" => Mech {
            name: "mla",
            shape: AttnShape { heads: 128, kv_heads: 1, dk: 576, dv: 512 },
            latent: true,
            scale: 1.0 / 192f32.sqrt(),
            mask: MaskSpec::CAUSAL,
        },
        // SmolLM2-135M (9 heads over 3 KV heads of 64) and its 50 % MLA conversion
        // (`latent convert --kv-rank 128 --rope-dim 64`: keys 128 + 64, values 128; scale 1/√64).
        "smol-gqa" => Mech {
            name: "smol-gqa",
            shape: AttnShape { heads: 9, kv_heads: 3, dk: 64, dv: 64 },
            latent: false,
            scale: 0.125,
            mask: MaskSpec::CAUSAL,
        },
        "smol-mla" => Mech {
            name: "smol-mla",
            shape: AttnShape { heads: 9, kv_heads: 1, dk: 192, dv: 128 },
            latent: true,
            scale: 0.125,
            mask: MaskSpec::CAUSAL,
        },
        _ => bail!("unknown mechanism {name:?} (gqa, mha, mqa, swa, mla, smol-gqa, smol-mla, mla-layer)"),
    })
}

/// A head-major single-block cache holding `len` random tokens: `[Hkv, S]` rows per plane.
struct Cache {
    k: Vec<u8>,
    v: Vec<u8>,
    fmt: RowFormat,
    len: usize,
}

impl Cache {
    fn new(m: &Mech, dtype: KvDtype, len: usize, rng: &mut Rng) -> Cache {
        let fmt = if m.latent { RowFormat::latent(dtype, 64) } else { RowFormat::plain(dtype) };
        let fill = |rows: usize, dim: usize, rng: &mut Rng| {
            let mut out = Vec::with_capacity(rows * fmt.row_bytes(dim));
            let chunk = (1 << 16) / dim.max(1) + 1;
            let mut left = rows;
            while left > 0 {
                let n = chunk.min(left);
                let x: Vec<f32> = (0..n * dim).map(|_| (rng.uniform() as f32 - 0.5) * 3.0).collect();
                out.extend(encode_rows(fmt, &x, dim));
                left -= n;
            }
            out
        };
        let sh = m.shape;
        let k = fill(len * sh.kv_heads, sh.dk, rng);
        let v = if m.latent { Vec::new() } else { fill(len * sh.kv_heads, sh.dv, rng) };
        Cache { k, v, fmt, len }
    }

    fn view(&self, m: &Mech) -> KvSeq<'_> {
        let sh = m.shape;
        let plane = |pool, dim: usize| {
            let rb = self.fmt.row_bytes(dim);
            KvPlane {
                pool,
                fmt: self.fmt,
                block_bytes: 0,
                token_bytes: rb,
                head_bytes: self.len * rb,
                offset_bytes: 0,
                dim,
            }
        };
        KvSeq {
            k: plane(self.k.as_slice(), sh.dk),
            v: if m.latent {
                ValueSource::KeyPrefix { dim: sh.dv }
            } else {
                ValueSource::Plane(plane(self.v.as_slice(), sh.dv))
            },
            kv_heads: sh.kv_heads,
            block_size: self.len.max(1),
            table: &kv_view::ONE_BLOCK,
            len: self.len,
        }
    }

    /// Bytes a full pass reads: every element once at its stored width (scales included).
    fn bytes(&self) -> f64 {
        (self.k.len() + self.v.len()) as f64
    }
}

/// The same random cache in a paged block pool, its blocks scattered by interleaving a
/// second sequence's allocations.
struct PagedCache {
    pool: latent_kv::BlockPool,
    seq: latent_kv::SeqId,
}

impl PagedCache {
    fn new(m: &Mech, dtype: KvDtype, len: usize, block_size: usize, rng: &mut Rng) -> Result<PagedCache> {
        let sh = m.shape;
        let layout = if m.latent {
            latent_kv::CacheLayout::latent(1, sh.dv, sh.dk - sh.dv, dtype)
        } else {
            latent_kv::CacheLayout::gqa(1, sh.kv_heads, sh.dk, RowFormat::plain(dtype))
        };
        let blocks = 2 * len.div_ceil(block_size) + 2;
        let mut pool = latent_kv::BlockPool::with_blocks(layout, block_size, blocks)?;
        let (seq, other) = (pool.create(), pool.create());
        let chunk = block_size.max(256);
        let mut done = 0;
        while done < len {
            let n = chunk.min(len - done);
            pool.append(seq, n)?;
            pool.append(other, n.min(block_size))?;
            if m.latent {
                let x: Vec<f32> = (0..n * sh.dk).map(|_| (rng.uniform() as f32 - 0.5) * 3.0).collect();
                pool.write_latent_range(seq, 0, done, &x)?;
            } else {
                let k: Vec<f32> = (0..n * sh.kv_heads * sh.dk).map(|_| (rng.uniform() as f32 - 0.5) * 3.0).collect();
                let v: Vec<f32> = (0..n * sh.kv_heads * sh.dv).map(|_| (rng.uniform() as f32 - 0.5) * 3.0).collect();
                pool.write_kv_range(seq, 0, done, &k, &v)?;
            }
            done += n;
        }
        pool.free(other)?;
        Ok(PagedCache { pool, seq })
    }

    fn bytes(&self) -> f64 {
        (self.pool.bytes_per_token() * self.pool.len(self.seq).unwrap_or(0)) as f64
    }
}

/// KV bytes of one token of `m` in `dtype` (all KV heads; keys only for MLA's latent cache).
fn token_bytes(m: &Mech, dtype: KvDtype) -> Option<u64> {
    let sh = m.shape;
    let fmt = if m.latent { RowFormat::latent(dtype, 64) } else { RowFormat::plain(dtype) };
    let per_head = fmt.row_bytes(sh.dk) as u64 + if m.latent { 0 } else { fmt.row_bytes(sh.dv) as u64 };
    (sh.kv_heads as u64).checked_mul(per_head)
}

/// Bytes a decode case allocates: `batch` caches of `ctx` tokens (with `paged`, the pool's
/// blocks of that size: twice the sequence's, plus two), queries and outputs. `None` when
/// the count overflows.
fn decode_bytes(m: &Mech, dtype: KvDtype, ctx: usize, batch: usize, paged: Option<usize>) -> Option<u64> {
    let slots = match paged {
        None => ctx,
        Some(bs) => ctx.div_ceil(bs).checked_mul(2)?.checked_add(2)?.checked_mul(bs)?,
    };
    let cache = checked_product(&[batch, slots])?.checked_mul(token_bytes(m, dtype)?)?;
    let sh = m.shape;
    let io = checked_product(&[batch, sh.heads, sh.dk + sh.dv + 1, 4])?;
    cache.checked_add(io)
}

/// Bytes a causal prefill of `t` tokens allocates: its cache, queries, outputs and LSEs.
fn prefill_bytes(m: &Mech, dtype: KvDtype, t: usize) -> Option<u64> {
    let sh = m.shape;
    let cache = (t as u64).checked_mul(token_bytes(m, dtype)?)?;
    cache.checked_add(checked_product(&[t, sh.heads, sh.dk + sh.dv + 1, 4])?)
}

/// One measured case.
pub struct Row {
    pub mechanism: &'static str,
    /// Read through the paged block pool.
    pub paged: bool,
    pub phase: &'static str,
    pub context: usize,
    pub seconds: f64,
    pub bytes: f64,
    pub flops: f64,
}

impl Row {
    fn json(&self, lim: &MachineLimits, a: &BenchAttnArgs) -> serde_json::Value {
        let (dtype, batch) = (&a.kv_dtype, a.batch);
        let gbps = self.bytes / self.seconds / 1e9;
        let gflops = self.flops / self.seconds / 1e9;
        serde_json::json!({
            "mechanism": self.mechanism, "phase": self.phase, "context": self.context, "batch": batch,
            "kv_dtype": dtype, "threads": lim.threads, "isa": Kernels::best().isa.name(),
            "seconds": self.seconds, "kv_bytes": self.bytes, "flops": self.flops,
            "gbps": gbps, "gflops": gflops,
            "read_gbps": lim.read_gbps, "memcpy_gbps": lim.memcpy_gbps, "gemm_gflops": lim.gemm_gflops,
            "gemm_crate_gflops": lim.gemm_crate_gflops, "tile_gemm_gflops": lim.tile_gemm_gflops,
            "roofline_fraction": roofline(self, lim),
            "bound": if self.bytes / lim.read_gbps > self.flops / lim.gemm_gflops { "memory" } else { "compute" },
            "paged": self.paged, "block_size": if self.paged { a.block_size } else { self.context.max(1) },
        })
    }
}

/// max(bytes / read bandwidth, flops / GEMM peak) / seconds.
pub fn roofline(r: &Row, lim: &MachineLimits) -> f64 {
    (r.bytes / (lim.read_gbps * 1e9)).max(r.flops / (lim.gemm_gflops * 1e9)) / r.seconds
}

/// Medians of `f` and `g` timed alternately (at least `reps` pairs and ~0.5 s of pairs,
/// after one warm-up of each), and the median of the pairs' ratios g / f.
fn time_pairs(reps: usize, cold: bool, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64, f64) {
    f();
    g();
    let (mut tf, mut tg, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    while tf.len() < reps.max(1) || (start.elapsed().as_secs_f64() < 0.5 && tf.len() < 200) {
        // ABBA order: each layout runs first in every other pair, so neither always follows
        // the other's cache state.
        let first_f = tf.len() % 2 == 0;
        let (mut a, mut b) = (0.0, 0.0);
        for side in [first_f, !first_f] {
            if cold {
                flush_caches();
            }
            let t = Instant::now();
            if side {
                f();
                a = t.elapsed().as_secs_f64();
            } else {
                g();
                b = t.elapsed().as_secs_f64();
            }
        }
        tf.push(a);
        tg.push(b);
        ratio.push(b / a);
    }
    (median(tf), median(tg), median(ratio))
}

/// Reads a 128 MiB buffer (allocated once), evicting what the caches held.
fn flush_caches() {
    static BUF: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    let b = BUF.get_or_init(|| (0..(128usize << 20) / 8).map(|i| i as u64).collect());
    let s: u64 = b.iter().step_by(8).fold(0u64, |a, &x| a.wrapping_add(x));
    std::hint::black_box(s);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median of at least `reps` timed runs (and at least ~0.5 s of runs), after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut ts = Vec::new();
    let start = Instant::now();
    while ts.len() < reps.max(1) || (start.elapsed().as_secs_f64() < 0.5 && ts.len() < 200) {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

pub fn run(a: BenchAttnArgs) -> Result<()> {
    let pool = thread_pool(a.threads)?;
    let dtype = KvDtype::parse(&a.kv_dtype)
        .ok_or_else(|| anyhow::anyhow!("unknown --kv-dtype {:?} (f32, f16, bf16, fp8, int8)", a.kv_dtype))?;
    let mla_layer = a.mechanisms.split(',').any(|s| s == "mla-layer");
    let mechs: Vec<Mech> = a
        .mechanisms
        .split(',')
        .filter(|s| !s.is_empty() && *s != "mla-layer")
        .map(|n| mechanism(n, a.window, a.sinks))
        .collect::<Result<_>>()?;
    let contexts = parse_sizes("--contexts", &a.contexts)?;
    let prefills = parse_sizes("--prefill", &a.prefill)?;
    if a.batch == 0 || a.block_size == 0 {
        bail!("--batch and --block-size must be ≥ 1");
    }
    // Every case's buffers fit in memory, checked before anything is allocated or measured.
    for m in &mechs {
        for &ctx in &contexts {
            let what = format!("{} decode at context {ctx} × --batch {}", m.name, a.batch);
            check_memory(&what, decode_bytes(m, dtype, ctx, a.batch, a.paged.then_some(a.block_size)))?;
            if a.vs_contiguous {
                check_memory(&format!("{what}, contiguous"), decode_bytes(m, dtype, ctx, a.batch, None))?;
            }
        }
        for &t in &prefills {
            check_memory(&format!("{} prefill of {t} tokens", m.name), prefill_bytes(m, dtype, t))?;
        }
    }
    noteln!("measuring machine limits ({} threads)…", pool.current_num_threads());
    let lim = machine::measure(&pool);
    if !a.json {
        outln!(
            "machine: {} threads, {}; read {:.1} GB/s, memcpy {:.1} GB/s (read+write), f32 GEMM 1024³ {:.1} GFLOP/s (gemm crate {:.1}, latent tile {:.1})",
            lim.threads,
            Kernels::best().isa.name(),
            lim.read_gbps,
            lim.memcpy_gbps,
            lim.gemm_gflops,
            lim.gemm_crate_gflops,
            lim.tile_gemm_gflops
        );
        outln!(
            "{:<8} {:<8} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}  bound   (kv {}{})",
            "mech",
            "phase",
            "context",
            "ms",
            "KV MB",
            "GB/s",
            "GFLOP/s",
            "roofline",
            a.kv_dtype,
            if a.vs_contiguous {
                format!(", paged with block {} against contiguous", a.block_size)
            } else if a.paged {
                format!(", paged, block {}", a.block_size)
            } else {
                ", contiguous".into()
            }
        );
    }
    let mut rng = Rng(2024);
    let emit = |r: Row| {
        if a.json {
            outln!("{}", r.json(&lim, &a));
        } else {
            let j = r.json(&lim, &a);
            let phase = match (a.vs_contiguous, r.paged) {
                (false, _) => r.phase.to_string(),
                (true, true) => format!("{} (paged)", r.phase),
                (true, false) => format!("{} (contiguous)", r.phase),
            };
            outln!(
                "{:<8} {:<8} {:>7} {:>10.3} {:>10.1} {:>9.2} {:>9.1} {:>9.3}  {}",
                r.mechanism,
                phase,
                r.context,
                r.seconds * 1e3,
                r.bytes / 1e6,
                j["gbps"].as_f64().unwrap_or(0.0),
                j["gflops"].as_f64().unwrap_or(0.0),
                j["roofline_fraction"].as_f64().unwrap_or(0.0),
                j["bound"].as_str().unwrap_or("")
            );
        }
    };
    for m in &mechs {
        let sh = m.shape;
        let params = AttnParams { shape: sh, scale: m.scale, mask: m.mask, sink_logits: None };
        for &ctx in &contexts {
            let caches: Vec<Cache> = if !a.paged || a.vs_contiguous {
                (0..a.batch).map(|_| Cache::new(m, dtype, ctx, &mut rng)).collect()
            } else {
                Vec::new()
            };
            let paged: Vec<PagedCache> = if a.paged {
                (0..a.batch).map(|_| PagedCache::new(m, dtype, ctx, a.block_size, &mut rng)).collect::<Result<_>>()?
            } else {
                Vec::new()
            };
            fn spec(kv: KvSeq<'_>, pos: usize) -> SeqSpec<'_> {
                SeqSpec { q_len: 1, q_pos: pos, kv }
            }
            let dense_seqs: Vec<SeqSpec> = caches.iter().map(|c| spec(c.view(m), ctx - 1)).collect();
            let paged_seqs: Vec<SeqSpec> =
                paged.iter().map(|p| p.pool.view(p.seq, 0).map(|v| spec(v, ctx - 1))).collect::<Result<_, _>>()?;
            let q = rng.normals(a.batch * sh.heads * sh.dk, 1.0);
            let mut out = vec![0f32; a.batch * sh.heads * sh.dv];
            let mut lse = vec![0f32; a.batch * sh.heads];
            // Bytes of the positions the query sees (all of them without a window).
            let seen = m.visible(ctx - 1) as f64 / ctx.max(1) as f64;
            let dense_bytes: f64 = seen * caches.iter().map(|c| c.bytes()).sum::<f64>();
            let paged_bytes: f64 = seen * paged.iter().map(|p| p.bytes()).sum::<f64>();
            let flops = (a.batch * 2 * sh.heads * m.visible(ctx - 1) * (sh.dk + sh.dv)) as f64;
            let row = |paged: bool, seconds: f64| Row {
                mechanism: m.name,
                paged,
                phase: "decode",
                context: ctx,
                seconds,
                bytes: if paged { paged_bytes } else { dense_bytes },
                flops,
            };
            if a.vs_contiguous {
                let (mut o2, mut l2) = (out.clone(), lse.clone());
                let (dense, pagedt, ratio) = pool.install(|| {
                    time_pairs(
                        a.reps,
                        a.cold,
                        || decode(&params, &q, &dense_seqs, &mut out, &mut lse).expect("decode"),
                        || decode(&params, &q, &paged_seqs, &mut o2, &mut l2).expect("decode"),
                    )
                });
                emit(row(false, dense));
                emit(row(true, pagedt));
                if a.json {
                    outln!(
                        "{}",
                        serde_json::json!({"mechanism": m.name, "phase": "decode", "context": ctx,
                            "batch": a.batch, "kv_dtype": a.kv_dtype, "block_size": a.block_size,
                            "paged_over_contiguous": ratio})
                    );
                } else {
                    outln!("{:<8} paged / contiguous at {ctx}: {ratio:.3} (median of alternating pairs)", m.name);
                }
            } else {
                let seqs = if a.paged { &paged_seqs } else { &dense_seqs };
                let secs =
                    pool.install(|| time(a.reps, || decode(&params, &q, seqs, &mut out, &mut lse).expect("decode")));
                emit(row(a.paged, secs));
            }
        }
        for &t in &prefills {
            let cache = Cache::new(m, dtype, t, &mut rng);
            let seqs = [SeqSpec { q_len: t, q_pos: 0, kv: cache.view(m) }];
            let q = rng.normals(t * sh.heads * sh.dk, 1.0);
            let mut out = vec![0f32; t * sh.heads * sh.dv];
            let mut lse = vec![0f32; t * sh.heads];
            let reps = if t >= 2048 { 1 } else { a.reps.min(3) };
            let secs =
                pool.install(|| time(reps, || prefill(&params, &q, &seqs, &mut out, &mut lse).expect("prefill")));
            // Useful work only: the visible pairs (without a window, half of the T×T products).
            let pairs: f64 = (0..t).map(|p| m.visible(p) as f64).sum();
            let flops = 2.0 * sh.heads as f64 * (sh.dk + sh.dv) as f64 * pairs;
            emit(Row {
                mechanism: m.name,
                paged: false,
                phase: "prefill",
                context: t,
                seconds: secs,
                bytes: cache.bytes(),
                flops,
            });
        }
    }
    if mla_layer {
        let rows = pool.install(|| crate::bench_mla::measure(&prefills, &contexts, 512, a.reps, dtype))?;
        crate::bench_mla::report(&rows, a.json);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_sizes_are_checked() {
        let gqa = mechanism("gqa", 4096, 4).unwrap();
        // 8 KV heads × (128 + 128) bf16 = 4 KiB a token.
        assert_eq!(token_bytes(&gqa, KvDtype::Bf16), Some(4096));
        assert_eq!(decode_bytes(&gqa, KvDtype::Bf16, 1024, 1, None), Some(4096 * 1024 + 32 * 257 * 4));
        // Paged, block 64: 2·16 + 2 blocks of 64 tokens.
        assert_eq!(decode_bytes(&gqa, KvDtype::Bf16, 1024, 1, Some(64)), Some(34 * 64 * 4096 + 32 * 257 * 4));
        assert_eq!(decode_bytes(&gqa, KvDtype::Bf16, 1 << 40, usize::MAX, None), None);
        assert_eq!(decode_bytes(&gqa, KvDtype::Bf16, 1, 1, Some(usize::MAX)), None);
        assert_eq!(prefill_bytes(&mechanism("mla", 4096, 4).unwrap(), KvDtype::F32, usize::MAX), None);
    }

    #[test]
    fn window_counts_the_positions_the_mask_shows() {
        let swa = mechanism("swa", 8, 2).unwrap();
        for p in [0usize, 1, 7, 8, 9, 10, 11, 40] {
            let by_mask = (0..=p).filter(|&j| swa.mask.visible(p, j)).count();
            assert_eq!(swa.visible(p), by_mask, "position {p}");
        }
        assert_eq!(mechanism("gqa", 8, 2).unwrap().visible(40), 41);
        assert!(mechanism("swa", 0, 0).is_err());
    }
}
