//! One attention layer, GQA → MLA, from calibration activations.
//!
//! Dimension legend: T calibration tokens (S sequences of L), C hidden, H query heads,
//! G KV heads, D head dim, P rope dim of the MLA key, Nk = G·D − P position-free key dims,
//! R latent rank, N nope dim per head in the file, Ny = Nk + G·D (keys and values that go
//! through the latent).
//!
//! The recipe, each step exact or a least-squares optimum on the calibration set:
//! 1. **RoRoPE.** For every RoPE frequency i, the G heads' 2-D key components are mixed by an
//!    orthogonal G×G matrix U_i (PCA over heads of the calibration keys). A scalar mix of
//!    heads commutes with the rotation, so with every query's per-head coefficients mixed the
//!    same way, q·k is unchanged. The first mixed head carries most key energy.
//! 2. **Shared RoPE key.** The first mixed head's components at the frequencies the file's
//!    RoPE can express (every D/P-th) become the shared `k_rope`: exact.
//! 3. **Position-free keys.** Every other (head, frequency) component loses its rotation.
//!    Baseline: qᵀR(−Δθ)k ≈ qᵀk. Refit (`rope_avg`): qᵀ M k with M = E_a[R(−Δθ)], the
//!    expected rotation under the teacher's attention over distances Δ (the least-squares
//!    position-free bilinear form when q, k are independent of Δ): high frequencies shrink
//!    towards 0 instead of adding noise, low ones stay.
//! 4. **Latent.** c = A·x of rank R, the best rank-R linear map reconstructing
//!    Y = [k_nope; v] in a metric Ω (PCA of Ω^½·Y). Baseline: keys scaled to the values'
//!    energy (TransMLA's balancing). Refit (`metric`): Ω_K = the heads' query second moment
//!    (error in scores), Ω_V = W_oᵀW_o per group (error in the layer output), their balance
//!    searched per layer on the measured layer-output error.
//! 5. **Value refit** (`v_refit`): W_UV per head by least squares against the teacher's
//!    per-head attention output, with the converted model's own attention weights.
//! 6. **Joint value refit** (`joint`): the heads' W_UV refitted together against the layer's
//!    output, Σ_t ‖Σ_h W_o,h (W_UV,h z_h − o_h)‖² (the error after W_o, where heads can make up
//!    for each other), by block coordinate descent: with the other heads fixed, head h's
//!    optimum is the per-head fit against o_h − W_o,h⁺ R_{−h} (R_{−h} the other heads' error
//!    after W_o; W_o,h `[C, D]` has full column rank).
//! 7. **Key refit** (`keys`): each head's position-free scores q_nopeᵀ G_h c get their own map
//!    G_h `[Nk, R]`, started at B_k and moved by gradient descent on the head's output error
//!    after W_o with the value maps fixed ([`fit_keys`]); the value maps are then refitted on
//!    the attention the new keys give. G_h lands in W_UK,h like B_k did.
//!
//! **Held-out choices.** With 4 or more calibration sequences a quarter is held out: the
//! metric's K/V balance, how far each layer's values are refitted (PCA map, per-head,
//! joint) and how many key-refit steps each head takes are chosen on the layer-output error of the held-out sequences, fitted on the rest;
//! with `rope_avg`, whether the position-free keys take the expected rotation (step 3) is
//! chosen the same way (the balance searched for plain keys is kept). The chosen layer is
//! then fitted on all sequences. The refits minimise the in-sample error,
//! and at small ranks (12.5 % of the KV) the joint one fits noise.
//!
//! Keys are then `k_nope = B_k·c` (LS), values `v_h = W_UV,h·c`. Queries keep the source's
//! rows: a head's nope query is its own D unrotated source query rows (N = D), and
//! `W_UK,h = s·S_h·B_k` `[D, R]` carries the RoRoPE coefficients S_h of the head's group and
//! the softmax-scale change s = √(N+P)/√D; its RoPE query is its P source rows at the kept
//! frequencies, each scaled by its coefficient (±1 with one KV head), and s goes to the
//! shared RoPE key's rows. The file's `attn_q` is thus the source's own rows (the RoPE rows
//! with scaled block scales): no re-quantization.

use crate::linalg::{cross, gram, matmul, solve_spd_right, sqrt_and_inv_sqrt, sym_eigen, transpose};
use latent_attention::Rope;
use rayon::prelude::*;

/// Ridge of the value refit, relative to the mean diagonal of ZᵀZ.
const V_RIDGE: f64 = 1e-3;

/// Sweeps of the joint value refit in the layer-output metric.
const JOINT_SWEEPS: usize = 4;

/// Which refits run (cumulative steps of the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    pub rope_avg: bool,
    pub metric: bool,
    pub v_refit: bool,
    /// With `v_refit`: the value maps refitted jointly in the layer-output metric.
    pub joint: bool,
    /// The heads' key maps (W_UK) refitted by local descent on each head's output error.
    pub keys: bool,
}

impl Method {
    pub const BASELINE: Method = Method { rope_avg: false, metric: false, v_refit: false, joint: false, keys: false };
    /// The value refits without the key refit.
    pub const JOINT: Method = Method { rope_avg: false, metric: true, v_refit: true, joint: true, keys: false };
    /// The default: every refit but the expected-rotation keys (which help at 37.5 % with
    /// 4096 calibration tokens and hurt with 2048: the held-out choice is noisy).
    pub const FULL: Method = Method { keys: true, ..Method::JOINT };

    /// The cumulative steps, in report order, with their names.
    pub fn steps() -> [(&'static str, Method); 6] {
        [
            ("baseline (RoRoPE + balanced joint PCA)", Method::BASELINE),
            ("+ score/output-metric latent", Method { metric: true, ..Method::BASELINE }),
            ("+ per-head value refit", Method { joint: false, ..Method::JOINT }),
            ("+ joint value refit (layer output)", Method::JOINT),
            ("+ key refit (descent on head outputs)", Method::FULL),
            ("+ expected-rotation keys where held out says", Method { rope_avg: true, ..Method::FULL }),
        ]
    }

    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "baseline" => Method::BASELINE,
            "metric" => Method { metric: true, ..Method::BASELINE },
            "value" => Method { joint: false, ..Method::JOINT },
            "joint" => Method::JOINT,
            "full" => Method::FULL,
            "full+rope-avg" => Method { rope_avg: true, ..Method::FULL },
            _ => return None,
        })
    }
}

/// Shapes of the source and target attention.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub c: usize,
    pub h: usize,
    pub g: usize,
    pub d: usize,
    pub p: usize,
    pub r: usize,
}

impl Dims {
    pub fn nk(&self) -> usize {
        self.g * self.d - self.p
    }
    pub fn ny(&self) -> usize {
        self.nk() + self.g * self.d
    }
    /// Nope dim per head in the file: the head's own D query dims (W_UK is zero when no key
    /// dim is position-free).
    pub fn n(&self) -> usize {
        self.d
    }
}

/// One layer's source attention weights, dequantized.
pub struct SrcAttn {
    pub wq: Vec<f32>, // [H·D, C]
    pub wk: Vec<f32>, // [G·D, C]
    pub wv: Vec<f32>, // [G·D, C]
    pub wo: Vec<f32>, // [C, H·D]
}

/// Calibration inputs of one layer: S sequences of L tokens at positions 0..L.
pub struct Calib<'a> {
    pub x: &'a [f32], // [T, C], T = S·L
    pub seqs: usize,
    pub len: usize,
}

