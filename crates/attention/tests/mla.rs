//! MLA: absorbed == naive == the f64 equations; the cache holds only [c_KV | k_rope];
//! the latent MQA kernel on hostile sizes (H up to 128, R = 512, P = 64, S up to 4096).

mod common;
use common::{pool, round_trip, PagedCache};
use latent_attention::reference::{attention_ref, mla_ref, RefSeq};
use latent_attention::testing::{compare, max_abs_diff, Rng, Tolerance};
use latent_attention::RowFormat;
use latent_attention::*;

fn cfg(heads: usize, q_lora: Option<usize>, yarn: bool) -> MlaConfig {
    let rope = Rope {
        dims: 64,
        base: 10000.0,
        style: RopeStyle::Interleaved,
        yarn: yarn.then_some(Yarn {
            freq_scale: 0.25,
            orig_ctx: 128,
            ext_factor: 1.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }),
    };
    let mscale = if yarn { 1.0 + 0.1 * 4f32.ln() } else { 1.0 };
    MlaConfig {
        hidden: 192,
        heads,
        q_lora_rank: q_lora,
        kv_lora_rank: 512,
        nope: 64,
        rope_dim: 64,
        v_dim: 48,
        eps: 1e-6,
        rope,
        scale_mult: mscale * mscale,
    }
}

const TOL: Tolerance = Tolerance { abs: 1e-4, rel: 1e-3, cos: 0.99999 };

#[test]
fn absorbed_and_naive_match_the_equations() {
    let p = pool(2);
    let mut rng = Rng(11);
    for (heads, q_lora, yarn, s, q0) in
        [(1, None, false, 20, 0), (3, Some(96), true, 37, 30), (16, Some(64), false, 140, 139), (128, None, true, 9, 5)]
    {
        let m = Mla::random(cfg(heads, q_lora, yarn), &mut rng);
        let x = rng.normals(s * m.cfg.hidden, 1.0);
        let c = m.cfg.hidden;
        // The cache: latent rows of every token, computed chunk by chunk like a runtime would.
        let rope = m.cfg.rope;
        let mut rows = m.compress_kv(&(), &x[..q0 * c], &Positions::new(&rope, 0, q0)).unwrap();
        rows.extend(m.compress_kv(&(), &x[q0 * c..], &Positions::new(&rope, q0, s - q0)).unwrap());
        assert_eq!(rows.len(), s * (512 + 64), "only [c_KV | k_rope] is cached");
        let t = s - q0;
        let pos = Positions::new(&rope, q0, t);
        let q = m.queries(&(), &x[q0 * c..], &pos).unwrap();
        let q_raw = m.project_queries(&(), &x[q0 * c..], t).unwrap();
        let (o_ref, y_ref) = mla_ref(&m, &x, s, q0);
        for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8] {
            let fmt = RowFormat::latent(dtype, 64);
            let rows_d = round_trip(fmt, &rows, 576);
            let cache = DenseLatent::new(fmt, 576, 512, &rows);
            let run = Local(Some(Plan::prefill(&m.absorbed_shape())));
            let oa = p.install(|| m.attend_absorbed(&run, &q, t, q0, cache.view(), MaskSpec::CAUSAL)).unwrap();
            let on = p.install(|| m.attend_naive(&run, &q, t, q0, cache.view(), MaskSpec::CAUSAL)).unwrap();
            // The layer's own entry (un-rotated queries, path chosen per pass) gives the same.
            for path in [MlaPath::Absorbed, MlaPath::Naive, MlaPath::Auto] {
                let ol = p.install(|| m.attend(&Local(None), &q_raw, &pos, cache.view(), None, path)).unwrap();
                let d = max_abs_diff(&ol, &oa.iter().map(|&v| v as f64).collect::<Vec<_>>());
                assert!(d < 2e-4, "H={heads} {dtype:?} {path:?}: layer vs absorbed max diff {d}");
            }
            let d = max_abs_diff(&oa, &on.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!(d < 2e-4, "H={heads} {dtype:?}: absorbed vs naive max diff {d}");
            if dtype == KvDtype::F32 {
                compare(&format!("absorbed H={heads}"), &oa, &o_ref, TOL).unwrap();
                compare(&format!("naive H={heads}"), &on, &o_ref, TOL).unwrap();
                let y = m.output(&(), &oa, t).unwrap();
                compare(&format!("y H={heads}"), &y, &y_ref, TOL).unwrap();
            } else {
                // Storage rounding only; outputs stay close to exact.
                let lo = latent_attention::testing::storage_tolerance(dtype);
                compare(&format!("{dtype:?} absorbed H={heads}"), &oa, &o_ref, lo).unwrap();
                assert_eq!(rows_d.len(), rows.len());
            }
        }
    }
}

#[test]
fn softmax_scale_uses_qk_head_dim_not_latent_dim() {
    let c = cfg(4, None, false);
    assert!((c.softmax_scale() - 1.0 / (128f32).sqrt()).abs() < 1e-7);
    let y = cfg(4, None, true);
    let ms = 1.0 + 0.1 * 4f32.ln();
    assert!((y.softmax_scale() - ms * ms / (128f32).sqrt()).abs() < 1e-6);
}

