//! 8-bit caches: attention outputs through an FP8 / int8 pool against the same data in an
//! f32 pool, held to the per-dtype storage budgets of `latent_attention::testing`, and MLA
//! with an FP8 latent (bf16 RoPE tail) against a bf16 latent. Measured errors are printed
//! (`cargo test -p latent-kv --test quant -- --nocapture`).

mod common;
use common::{cosine, pool};
use latent_attention::testing::{compare, max_abs_diff, storage_tolerance, Rng};
use latent_attention::*;
use latent_kv::*;

const LENS: [usize; 3] = [1024, 333, 57];

/// Decode + causal prefill outputs over `LENS` for each pool (same data in every pool).
fn outputs(
    pools: &[BlockPool],
    seqs: &[SeqId],
    shape: AttnShape,
    scale: f32,
    q_dec: &[f32],
    q_pre: &[f32],
) -> Vec<Vec<f32>> {
    let p = AttnParams { shape, scale, mask: MaskSpec::CAUSAL, sink_logits: None };
    pools
        .iter()
        .map(|pool| {
            let views: Vec<KvSeq> = seqs.iter().map(|&s| pool.view(s, 0).unwrap()).collect();
            let dec: Vec<SeqSpec> =
                LENS.iter().zip(&views).map(|(&l, &kv)| SeqSpec { q_len: 1, q_pos: l - 1, kv }).collect();
            let pre: Vec<SeqSpec> =
                LENS.iter().zip(&views).map(|(&l, &kv)| SeqSpec { q_len: l, q_pos: 0, kv }).collect();
            let t: usize = LENS.iter().sum();
            let mut out = vec![f32::NAN; (LENS.len() + t) * shape.heads * shape.dv];
            let mut lse = vec![f32::NAN; (LENS.len() + t) * shape.heads];
            let split = LENS.len() * shape.heads;
            let (od, op) = out.split_at_mut(split * shape.dv);
            let (ld, lp) = lse.split_at_mut(split);
            decode(&p, q_dec, &dec, od, ld).unwrap();
            prefill(&p, q_pre, &pre, op, lp).unwrap();
            out
        })
        .collect()
}

/// Max |diff| and cosine of `got` against `want`.
fn measure(got: &[f32], want: &[f32]) -> (f64, f64) {
    let w: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    (max_abs_diff(got, &w), cosine(got, want))
}

// Decode-only figures are printed, not bounded: their outputs average ~1000 values, are
// small, and their cosine is lower (fp8, D = 64: 0.9987).

#[test]
fn gqa_8bit_caches_stay_within_storage_budget() {
    let tp = pool(2);
    let mut rng = Rng(301);
    for (heads, kv_heads, d) in [(8usize, 2usize, 128usize), (8, 2, 64), (8, 1, 128)] {
        let row = kv_heads * d;
        // Keys with outlier channels, unit-normal values (the attention crate's test data).
        let data: Vec<(Vec<f32>, Vec<f32>)> =
            LENS.iter().map(|&l| (rng.activations(l * row, d, 16, 4.0), rng.normals(l * row, 1.0))).collect();
        let dtypes = [KvDtype::F32, KvDtype::Fp8, KvDtype::Int8, KvDtype::Bf16, KvDtype::F16];
        let mut pools = Vec::new();
        let mut seqs = Vec::new();
        for dtype in dtypes {
            let layout = CacheLayout::gqa(1, kv_heads, d, RowFormat::plain(dtype));
            let mut pool = BlockPool::with_budget(layout, 64, 40 * layout.block_bytes(64)).unwrap();
            assert_eq!(pool.num_blocks(), 40);
            seqs = LENS.iter().map(|_| pool.create()).collect();
            for (&s, (k, v)) in seqs.iter().zip(&data) {
                pool.append(s, k.len() / row).unwrap();
                pool.write_kv_range(s, 0, 0, k, v).unwrap();
            }
            pools.push(pool);
        }
        let shape = AttnShape { heads, kv_heads, dk: d, dv: d };
        let q_dec = rng.normals(LENS.len() * heads * d, 1.0);
        let q_pre = rng.normals(LENS.iter().sum::<usize>() * heads * d, 1.0);
        let outs = tp.install(|| outputs(&pools, &seqs, shape, 1.0 / (d as f32).sqrt(), &q_dec, &q_pre));
        let nd = LENS.len() * heads * d; // decode rows come first
        for (dtype, got) in dtypes.iter().zip(&outs).skip(1) {
            let (md, cd) = measure(&got[..nd], &outs[0][..nd]);
            let (mx, cos) = measure(got, &outs[0]);
            let table = storage_tolerance(*dtype);
            let tol = table;
            println!(
                "GQA H={heads} Hkv={kv_heads} D={d} {:>4} cache vs f32: decode max abs {md:.2e} cos {cd:.6}, \
                 decode+prefill max abs {mx:.2e} cos {cos:.6} (budget abs {:.0e} + rel {:.0e}, cos ≥ {})",
                dtype.name(),
                tol.abs,
                tol.rel,
                tol.cos
            );
            let what = format!("GQA H={heads} Hkv={kv_heads} D={d} {} vs f32", dtype.name());
            let want: Vec<f64> = outs[0].iter().map(|&v| v as f64).collect();
            compare(&what, got, &want, tol).unwrap();
        }
    }
}