/// A converted layer in the file's layout (before the latent scaling of the norm trick).
pub struct MlaAttn {
    /// `attn_q`'s rows `[H·(N+P)]` as (source `W_q` row, scale): per head its N = D source
    /// rows unscaled (nope), then its P RoPE rows scaled by their RoRoPE coefficient.
    pub q_rows: Vec<(usize, f32)>,
    pub wkv_a: Vec<f32>, // [R+P, C]: latent rows, then the shared RoPE key (× s)
    pub w_uk: Vec<f32>,  // [H, N, R]
    pub w_uv: Vec<f32>,  // [H, D, R]
    /// Largest mean square of a calibration token's latent.
    pub latent_ms_max: f64,
    /// Relative error of the layer's attention output on the calibration set.
    pub rel_err: f64,
    /// The same on held-out calibration sequences, for the value fit chosen, when some were
    /// held out (the fit on the others).
    pub heldout_err: Option<f64>,
    /// The chosen K/V balance (metric step), relative to equal energy.
    pub balance: f64,
    /// How far the value maps were fitted (chosen on held-out sequences).
    pub value_fit: ValueFit,
    /// Whether the position-free keys carry the expected rotation.
    pub rope_avg: bool,
    /// Per head: descent steps of its key map (0: the latent's least-squares keys).
    pub key_steps: Vec<usize>,
}

/// Per-layer teacher quantities shared by every method.
struct Teacher {
    k: Vec<f32>,    // [T, G·D] (unrotated)
    o: Vec<f32>,    // [T, H·D]: per-head attention outputs
    hist: Vec<f64>, // [L]: attention mass at each distance Δ = p − j (all heads)
}

fn rope_rows(x: &mut [f32], t: usize, heads: usize, d: usize, len: usize, rope: &Rope) {
    x.par_chunks_mut(heads * d).enumerate().for_each(|(ti, row)| {
        let pos = ti % len;
        for hh in 0..heads {
            rope.apply(&mut row[hh * d..(hh + 1) * d], pos);
        }
    });
    let _ = t;
}

/// Causal softmax attention of one (sequence, head): q `[L, dq]`, k `[L, dq]` → probabilities
/// `[L, L]` (zero above the diagonal).
fn probs(q: &[f32], k: &[f32], l: usize, dq: usize, scale: f32) -> Vec<f32> {
    let mut s = matmul(q, k, l, dq, l, true);
    for p in 0..l {
        let row = &mut s[p * l..(p + 1) * l];
        let mut m = f32::NEG_INFINITY;
        for v in row[..=p].iter_mut() {
            *v *= scale;
            m = m.max(*v);
        }
        let mut sum = 0f32;
        for v in row[..=p].iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row[..=p].iter_mut() {
            *v *= inv;
        }
        row[p + 1..].fill(0.0);
    }
    s
}

/// Gathers columns `[c0, c0+w)` of the rows `r0..r0+n` of a `[*, stride]` matrix.
fn cols(a: &[f32], stride: usize, r0: usize, n: usize, c0: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * w);
    for r in r0..r0 + n {
        out.extend_from_slice(&a[r * stride + c0..r * stride + c0 + w]);
    }
    out
}

fn teacher(src: &SrcAttn, cal: &Calib, dm: &Dims, rope: &Rope) -> Teacher {
    let (c, h, g, d) = (dm.c, dm.h, dm.g, dm.d);
    let t = cal.seqs * cal.len;
    let q = matmul(cal.x, &src.wq, t, c, h * d, true);
    let k = matmul(cal.x, &src.wk, t, c, g * d, true);
    let v = matmul(cal.x, &src.wv, t, c, g * d, true);
    let (mut qr, mut kr) = (q.clone(), k.clone());
    rope_rows(&mut qr, t, h, d, cal.len, rope);
    rope_rows(&mut kr, t, g, d, cal.len, rope);
    let l = cal.len;
    let scale = 1.0 / (d as f32).sqrt();
    let jobs: Vec<(usize, usize)> = (0..cal.seqs).flat_map(|s| (0..h).map(move |hh| (s, hh))).collect();
    let parts: Vec<(usize, usize, Vec<f32>, Vec<f64>)> = jobs
        .par_iter()
        .map(|&(s, hh)| {
            let gi = hh / (h / g);
            let qh = cols(&qr, h * d, s * l, l, hh * d, d);
            let kh = cols(&kr, g * d, s * l, l, gi * d, d);
            let vh = cols(&v, g * d, s * l, l, gi * d, d);
            let pr = probs(&qh, &kh, l, d, scale);
            let mut hist = vec![0f64; l];
            for p in 0..l {
                for j in 0..=p {
                    hist[p - j] += pr[p * l + j] as f64;
                }
            }
            (s, hh, matmul(&pr, &vh, l, l, d, false), hist)
        })
        .collect();
    let mut o = vec![0f32; t * h * d];
    let mut hist = vec![0f64; l];
    for (s, hh, oh, hs) in parts {
        for p in 0..l {
            o[(s * l + p) * h * d + hh * d..][..d].copy_from_slice(&oh[p * d..(p + 1) * d]);
        }
        for (a, b) in hist.iter_mut().zip(&hs) {
            *a += b;
        }
    }
    Teacher { k, o, hist }
}

/// The RoRoPE mixes: `[D/2][G·G]`, rows = mixed heads (descending key energy).
fn rorope(k: &[f32], t: usize, g: usize, d: usize) -> Vec<Vec<f64>> {
    (0..d / 2)
        .map(|i| {
            let mut cov = vec![0f64; g * g];
            for ti in 0..t {
                let row = &k[ti * g * d..(ti + 1) * g * d];
                for a in 0..g {
                    for b in 0..g {
                        cov[a * g + b] += (row[a * d + 2 * i] as f64) * (row[b * d + 2 * i] as f64)
                            + (row[a * d + 2 * i + 1] as f64) * (row[b * d + 2 * i + 1] as f64);
                    }
                }
            }
            sym_eigen(&cov, g).1
        })
        .collect()
}

/// The expected rotation E_a[R(−Δθ_i)] as (E cos, E sin) for every pair i.
fn expected_rotation(hist: &[f64], rope: &Rope, d: usize) -> Vec<(f64, f64)> {
    let total: f64 = hist.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    (0..d / 2)
        .map(|i| {
            let (mut ec, mut es) = (0f64, 0f64);
            for (dl, &w) in hist.iter().enumerate() {
                if w > 0.0 {
                    let (c, s) = rope.cos_sin(dl, i);
                    ec += w * c as f64;
                    es += w * s as f64;
                }
            }
            (ec / total, es / total)
        })
        .collect()
}

/// Linear maps of the mixed representation (rows over C).
struct Mixed {
    wk_pe: Vec<f32>,        // [P, C]
    wq_pe: Vec<Vec<f32>>,   // H × [P, C]
    wk_nope: Vec<f32>,      // [Nk, C]
    wq_nope: Vec<Vec<f32>>, // H × [Nk, C]
    /// Per RoPE row: the source head dim (2i + comp) it comes from (mixed head 0).
    pe_dims: Vec<usize>, // [P]
    /// Per nope row: (mixed head m, source head dim 2i + comp).
    nope_dims: Vec<(usize, usize)>, // [Nk]
    /// The RoRoPE mixes `[D/2][G·G]` (see [`rorope`]).
    u: Vec<Vec<f64>>,
    /// The position-free keys carry the expected rotation.
    rot: bool,
}