#[test]
fn latent_mqa_kernel_hostile_sizes_paged() {
    // The absorbed kernel itself: H query heads, one latent "head", Dk = R + P, Dv = R, V the
    // key prefix — against the f64 reference with explicit V = prefix of K.
    let p = pool(2);
    let mut rng = Rng(12);
    for heads in [1usize, 3, 9, 63, 64, 128] {
        for s in [0usize, 1, 20, 140, 4096] {
            if heads >= 63 && s == 4096 && heads != 128 {
                continue; // one 4096 × 128-head case is enough for the reference's runtime
            }
            for bs in [1usize, 61, 64] {
                if s == 4096 && bs == 1 {
                    continue;
                }
                let fmt = RowFormat::latent([KvDtype::Bf16, KvDtype::Fp8, KvDtype::Int8][bs % 3], 64);
                let rows = round_trip(fmt, &rng.activations(s * 576, 576, 32, 6.0), 576);
                let v: Vec<f32> = rows.chunks_exact(576).flat_map(|r| r[..512].to_vec()).collect();
                let pc = PagedCache::new(&mut rng, fmt, 1, 576, 512, &rows, &v, bs, 3, false);
                let mut view = pc.view();
                // Read values from the key rows (prefix), not from the value plane.
                view.v = ValueSource::KeyPrefix { dim: 512 };
                let shape = AttnShape { heads, kv_heads: 1, dk: 576, dv: 512 };
                let q = rng.normals(2 * heads * 576, 0.1);
                let seqs = [SeqSpec { q_len: 2, q_pos: s.saturating_sub(2), kv: view }];
                let params =
                    AttnParams { shape, scale: 1.0 / (192f32).sqrt(), mask: MaskSpec::CAUSAL, sink_logits: None };
                let mut out = vec![f32::NAN; 2 * heads * 512];
                let mut lse = vec![f32::NAN; 2 * heads];
                p.install(|| decode(&params, &q, &seqs, &mut out, &mut lse)).unwrap();
                let refs = [RefSeq { q_len: 2, q_pos: s.saturating_sub(2), k: &rows, v: &v }];
                let (ro, rl) = attention_ref(shape, params.scale as f64, MaskSpec::CAUSAL, None, &q, &refs);
                let tol = latent_attention::testing::tolerance(KvDtype::Bf16);
                compare(&format!("latent out H={heads} S={s} bs={bs}"), &out, &ro, tol).unwrap();
                compare(&format!("latent lse H={heads} S={s} bs={bs}"), &lse, &rl, tol).unwrap();
            }
        }
    }
}

#[test]
fn low_rank_absorbed_equals_naive_and_represents_gqa_exactly() {
    let p = pool(2);
    let mut rng = Rng(13);
    let (h, hk, d, r, c, s) = (8usize, 2usize, 64usize, 96usize, 80usize, 50usize);
    let lr = LowRankKv {
        heads: h,
        kv_heads: hk,
        head_dim: d,
        rank: r,
        hidden: c,
        w_down: rng.normals(r * c, 1.0 / (c as f32).sqrt()),
        u_k: rng.normals(hk * d * r, 1.0 / (r as f32).sqrt()),
        u_v: rng.normals(hk * d * r, 1.0 / (r as f32).sqrt()),
        scale: 1.0 / (d as f32).sqrt(),
    };
    let x = rng.normals(s * c, 1.0);
    let rows = lr.compress(&x, s);
    let cache = DenseLatent::new(RowFormat::plain(KvDtype::F32), r, r, &rows);
    let q = rng.normals(s * h * d, 1.0);
    let scale = lr.scale;
    let plan =
        Plan { q_tile: 5, kv_tile: 16, split: KvSplit::Fixed(2), min_split: 1, parallel: true, group_heads: false };
    let a = p.install(|| lr.attend_absorbed(&q, s, 0, cache.view(), MaskSpec::CAUSAL, &plan)).unwrap();
    let n = p.install(|| lr.attend_naive(&q, s, 0, cache.view(), MaskSpec::CAUSAL, &plan)).unwrap();
    // Both against plain GQA on the decompressed K/V in f64.
    let (kk, vv) = lr.decompress(&rows, s);
    let shape = AttnShape { heads: h, kv_heads: hk, dk: d, dv: d };
    let (ro, _) = attention_ref(
        shape,
        scale as f64,
        MaskSpec::CAUSAL,
        None,
        &q,
        &[RefSeq { q_len: s, q_pos: 0, k: &kk, v: &vv }],
    );
    compare("low-rank absorbed", &a, &ro, TOL).unwrap();
    compare("low-rank naive", &n, &ro, TOL).unwrap();
    let bad = LowRankKv { u_k: vec![0.0; 3], ..lr.clone() };
    assert!(matches!(bad.attend_absorbed(&q, s, 0, cache.view(), MaskSpec::CAUSAL, &plan), Err(AttnError::Len { .. })));
}

#[test]
fn mla_rejects_mismatched_weights() {
    let mut rng = Rng(14);
    let m = Mla::random(cfg(2, None, false), &mut rng);
    let mut w = m.w.clone();
    w.w_uk = HeadWeights::F32(m.w.w_uk.to_f32()[1..].to_vec());
    assert!(matches!(Mla::new(m.cfg, w), Err(AttnError::Len { .. })));
    let empty = Dense { rows: 0, cols: 0, data: vec![] };
    let w = MlaWeights { q: QProj::Lora { w_dq: empty.clone(), q_norm: vec![], w_uq: empty }, ..m.w.clone() };
    assert!(matches!(Mla::new(m.cfg, w), Err(AttnError::Config(_))));
}