#[test]
fn mla_fp8_latent_matches_bf16_latent() {
    let tp = pool(2);
    let mut rng = Rng(302);
    let (r, p, heads) = (512usize, 64usize, 16usize);
    let dk = r + p;
    // Latent rows with ×6 outlier channels; unit-normal queries (logits of std ≈ 2.5).
    let rows: Vec<Vec<f32>> = LENS.iter().map(|&l| rng.activations(l * dk, dk, 32, 6.0)).collect();
    let dtypes = [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8, KvDtype::Int8];
    let mut pools = Vec::new();
    let mut seqs = Vec::new();
    for dtype in dtypes {
        let layout = CacheLayout::latent(1, r, p, dtype);
        let mut pool = BlockPool::with_blocks(layout, 64, 30).unwrap();
        seqs = LENS.iter().map(|_| pool.create()).collect();
        for (&s, x) in seqs.iter().zip(&rows) {
            pool.append(s, x.len() / dk).unwrap();
            pool.write_latent_range(s, 0, 0, x).unwrap();
        }
        pools.push(pool);
    }
    assert_eq!(pools[2].layout().row_bytes(), 656, "FP8 latent row: 512 + 4·4 scales + 64·2 bf16 rope");
    let shape = AttnShape { heads, kv_heads: 1, dk, dv: r };
    let q_dec = rng.normals(LENS.len() * heads * dk, 1.0);
    let q_pre = rng.normals(LENS.iter().sum::<usize>() * heads * dk, 1.0);
    let outs = tp.install(|| outputs(&pools, &seqs, shape, 1.0 / (192f32).sqrt(), &q_dec, &q_pre));
    let (f32_out, bf16_out) = (&outs[0], &outs[1]);
    let (mx, cos) = measure(&outs[2], bf16_out);
    println!("MLA H={heads} R={r} P={p} fp8 latent vs bf16 latent: max abs {mx:.2e}, cosine {cos:.6}");
    assert!(cos >= 0.999, "fp8 vs bf16 latent cosine {cos} < 0.999");
    // Against an f32 latent: the table's cosine bound per dtype (|error| is printed; these
    // rows' ×6 outliers are beyond the data the table's abs/rel bounds describe).
    for (dtype, got) in dtypes.iter().zip(&outs).skip(1) {
        let (mx, cos) = measure(got, f32_out);
        let min_cos = storage_tolerance(*dtype).cos;
        println!("MLA {:>4} latent vs f32 latent: max abs {mx:.2e}, cosine {cos:.6} (≥ {min_cos})", dtype.name());
        assert!(cos >= min_cos, "MLA {} latent cosine {cos} < {min_cos}", dtype.name());
    }
}