impl Mixed {
    /// The coefficient of query head `hh`'s source dim `j` in mixed head `m`.
    fn coef(&self, m: usize, j: usize, hh: usize, dm: &Dims) -> f64 {
        self.u[j / 2][m * dm.g + hh / (dm.h / dm.g)]
    }
}

fn mixed(src: &SrcAttn, dm: &Dims, u: &[Vec<f64>], rot: Option<&[(f64, f64)]>) -> Mixed {
    let (c, h, g, d, p) = (dm.c, dm.h, dm.g, dm.d, dm.p);
    let stride = d / p; // every stride-th frequency keeps RoPE on the first mixed head
    let per = h / g;
    let row = |w: &[f32], r: usize| -> Vec<f64> { w[r * c..(r + 1) * c].iter().map(|&x| x as f64).collect() };
    let mut wk_pe = vec![0f32; p * c];
    let mut wq_pe = vec![vec![0f32; p * c]; h];
    let mut wk_nope = Vec::with_capacity(dm.nk() * c);
    let mut wq_nope = vec![Vec::with_capacity(dm.nk() * c); h];
    let mut pe_dims = vec![0usize; p];
    let mut nope_dims = Vec::with_capacity(dm.nk());
    for m in 0..g {
        for i in 0..d / 2 {
            let ui = &u[i];
            // Mixed key components (2 rows) of mixed head m at frequency i.
            let mut kc = [vec![0f64; c], vec![0f64; c]];
            for gi in 0..g {
                let coef = ui[m * g + gi];
                for (comp, kcc) in kc.iter_mut().enumerate() {
                    for (a, b) in kcc.iter_mut().zip(row(&src.wk, gi * d + 2 * i + comp)) {
                        *a += coef * b;
                    }
                }
            }
            let roped = m == 0 && i % stride == 0;
            if roped {
                let ip = i / stride;
                for comp in 0..2 {
                    pe_dims[2 * ip + comp] = 2 * i + comp;
                    for (dst, v) in wk_pe[(2 * ip + comp) * c..][..c].iter_mut().zip(&kc[comp]) {
                        *dst = *v as f32;
                    }
                    for hh in 0..h {
                        let coef = ui[m * g + hh / per] as f32;
                        let q = &src.wq[(hh * d + 2 * i + comp) * c..][..c];
                        for (dst, v) in wq_pe[hh][(2 * ip + comp) * c..][..c].iter_mut().zip(q) {
                            *dst = coef * v;
                        }
                    }
                }
            } else {
                // k̃ = M·k with M = [[E cos, E sin], [−E sin, E cos]] (identity without refit).
                let (ec, es) = rot.map(|r| r[i]).unwrap_or((1.0, 0.0));
                let k0: Vec<f32> = kc[0].iter().zip(&kc[1]).map(|(a, b)| (ec * a + es * b) as f32).collect();
                let k1: Vec<f32> = kc[0].iter().zip(&kc[1]).map(|(a, b)| (-es * a + ec * b) as f32).collect();
                wk_nope.extend(k0);
                wk_nope.extend(k1);
                nope_dims.extend([(m, 2 * i), (m, 2 * i + 1)]);
                for (hh, wqn) in wq_nope.iter_mut().enumerate() {
                    let coef = ui[m * g + hh / per] as f32;
                    for comp in 0..2 {
                        wqn.extend(src.wq[(hh * d + 2 * i + comp) * c..][..c].iter().map(|v| coef * v));
                    }
                }
            }
        }
    }
    Mixed { wk_pe, wq_pe, wk_nope, wq_nope, pe_dims, nope_dims, u: u.to_vec(), rot: rot.is_some() }
}

/// How far a build fits the value maps: the PCA map B_v, + the per-head least-squares refit,
/// + the joint refit in the layer-output metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueFit {
    Pca,
    PerHead,
    Joint,
}

/// Calibration sequences of a build: fitted on `0..fit`, scored on `eval` (held-out
/// sequences; the fitted ones when empty), after every value stage when `every_stage` (to
/// choose among them), else after the last only.
#[derive(Clone, Debug)]
struct Split {
    fit: usize,
    eval: std::ops::Range<usize>,
    every_stage: bool,
}

impl Split {
    fn scored(&self) -> std::ops::Range<usize> {
        if self.eval.is_empty() {
            0..self.fit
        } else {
            self.eval.clone()
        }
    }
}

/// The converted layer for one candidate latent metric, with the value maps fitted up to
/// `vfit`; returns it with the layer-output relative error on the scored sequences after the
/// value stages scored (`[PCA, per-head, joint]`, see [`Split`]).
#[allow(clippy::too_many_arguments)]
fn build(
    src: &SrcAttn,
    cal: &Calib,
    dm: &Dims,
    rope: &Rope,
    te: &Teacher,
    mx: &Mixed,
    y: &[f32],          // [T, Ny]
    omega_half: &[f64], // [Ny, Ny]: Ω^½
    vfit: ValueFit,
    split: &Split,
    kfit: &KeyFit,
) -> (MlaAttn, [Option<f64>; 3]) {
    let (c, h, g, d, p, r) = (dm.c, dm.h, dm.g, dm.d, dm.p, dm.r);
    let (nk, ny) = (dm.nk(), dm.ny());
    let t = cal.seqs * cal.len;
    let l = cal.len;
    let ts = split.fit * l; // fitted rows
                            // PCA of Ω^½ Y over the fitted rows: M = Ω^½ Cov_Y Ω^½.
    let cov = gram(&y[..ts * ny], ts, ny);
    let oh = omega_half;
    let tmp = mat64(oh, &cov, ny, ny, ny);
    let m = mat64(&tmp, oh, ny, ny, ny);
    let (_, vecs) = sym_eigen(&m, ny);
    // A = U_R Ω^½ W_Y with W_Y = [Wk_nope; Wv] ([Ny, C]).
    let ur_oh = mat64(&vecs[..r.min(ny) * ny], oh, r.min(ny), ny, ny);
    let mut wy = mx.wk_nope.clone();
    wy.extend_from_slice(&src.wv);
    let ur_oh32: Vec<f32> = ur_oh.iter().map(|&v| v as f32).collect();
    let mut a = matmul(&ur_oh32, &wy, r.min(ny), ny, c, false); // [R, C]
    a.resize(r * c, 0.0); // rank beyond Ny: zero rows
    let mut lat = matmul(cal.x, &a, t, c, r, true); // [T, R]
                                                    // Unit RMS latent (any scale of c is absorbed by B and W_UV; the query rows and the
                                                    // file's types then see the source's magnitudes).
    let ms = lat[..ts * r].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (ts * r).max(1) as f64;
    if ms > 0.0 && ms.is_finite() {
        let k = (1.0 / ms.sqrt()) as f32;
        a.iter_mut().for_each(|v| *v *= k);
        lat.iter_mut().for_each(|v| *v *= k);
    }
    let latent_ms_max = lat[..ts * r]
        .chunks(r)
        .map(|row| row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / r as f64)
        .fold(0f64, f64::max);
    // B = (Yᵀc)(cᵀc)⁻¹: [Ny, R].
    let gc = gram(&lat[..ts * r], ts, r);
    let yc = cross(&y[..ts * ny], &lat[..ts * r], ts, ny, r);
    let b = solve_spd_right(&gc, &yc, r, ny, 1e-9);
    let bk: Vec<f32> = b[..nk * r].iter().map(|&v| v as f32).collect(); // [Nk, R]
    let bv: Vec<f32> = b[nk * r..].iter().map(|&v| v as f32).collect(); // [G·D, R]
                                                                        // Student attention: keys [k_pe (rotated) | B_k c], per-head queries [q_pe | q_nope].
    let mut kpe = matmul(cal.x, &mx.wk_pe, t, c, p, true);
    rope_rows(&mut kpe, t, 1, p, l, &sub_rope(rope, p, d));
    let knope = matmul(&lat, &bk, t, r, nk, true); // [T, Nk]
    let scale = 1.0 / (d as f32).sqrt();
    let per = h / g;
    let scored = split.scored();
    let seqs: Vec<usize> = (0..split.fit).chain(split.eval.clone()).collect();
    let jobs: Vec<(usize, usize)> = seqs.iter().flat_map(|&s| (0..h).map(move |hh| (s, hh))).collect();
    // The student's attention-weighted latents z `[L, R]` per (sequence, head), with the heads'
    // own key maps `H × [Nk, R]` when refitted (else B_k for all).
    let student_z = |gk: Option<&[Vec<f32>]>| -> Vec<(usize, usize, Vec<f32>)> {
        jobs.par_iter()
            .map(|&(s, hh)| {
                let xs = &cal.x[s * l * c..(s + 1) * l * c];
                let own = gk.map(|gk| matmul(&lat[s * l * r..(s + 1) * l * r], &gk[hh], l, r, nk, true));
                let (knope, k0) = match &own {
                    Some(kn) => (kn.as_slice(), s * l),
                    None => (knope.as_slice(), 0),
                };
                let mut qpe = matmul(xs, &mx.wq_pe[hh], l, c, p, true);
                rope_rows(&mut qpe, l, 1, p, l, &sub_rope(rope, p, d));
                let qn = matmul(xs, &mx.wq_nope[hh], l, c, nk, true);
                let (mut qf, mut kf) = (Vec::with_capacity(l * (p + nk)), Vec::with_capacity(l * (p + nk)));
                for i in 0..l {
                    qf.extend_from_slice(&qpe[i * p..(i + 1) * p]);
                    qf.extend_from_slice(&qn[i * nk..(i + 1) * nk]);
                    kf.extend_from_slice(&kpe[(s * l + i) * p..(s * l + i + 1) * p]);
                    kf.extend_from_slice(&knope[(s * l + i - k0) * nk..(s * l + i - k0 + 1) * nk]);
                }
                let pr = probs(&qf, &kf, l, p + nk, scale);
                (s, hh, matmul(&pr, &lat[s * l * r..(s + 1) * l * r], l, l, r, false))
                // z: [L, R]
            })
            .collect()
    };
    // Layer-output error on the scored sequences: Σ ‖W_o (o' − o)‖² / Σ ‖W_o o‖².
    let te_rows = scored.len() * l;
    let refo = {
        let o = &te.o[scored.start * l * h * d..scored.end * l * h * d];
        matmul(o, &src.wo, te_rows, h * d, c, true)
    };
    let den: f64 = refo.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().max(f64::MIN_POSITIVE);
    let fit_values = |z: &[(usize, usize, Vec<f32>)]| -> (Vec<f32>, [Option<f64>; 3]) {
        let rel_err_of = |w_uv: &[f32]| -> f64 {
            let mut diff = vec![0f32; te_rows * h * d];
            for (s, hh, zz) in z.iter().filter(|(s, _, _)| scored.contains(s)) {
                let oh = matmul(zz, &w_uv[hh * d * r..(hh + 1) * d * r], l, r, d, true); // [L, D]
                for i in 0..l {
                    let row = ((s - scored.start) * l + i) * h * d + hh * d;
                    let trow = (s * l + i) * h * d + hh * d;
                    for e in 0..d {
                        diff[row + e] = oh[i * d + e] - te.o[trow + e];
                    }
                }
            }
            let err = matmul(&diff, &src.wo, te_rows, h * d, c, true);
            (err.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / den).sqrt()
        };
        // Value maps [H, D, R], first the PCA map of each head's group.
        let mut w_uv = vec![0f32; h * d * r];
        for hh in 0..h {
            let gi = hh / per;
            w_uv[hh * d * r..(hh + 1) * d * r].copy_from_slice(&bv[gi * d * r..(gi + 1) * d * r]);
        }
        let scores = |stage: ValueFit| split.every_stage || stage == vfit;
        let mut errs = [scores(ValueFit::Pca).then(|| rel_err_of(&w_uv)), None, None];
        if vfit >= ValueFit::PerHead {
            // Per head: Z_h [Ts, R] (the student's attention-weighted latents over the fitted
            // rows), its Gram, the teacher's output O_h [Ts, D], and the ridge target (towards the
            // PCA map B_v: directions the attention never averages over, e.g. a head that only
            // looks at the first token and sees a rank-1 Z, keep B_v).
            let zs: Vec<Vec<f32>> = (0..h)
                .map(|hh| {
                    let mut zh = vec![0f32; ts * r];
                    for (s, h2, zz) in z {
                        if *h2 == hh && *s < split.fit {
                            zh[s * l * r..(s + 1) * l * r].copy_from_slice(zz);
                        }
                    }
                    zh
                })
                .collect();
            let gzs: Vec<Vec<f64>> = zs.par_iter().map(|zh| gram(zh, ts, r)).collect();
            let fit = |hh: usize, target: &[f32]| -> Vec<f32> {
                let gi = hh / per;
                let gz = &gzs[hh];
                let mut oz = cross(target, &zs[hh], ts, d, r);
                let lam = V_RIDGE * (0..r).map(|i| gz[i * r + i]).sum::<f64>() / r as f64;
                for (o, b) in oz.iter_mut().zip(&bv[gi * d * r..(gi + 1) * d * r]) {
                    *o += lam * *b as f64;
                }
                solve_spd_right(gz, &oz, r, d, V_RIDGE).iter().map(|&v| v as f32).collect()
            };
            let os: Vec<Vec<f32>> = (0..h).map(|hh| cols(&te.o, h * d, 0, ts, hh * d, d)).collect(); // [Ts, D]
                                                                                                     // First each head against its own teacher output.
            for hh in 0..h {
                w_uv[hh * d * r..(hh + 1) * d * r].copy_from_slice(&fit(hh, &os[hh]));
            }
            errs[1] = scores(ValueFit::PerHead).then(|| rel_err_of(&w_uv));
            // Then jointly in the layer-output metric: Σ_t ‖Σ_h W_o,h (W_UV,h z_h − o_h)‖². Block
            // coordinate descent over heads: with the others fixed, head h's optimum is the
            // plain fit against o_h − W_o,h⁺ R_{−h}, R_{−h} the other heads' output error.
            if vfit == ValueFit::Joint {
                let wo_h: Vec<Vec<f32>> = (0..h).map(|hh| cols(&src.wo, h * d, 0, c, hh * d, d)).collect(); // [C, D]
                let pinv: Vec<Vec<f32>> = wo_h
                    .iter()
                    .map(|w| {
                        // W⁺ᵀ = W(WᵀW)⁻¹ `[C, D]`, solved as X·(WᵀW) = W.
                        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                        solve_spd_right(&gram(w, c, d), &w64, d, c, 1e-9).iter().map(|&v| v as f32).collect()
                    })
                    .collect();
                let err_of = |hh: usize, w: &[f32]| -> Vec<f32> {
                    let mut e = matmul(&zs[hh], w, ts, r, d, true); // [Ts, D]
                    e.iter_mut().zip(&os[hh]).for_each(|(a, b)| *a -= b);
                    matmul(&e, &wo_h[hh], ts, d, c, true) // [Ts, C]
                };
                let mut outs: Vec<Vec<f32>> =
                    (0..h).map(|hh| err_of(hh, &w_uv[hh * d * r..(hh + 1) * d * r])).collect();
                let mut total = vec![0f32; ts * c];
                for o in &outs {
                    total.iter_mut().zip(o).for_each(|(a, b)| *a += b);
                }
                for _ in 0..JOINT_SWEEPS {
                    for hh in 0..h {
                        total.iter_mut().zip(&outs[hh]).for_each(|(a, b)| *a -= b);
                        let fix = matmul(&total, &pinv[hh], ts, c, d, false); // [Ts, D]
                        let target: Vec<f32> = os[hh].iter().zip(&fix).map(|(o, f)| o - f).collect();
                        let w = fit(hh, &target);
                        outs[hh] = err_of(hh, &w);
                        total.iter_mut().zip(&outs[hh]).for_each(|(a, b)| *a += b);
                        w_uv[hh * d * r..(hh + 1) * d * r].copy_from_slice(&w);
                    }
                }
                errs[2] = Some(rel_err_of(&w_uv));
            }
        }
        (w_uv, errs)
    };
    let (mut w_uv, mut errs) = fit_values(&student_z(None));
    // The heads' key maps, refitted against the layer output with these value maps; then the
    // value maps again, on the attention the new keys give.
    let mut gks: Option<Vec<Vec<f32>>> = None;
    let mut key_steps = vec![0usize; h];
    if !matches!(kfit, KeyFit::Off) {
        let kp = KeyProblem { src, cal, dm, rope, te, mx, lat: &lat, kpe: &kpe, split };
        let (g, steps) = fit_keys(&kp, &bk, &w_uv, kfit);
        if steps.iter().any(|&n| n > 0) {
            (w_uv, errs) = fit_values(&student_z(Some(&g)));
            gks = Some(g);
        }
        key_steps = steps;
    }
    let rel_err = errs.iter().rev().find_map(|e| *e).unwrap_or(f64::NAN);
    // File layout: the source's query rows; B_k, the coefficients and the scale go to W_UK.
    let n = dm.n();
    let qscale = ((n + p) as f64).sqrt() / (d as f64).sqrt();
    let mut q_rows = Vec::with_capacity(h * (n + p));
    let mut w_uk = vec![0f32; h * n * r];
    for hh in 0..h {
        q_rows.extend((0..d).map(|j| (hh * d + j, 1.0f32)));
        q_rows.extend(mx.pe_dims.iter().map(|&j| (hh * d + j, mx.coef(0, j, hh, dm) as f32)));
        let wuk = &mut w_uk[hh * n * r..(hh + 1) * n * r];
        let bkh = gks.as_ref().map_or(bk.as_slice(), |g| g[hh].as_slice());
        for (ni, &(m, j)) in mx.nope_dims.iter().enumerate() {
            let coef = mx.coef(m, j, hh, dm) * qscale;
            for (dst, &b) in wuk[j * r..(j + 1) * r].iter_mut().zip(&bkh[ni * r..(ni + 1) * r]) {
                *dst = (*dst as f64 + coef * b as f64) as f32;
            }
        }
    }
    // The scale change of the RoPE scores goes to the shared RoPE key (f32, one for all heads).
    let mut wkv_a = a;
    wkv_a.extend(mx.wk_pe.iter().map(|&v| (v as f64 * qscale) as f32));
    (
        MlaAttn {
            q_rows,
            wkv_a,
            w_uk,
            w_uv,
            latent_ms_max,
            rel_err,
            heldout_err: None,
            balance: 1.0,
            value_fit: vfit,
            rope_avg: false,
            key_steps,
        },
        errs,
    )
}

/// Most descent steps of a head's key map.
const KEY_STEPS: usize = 12;

/// Whether and how far the heads' key maps are refitted (see [`fit_keys`]).
#[derive(Clone, Debug)]
enum KeyFit {
    Off,
    /// Up to this many steps on the fitted sequences; each head keeps the count with the least
    /// error on the scored ones (all steps when none are held out).
    Search(usize),
    /// Exactly these steps per head (a count chosen by a search on held-out sequences).
    Steps(Vec<usize>),
}

/// What the key refit of one layer reads.
struct KeyProblem<'a> {
    src: &'a SrcAttn,
    cal: &'a Calib<'a>,
    dm: &'a Dims,
    rope: &'a Rope,
    te: &'a Teacher,
    mx: &'a Mixed,
    lat: &'a [f32], // [T, R]
    kpe: &'a [f32], // [T, P] (rotated)
    split: &'a Split,
}

/// One (sequence, head) of the key refit: everything but the key map, precomputed.
struct KeySeq {
    qn: Vec<f32>, // [L, Nk]
    sp: Vec<f32>, // [L, L]: RoPE scores q_pe·k_pe (unscaled)
    c: Vec<f32>,  // [L, R]
    ob: Vec<f32>, // [L, R]: o·P_h·W_UV,h
    k0: f64,      // Σ_t oᵀ P_h o
}

/// The heads' key maps G_h `[Nk, R]` (position-free scores q_nopeᵀ G_h c), started from the
/// latent's least-squares keys B_k and moved by gradient descent on the head's output error
/// after W_o, Σ_t ‖W_o,h (W_UV,h z_t − o_t)‖² with z_t = Σ_j a_tj c_j the student's attention
/// (the value maps fixed): the scores are fitted where the softmax puts its weight, and the
/// position-free components can make up for the rotation they lost. Step sizes adapt (grow
/// after a step that lowers the error, shrink and retry after one that does not). Returns the
/// maps and the steps each head took.
fn fit_keys(kp: &KeyProblem, bk: &[f32], w_uv: &[f32], kfit: &KeyFit) -> (Vec<Vec<f32>>, Vec<usize>) {
    let (c, h, d, p, r) = (kp.dm.c, kp.dm.h, kp.dm.d, kp.dm.p, kp.dm.r);
    let nk = kp.dm.nk();
    let l = kp.cal.len;
    let scale = 1.0 / (d as f32).sqrt();
    let sub = sub_rope(kp.rope, p, d);
    let fitted: Vec<usize> = (0..kp.split.fit).collect();
    let eval: Vec<usize> = kp.split.eval.clone().collect();
    let res: Vec<(Vec<f32>, usize)> = (0..h)
        .into_par_iter()
        .map(|hh| {
            let (max, fixed) = match kfit {
                KeyFit::Off => (0, None),
                KeyFit::Search(n) => (*n, None),
                KeyFit::Steps(v) => (v[hh], Some(v[hh])),
            };
            if max == 0 {
                // Nothing to fit: skip the head's precomputation.
                return (bk.to_vec(), 0);
            }
            let woh = cols(&kp.src.wo, h * d, 0, c, hh * d, d); // [C, D]
            let ph: Vec<f32> = gram(&woh, c, d).iter().map(|&v| v as f32).collect(); // [D, D]
            let wuv = &w_uv[hh * d * r..(hh + 1) * d * r]; // [D, R]
            let m = matmul(&ph, wuv, d, d, r, false); // P_h·W_UV,h: [D, R]
            let nmat = matmul(&transpose(wuv, d, r), &m, r, d, r, false); // [R, R]
            let prep = |s: usize| -> KeySeq {
                let xs = &kp.cal.x[s * l * c..(s + 1) * l * c];
                let mut qpe = matmul(xs, &kp.mx.wq_pe[hh], l, c, p, true);
                rope_rows(&mut qpe, l, 1, p, l, &sub);
                let qn = matmul(xs, &kp.mx.wq_nope[hh], l, c, nk, true);
                let sp = matmul(&qpe, &kp.kpe[s * l * p..(s + 1) * l * p], l, p, l, true);
                let o = cols(&kp.te.o, h * d, s * l, l, hh * d, d); // [L, D]
                let ob = matmul(&o, &m, l, d, r, false);
                let op = matmul(&o, &ph, l, d, d, false);
                let k0 = o.iter().zip(&op).map(|(a, b)| *a as f64 * *b as f64).sum();
                KeySeq { qn, sp, c: kp.lat[s * l * r..(s + 1) * l * r].to_vec(), ob, k0 }
            };
            let fit_seqs: Vec<KeySeq> = fitted.iter().map(|&s| prep(s)).collect();
            let eval_seqs: Vec<KeySeq> = eval.iter().map(|&s| prep(s)).collect();
            let run = |g: &[f32], seqs: &[KeySeq], want_grad: bool| key_loss(g, seqs, &nmat, scale, nk, r, want_grad);
            let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let mut g = bk.to_vec();
            let (mut f, mut grad) = run(&g, &fit_seqs, true);
            // A step counts when it lowers the error by more than rounding can (1e-7 of the
            // head's output energy); a head whose error is already at rounding level (a
            // conversion that drops nothing) keeps its least-squares keys.
            let energy: f64 = fit_seqs.iter().map(|ks| ks.k0).sum();
            let tol = 1e-7 * energy;
            let max = if f <= 1e-3 * tol { 0 } else { max };
            let mut eta = 0.02 * norm(&g) / norm(&grad).max(f64::MIN_POSITIVE);
            let search = fixed.is_none() && !eval_seqs.is_empty();
            let mut best = (if search { run(&g, &eval_seqs, false).0 } else { 0.0 }, 0usize, g.clone());
            let mut steps = 0;
            'outer: while steps < max {
                for _ in 0..4 {
                    let g2: Vec<f32> = g.iter().zip(&grad).map(|(a, b)| a - (eta as f32) * b).collect();
                    let (f2, grad2) = run(&g2, &fit_seqs, true);
                    if f2 < f - tol {
                        (g, f, grad) = (g2, f2, grad2);
                        eta *= 1.5;
                        steps += 1;
                        if search {
                            let e = run(&g, &eval_seqs, false).0;
                            if e < best.0 {
                                best = (e, steps, g.clone());
                            }
                        }
                        continue 'outer;
                    }
                    eta *= 0.25;
                }
                break;
            }
            if search {
                (best.2, best.1)
            } else {
                (g, steps)
            }
        })
        .collect();
    res.into_iter().unzip()
}

/// The key refit's error Σ_t ‖W_o,h (W_UV,h z_t − o_t)‖² over `seqs` for key map `g` `[Nk, R]`
/// (`nmat` = W_UV,hᵀ P_h W_UV,h `[R, R]`), and its gradient `[Nk, R]` when asked.
fn key_loss(
    g: &[f32],
    seqs: &[KeySeq],
    nmat: &[f32],
    scale: f32,
    nk: usize,
    r: usize,
    want_grad: bool,
) -> (f64, Vec<f32>) {
    let mut loss = 0f64;
    let mut grad = vec![0f32; if want_grad { nk * r } else { 0 }];
    for ks in seqs {
        let l = ks.c.len() / r;
        let kn = matmul(&ks.c, g, l, r, nk, true); // [L, Nk]
        let mut a = matmul(&ks.qn, &kn, l, nk, l, true); // [L, L]
        for t in 0..l {
            let row = &mut a[t * l..(t + 1) * l];
            let mut mx = f32::NEG_INFINITY;
            for (j, v) in row[..=t].iter_mut().enumerate() {
                *v = scale * (*v + ks.sp[t * l + j]);
                mx = mx.max(*v);
            }
            let mut sum = 0f32;
            for v in row[..=t].iter_mut() {
                *v = (*v - mx).exp();
                sum += *v;
            }
            row[..=t].iter_mut().for_each(|v| *v /= sum);
            row[t + 1..].fill(0.0);
        }
        let z = matmul(&a, &ks.c, l, l, r, false); // [L, R]
        let zn = matmul(&z, nmat, l, r, r, false);
        loss += ks.k0;
        for i in 0..l * r {
            loss += z[i] as f64 * (zn[i] as f64 - 2.0 * ks.ob[i] as f64);
        }
        if want_grad {
            // dL/dz = 2(N z − ob); dL/ds = a ⊙ (dL/da − Σ_j a·dL/da); dL/dG = scale·qnᵀ·ds·c.
            let dz: Vec<f32> = zn.iter().zip(&ks.ob).map(|(a, b)| 2.0 * (a - b)).collect();
            let mut ds = matmul(&dz, &ks.c, l, r, l, true); // dL/da [L, L]
            for t in 0..l {
                let (arow, drow) = (&a[t * l..(t + 1) * l], &mut ds[t * l..(t + 1) * l]);
                let dot: f32 = arow[..=t].iter().zip(&drow[..=t]).map(|(x, y)| x * y).sum();
                for j in 0..=t {
                    drow[j] = arow[j] * (drow[j] - dot);
                }
                drow[t + 1..].fill(0.0);
            }
            let t1 = matmul(&ds, &ks.c, l, l, r, false); // [L, R]
            let gq = matmul(&transpose(&ks.qn, l, nk), &t1, nk, l, r, false); // [Nk, R]
            grad.iter_mut().zip(&gq).for_each(|(a, b)| *a += scale * b);
        }
    }
    (loss, grad)
}

/// The MLA key's RoPE (P dims, same base): pair i' has the frequency of source pair i'·D/P.
pub fn sub_rope(rope: &Rope, p: usize, _d: usize) -> Rope {
    Rope { dims: p, ..*rope }
}

/// `[m, k] × [k, n]` in f64.
fn mat64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    c.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, ci)| {
        for kk in 0..k {
            let av = a[i * k + kk];
            if av != 0.0 {
                for (cv, bv) in ci.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                    *cv += av * bv;
                }
            }
        }
    });
    c
}

/// Block-diagonal Ω^½ from a keys block `[Nk, Nk]` (scaled by `wk`) and G value blocks `[D, D]`.
fn omega_half(kb: &[f64], vbs: &[Vec<f64>], nk: usize, d: usize, wk: f64) -> Vec<f64> {
    let g = vbs.len();
    let ny = nk + g * d;
    let mut o = vec![0f64; ny * ny];
    let (ks, _) = sqrt_and_inv_sqrt(kb, nk, 1e-8);
    for i in 0..nk {
        for j in 0..nk {
            o[i * ny + j] = ks[i * nk + j] * wk.sqrt();
        }
    }
    for (gi, vb) in vbs.iter().enumerate() {
        let (vs, _) = sqrt_and_inv_sqrt(vb, d, 1e-8);
        let off = nk + gi * d;
        for i in 0..d {
            for j in 0..d {
                o[(off + i) * ny + off + j] = vs[i * d + j];
            }
        }
    }
    o
}

fn trace_prod(a: &[f64], b: &[f64], n: usize, off: usize, w: usize, ny: usize) -> f64 {
    // tr(A · B[off.., off..]) for A [w, w], B [ny, ny].
    let mut s = 0f64;
    for i in 0..w {
        for j in 0..w {
            s += a[i * w + j] * b[(off + j) * ny + off + i];
        }
    }
    let _ = n;
    s
}

/// The latent metric Ω^½ `[Ny, Ny]` of a method and the K/V balance it chose: balanced
/// energy (baseline), or the score/output metric with its balance searched on the held-out
/// layer-output error (fitted on up to 2 sequences); `fixed` skips the search.
#[allow(clippy::too_many_arguments)]
fn latent_metric(
    src: &SrcAttn,
    cal: &Calib,
    dm: &Dims,
    rope: &Rope,
    te: &Teacher,
    mx: &Mixed,
    y: &[f32],   // [T, Ny]
    cov: &[f64], // [Ny, Ny]
    method: Method,
    vfit: ValueFit,
    held: &Split,
    fixed: Option<f64>,
) -> (Vec<f64>, f64) {
    let (c, h, g, d) = (dm.c, dm.h, dm.g, dm.d);
    let (nk, ny) = (dm.nk(), dm.ny());
    let t = cal.seqs * cal.len;
    if !method.metric {
        // Balanced: keys scaled to the values' total energy.
        let ek: f64 = (0..nk).map(|i| cov[i * ny + i]).sum();
        let ev: f64 = (nk..ny).map(|i| cov[i * ny + i]).sum();
        let w = if ek > 0.0 && ev > 0.0 { (ev / ek).sqrt() } else { 1.0 };
        let mut oh = vec![0f64; ny * ny];
        for i in 0..ny {
            oh[i * ny + i] = if i < nk { w } else { 1.0 };
        }
        return (oh, 1.0);
    }
    // Ω_K: the heads' nope-query second moment (score error), Ω_V: W_oᵀW_o per group.
    let mut qk = vec![0f64; nk * nk];
    for hh in 0..h {
        let qn = matmul(cal.x, &mx.wq_nope[hh], t, c, nk, true);
        for (a, b) in qk.iter_mut().zip(gram(&qn, t, nk)) {
            *a += b / (t as f64 * d as f64);
        }
    }
    let per = h / g;
    let wo_t = transpose(&src.wo, c, h * d); // [H·D, C]
    let vbs: Vec<Vec<f64>> = (0..g)
        .map(|gi| {
            let mut m = vec![0f64; d * d];
            for hh in gi * per..(gi + 1) * per {
                let rows = &wo_t[hh * d * c..(hh + 1) * d * c]; // [D, C]
                let gg = gram(&transpose(rows, d, c), c, d);
                for (a, b) in m.iter_mut().zip(gg) {
                    *a += b;
                }
            }
            m
        })
        .collect();
    // Equal weighted energy, then a search over the balance.
    let ek = trace_prod(&qk, cov, ny, 0, nk, ny);
    let ev: f64 = vbs.iter().enumerate().map(|(gi, vb)| trace_prod(vb, cov, ny, nk + gi * d, d, ny)).sum();
    let w0 = if ek > 0.0 && ev > 0.0 { ev / ek } else { 1.0 };
    let f = fixed.unwrap_or_else(|| {
        let search = Split { fit: held.fit.min(2), eval: held.eval.clone(), every_stage: false };
        let stage = vfit.min(ValueFit::PerHead);
        let mut best: Option<(f64, f64)> = None;
        for &f in &[1.0 / 16.0, 0.25, 1.0, 4.0, 16.0] {
            let oh = omega_half(&qk, &vbs, nk, d, w0 * f);
            let (_, e) = build(src, cal, dm, rope, te, mx, y, &oh, stage, &search, &KeyFit::Off);
            let e = e[stage as usize].unwrap_or(f64::INFINITY);
            if best.is_none_or(|(_, be)| e < be) {
                best = Some((f, e));
            }
        }
        best.map(|b| b.0).unwrap_or(1.0)
    });
    (omega_half(&qk, &vbs, nk, d, w0 * f), f)
}

/// Converts one layer.
pub fn convert_layer(src: &SrcAttn, cal: &Calib, dm: &Dims, rope: &Rope, method: Method) -> MlaAttn {
    let (c, g, d) = (dm.c, dm.g, dm.d);
    let (nk, ny) = (dm.nk(), dm.ny());
    let t = cal.seqs * cal.len;
    let te = teacher(src, cal, dm, rope);
    let u = rorope(&te.k, t, g, d);
    let all = cal.seqs;
    // A quarter of the sequences (at least one when there are 4 or more) is held out to choose,
    // per layer, the latent metric's balance, the position-free keys (with `rope_avg`) and how
    // far the value maps are refitted: the refits minimise the in-sample error, and at small
    // ranks the joint one can fit noise.
    let hold = if all >= 4 { all / 4 } else { 0 };
    let fitn = all - hold;
    let held = Split { fit: fitn, eval: fitn..all, every_stage: true };
    let vmax = match (method.v_refit, method.joint) {
        (false, _) => ValueFit::Pca,
        (true, false) => ValueFit::PerHead,
        (true, true) => ValueFit::Joint,
    };
    let v = matmul(cal.x, &src.wv, t, c, g * d, true); // [T, G·D]
                                                       // Position-free keys: plain (qᵀk); with `rope_avg` also the expected rotation, kept
                                                       // where the held-out error is lower (always, without held-out sequences).
    let rot = method.rope_avg.then(|| expected_rotation(&te.hist, rope, d));
    let keys: Vec<Option<&[(f64, f64)]>> = match &rot {
        None => vec![None],
        Some(r) if hold > 0 => vec![None, Some(r.as_slice())],
        Some(r) => vec![Some(r.as_slice())],
    };
    let choose = hold > 0 && (keys.len() > 1 || vmax > ValueFit::Pca);
    let mut balance = None;
    // (held-out error, value fit, keys, Y [T, Ny], Ω^½ [Ny, Ny], balance)
    type Candidate = (f64, ValueFit, Mixed, Vec<f32>, Vec<f64>, f64, Vec<usize>);
    let mut best: Option<Candidate> = None;
    for key in keys {
        let mx = mixed(src, dm, &u, key);
        let kn = matmul(cal.x, &mx.wk_nope, t, c, nk, true); // [T, Nk]
        let mut y = Vec::with_capacity(t * ny); // [T, Ny]
        for i in 0..t {
            y.extend_from_slice(&kn[i * nk..(i + 1) * nk]);
            y.extend_from_slice(&v[i * g * d..(i + 1) * g * d]);
        }
        let cov = gram(&y, t, ny);
        // The balance is searched once (plain keys) and kept for the expected rotation.
        let (oh, f) = latent_metric(src, cal, dm, rope, &te, &mx, &y, &cov, method, vmax, &held, balance);
        balance = Some(f);
        // How far to refit the values: the stage with the least held-out error.
        let mut steps = vec![0usize; dm.h];
        let (vfit, e) = if choose {
            let kf = if method.keys { KeyFit::Search(KEY_STEPS) } else { KeyFit::Off };
            let (cand, errs) = build(src, cal, dm, rope, &te, &mx, &y, &oh, vmax, &held, &kf);
            steps = cand.key_steps;
            let (i, e) = errs
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|e| (i, e)))
                .fold((0, f64::INFINITY), |b, (i, e)| if e < b.1 { (i, e) } else { b });
            ([ValueFit::Pca, ValueFit::PerHead, ValueFit::Joint][i], e)
        } else {
            (vmax, f64::NAN)
        };
        if best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, vfit, mx, y, oh, f, steps));
        }
    }
    let Some((e, vfit, mx, y, oh, f, steps)) = best else { unreachable!("at least one key variant") };
    // The key maps take the steps the held-out sequences chose (all of them without any).
    let kf = match (method.keys, choose) {
        (false, _) => KeyFit::Off,
        (true, true) => KeyFit::Steps(steps),
        (true, false) => KeyFit::Search(KEY_STEPS),
    };
    let (mut out, _) =
        build(src, cal, dm, rope, &te, &mx, &y, &oh, vfit, &Split { fit: all, eval: 0..0, every_stage: false }, &kf);
    out.balance = f;
    out.heldout_err = choose.then_some(e);
    out.rope_avg = mx.rot;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use latent_attention::RopeStyle;

    #[test]
    fn expected_rotation_of_one_distance_is_that_rotation() {
        // All attention at Δ = 5: qᵀ M k must equal the rotated score at distance 5.
        let rope = Rope::plain(8, 10000.0, RopeStyle::Interleaved);
        let mut hist = vec![0f64; 16];
        hist[5] = 2.0;
        let rot = expected_rotation(&hist, &rope, 8);
        let (q, k) = ([0.3f32, -1.2], [0.7f32, 0.4]);
        for (i, &(ec, es)) in rot.iter().enumerate() {
            let km = [ec * k[0] as f64 + es * k[1] as f64, -es * k[0] as f64 + ec * k[1] as f64];
            let approx = q[0] as f64 * km[0] + q[1] as f64 * km[1];
            // Exact: (R(p)q)·(R(p−5)k) at p = 9.
            let mut qq = [0f32; 8];
            let mut kk = [0f32; 8];
            qq[2 * i..2 * i + 2].copy_from_slice(&q);
            kk[2 * i..2 * i + 2].copy_from_slice(&k);
            rope.apply(&mut qq, 9);
            rope.apply(&mut kk, 4);
            let exact: f64 = qq.iter().zip(&kk).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((approx - exact).abs() < 1e-5, "pair {i}: {approx} vs {exact}");
        }
    }

    /// The key refit's gradient is the derivative of its error: central differences on a
    /// random problem (softmax over causal rows of several lengths, two sequences).
    #[test]
    fn key_refit_gradient_matches_finite_differences() {
        let (l, nk, r) = (7, 3, 4);
        let mut st = 7u64;
        let mut rnd = || {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((st >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
        };
        let seqs: Vec<KeySeq> = (0..2)
            .map(|_| KeySeq {
                qn: (0..l * nk).map(|_| 2.0 * rnd()).collect(),
                sp: (0..l * l).map(|_| rnd()).collect(),
                c: (0..l * r).map(|_| rnd()).collect(),
                ob: (0..l * r).map(|_| rnd()).collect(),
                k0: 3.0,
            })
            .collect();
        let b: Vec<f32> = (0..r * r).map(|_| rnd()).collect();
        let nmat = matmul(&b, &b, r, r, r, true); // B·Bᵀ: symmetric, as W_UVᵀ P W_UV
        let g: Vec<f32> = (0..nk * r).map(|_| rnd()).collect();
        let (_, grad) = key_loss(&g, &seqs, &nmat, 0.7, nk, r, true);
        let mut worst = 0f64;
        for i in 0..nk * r {
            let eps = 1e-2f32;
            let (mut gp, mut gm) = (g.clone(), g.clone());
            gp[i] += eps;
            gm[i] -= eps;
            let fd = (key_loss(&gp, &seqs, &nmat, 0.7, nk, r, false).0
                - key_loss(&gm, &seqs, &nmat, 0.7, nk, r, false).0)
                / (2.0 * eps as f64);
            worst = worst.max((fd - grad[i] as f64).abs() / (grad[i] as f64).abs().max(1.0));
        }
        // Measured 5.1e-5 (f32 products, ε = 1e-2); dropping the softmax's row term gives 0.93.
        assert!(worst < 2e-4, "gradient vs central differences: worst relative gap {worst:e}");
    }

    /// RoRoPE alone changes no score: with P = D the first mixed head is the shared RoPE key
    /// and, rotating the other mixed heads' components by their own frequencies (what the
    /// conversion then drops), every head's q·k at every distance equals the source's.
    #[test]
    fn rorope_mix_preserves_scores() {
        let (c, h, g, d) = (6, 4, 2, 8);
        let mut st = 99u64;
        let mut rnd = || {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((st >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
        };
        let src = SrcAttn {
            wq: (0..h * d * c).map(|_| rnd()).collect(),
            wk: (0..g * d * c).map(|_| rnd()).collect(),
            wv: vec![0.0; g * d * c],
            wo: vec![0.0; c * h * d],
        };
        let xs: Vec<f32> = (0..20 * c).map(|_| rnd()).collect();
        let k = matmul(&xs, &src.wk, 20, c, g * d, true);
        let u = rorope(&k, 20, g, d);
        let dm = Dims { c, h, g, d, p: d, r: 1 };
        let mx = mixed(&src, &dm, &u, None);
        let rope = Rope::plain(d, 10000.0, RopeStyle::Interleaved);
        let (x1, x2) = (&xs[3 * c..4 * c], &xs[7 * c..8 * c]);
        let dotv = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
        let mv = |w: &[f32], x: &[f32], rows: usize| -> Vec<f32> { matmul(x, w, 1, c, rows, true) };
        for (p, j) in [(5usize, 2usize), (9, 9), (40, 1)] {
            for hh in 0..h {
                let gi = hh / (h / g);
                let mut q = mv(&src.wq[hh * d * c..(hh + 1) * d * c], x1, d);
                let mut kk = mv(&src.wk[gi * d * c..(gi + 1) * d * c], x2, d);
                rope.apply(&mut q, p);
                rope.apply(&mut kk, j);
                let want = dotv(&q, &kk);
                let mut qp = mv(&mx.wq_pe[hh], x1, d);
                let mut kp = mv(&mx.wk_pe, x2, d);
                rope.apply(&mut qp, p);
                rope.apply(&mut kp, j);
                let mut got = dotv(&qp, &kp);
                let qn = mv(&mx.wq_nope[hh], x1, dm.nk());
                let kn = mv(&mx.wk_nope, x2, dm.nk());
                for m in 0..g - 1 {
                    let (mut a, mut b) = (qn[m * d..(m + 1) * d].to_vec(), kn[m * d..(m + 1) * d].to_vec());
                    rope.apply(&mut a, p);
                    rope.apply(&mut b, j);
                    got += dotv(&a, &b);
                }
                assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "head {hh} ({p},{j}): {got} vs {want}");
            }
        }
    }
}
