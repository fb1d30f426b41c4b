//! Dense linear algebra for calibration: row-major f32 products through the `gemm` crate,
//! symmetric eigendecomposition (cyclic Jacobi, f64) and ridge-regularised least squares
//! (Cholesky, f64). Sizes here are small (a few hundred to a few thousand).

/// `A·B` (`trans_b = false`, B `[k, n]`) or `A·Bᵀ` (`trans_b = true`, B `[n, k]`); A `[m, k]`
/// → `[m, n]`, row-major, f32 with the `gemm` crate's accumulation.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, trans_b: bool) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "lhs shape");
    assert_eq!(b.len(), k * n, "rhs shape");
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    if k == 0 {
        return c;
    }
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let threads = rayon::current_num_threads();
    let par =
        if threads > 1 && m * n * k > 1 << 18 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: a is m×k row-major (cs 1, rs k); b is k×n row-major or n×k read transposed with
    // the strides above; c is m×n row-major; all lengths were checked.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
    c
}

/// `Aᵀ·A / scale` in f64 for A `[t, n]` (a second-moment matrix `[n, n]`), accumulated in
/// f32 blocks of 256 rows and summed in f64.
pub fn gram(a: &[f32], t: usize, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), t * n);
    let mut g = vec![0f64; n * n];
    for r0 in (0..t).step_by(256) {
        let r1 = (r0 + 256).min(t);
        let blk = &a[r0 * n..r1 * n];
        let at = transpose(blk, r1 - r0, n);
        let p = matmul(&at, blk, n, r1 - r0, n, false);
        for (gi, pi) in g.iter_mut().zip(&p) {
            *gi += *pi as f64;
        }
    }
    g
}

/// `Aᵀ·B` in f64 for A `[t, n]`, B `[t, m]` → `[n, m]` (blocks of 256 rows, summed in f64).
pub fn cross(a: &[f32], b: &[f32], t: usize, n: usize, m: usize) -> Vec<f64> {
    assert_eq!(a.len(), t * n);
    assert_eq!(b.len(), t * m);
    let mut g = vec![0f64; n * m];
    for r0 in (0..t).step_by(256) {
        let r1 = (r0 + 256).min(t);
        let at = transpose(&a[r0 * n..r1 * n], r1 - r0, n);
        let p = matmul(&at, &b[r0 * m..r1 * m], n, r1 - r0, m, false);
        for (gi, pi) in g.iter_mut().zip(&p) {
            *gi += *pi as f64;
        }
    }
    g
}

/// Transpose of a row-major `[r, c]` matrix.
pub fn transpose<T: Copy + Default>(a: &[T], r: usize, c: usize) -> Vec<T> {
    let mut t = vec![T::default(); r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

/// Eigendecomposition of a symmetric `[n, n]` matrix: eigenvalues in descending order and the
/// matching unit eigenvectors as the rows of `[n, n]` (cyclic Jacobi rotations until the
/// off-diagonal mass is below 1e-22 of the total, at most 60 sweeps).
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n);
    let mut m = a.to_vec();
    // Symmetrize (inputs are sums of products and may differ in the last bits).
    for i in 0..n {
        for j in 0..i {
            let v = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
    let mut v = vec![0f64; n * n]; // rows: eigenvectors
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = m.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let mut off = 0f64;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    off += m[i * n + j] * m[i * n + j];
                }
            }
        }
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Rotate columns p, q then rows p, q of m.
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vpk, vqk) = (v[p * n + k], v[q * n + k]);
                    v[p * n + k] = c * vpk - s * vqk;
                    v[q * n + k] = s * vpk + c * vqk;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| m[b * n + b].total_cmp(&m[a * n + a]));
    let vals = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (r, &i) in order.iter().enumerate() {
        vecs[r * n..(r + 1) * n].copy_from_slice(&v[i * n..(i + 1) * n]);
    }
    (vals, vecs)
}

/// Solves `X·G = B` for X `[m, n]` with G `[n, n]` symmetric positive semi-definite plus
/// `ridge · mean(diag G)` on the diagonal (Cholesky), B `[m, n]`: the least-squares map
/// `X = B·(G + λI)⁻¹` when G is a Gram matrix of features and B the target–feature cross.
pub fn solve_spd_right(g: &[f64], b: &[f64], n: usize, m: usize, ridge: f64) -> Vec<f64> {
    assert_eq!(g.len(), n * n);
    assert_eq!(b.len(), m * n);
    let mean_diag = (0..n).map(|i| g[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let lam = (ridge * mean_diag).max(1e-300);
    // Cholesky G + λI = L·Lᵀ.
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = g[i * n + j] + if i == j { lam } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                // A pivot lost to rounding (a numerically singular G) gets the ridge alone.
                l[i * n + i] = if s > 0.5 * lam { s.sqrt() } else { lam.sqrt() };
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // Each row x of X solves x·L·Lᵀ = b: forward with Lᵀ (y·Lᵀ... ) written as L·yᵀ = bᵀ, Lᵀ·xᵀ = yᵀ.
    let mut x = vec![0f64; m * n];
    for r in 0..m {
        let bi = &b[r * n..(r + 1) * n];
        let mut y = vec![0f64; n];
        for i in 0..n {
            let mut s = bi[i];
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        let xr = &mut x[r * n..(r + 1) * n];
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * xr[k];
            }
            xr[i] = s / l[i * n + i];
        }
    }
    x
}

/// Symmetric square root and inverse square root of an SPD `[n, n]` matrix (eigenvalues
/// floored at `floor · max eigenvalue`).
pub fn sqrt_and_inv_sqrt(a: &[f64], n: usize, floor: f64) -> (Vec<f64>, Vec<f64>) {
    let (vals, vecs) = sym_eigen(a, n);
    let top = vals.first().copied().unwrap_or(0.0).max(f64::MIN_POSITIVE);
    let mut s = vec![0f64; n * n];
    let mut si = vec![0f64; n * n];
    for (e, &lam) in vals.iter().enumerate() {
        let lam = lam.max(floor * top);
        let (r, ri) = (lam.sqrt(), 1.0 / lam.sqrt());
        let ve = &vecs[e * n..(e + 1) * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] += r * ve[i] * ve[j];
                si[i * n + j] += ri * ve[i] * ve[j];
            }
        }
    }
    (s, si)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    #[test]
    fn matmul_matches_loops_both_layouts() {
        let mut r = rng(3);
        for &(m, k, n) in &[(1, 1, 1), (3, 63, 5), (127, 3, 64), (0, 4, 2), (5, 0, 3)] {
            let a: Vec<f32> = (0..m * k).map(|_| r() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| r() as f32).collect();
            let bt = transpose(&b, k, n);
            let c1 = matmul(&a, &b, m, k, n, false);
            let c2 = matmul(&a, &bt, m, k, n, true);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|x| a[i * k + x] as f64 * b[x * n + j] as f64).sum();
                    assert!((c1[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{k}x{n}");
                    assert!((c2[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{k}x{n} (transposed)");
                }
            }
        }
    }

    #[test]
    fn eigen_reconstructs_and_orders() {
        let mut r = rng(7);
        for &n in &[1usize, 2, 3, 17, 64] {
            let x: Vec<f64> = (0..n * (n + 5)).map(|_| r()).collect();
            // A = Xᵀ X / rows: SPD with spread eigenvalues.
            let rows = n + 5;
            let mut a = vec![0f64; n * n];
            for t in 0..rows {
                for i in 0..n {
                    for j in 0..n {
                        a[i * n + j] += x[t * n + i] * x[t * n + j];
                    }
                }
            }
            let (vals, vecs) = sym_eigen(&a, n);
            assert!(vals.windows(2).all(|w| w[0] >= w[1]), "descending");
            let mut err = 0f64;
            for i in 0..n {
                for j in 0..n {
                    let rec: f64 = (0..n).map(|e| vals[e] * vecs[e * n + i] * vecs[e * n + j]).sum();
                    err = err.max((rec - a[i * n + j]).abs());
                    let dot: f64 = (0..n).map(|k| vecs[i * n + k] * vecs[j * n + k]).sum();
                    assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "orthonormal");
                }
            }
            assert!(err < 1e-9 * vals[0].max(1.0), "n={n}: reconstruction error {err}");
        }
    }

    #[test]
    fn least_squares_recovers_a_map() {
        let mut r = rng(11);
        let (n, m, t) = (9, 4, 200);
        let w: Vec<f64> = (0..m * n).map(|_| r()).collect();
        let f: Vec<f64> = (0..t * n).map(|_| r()).collect();
        let mut g = vec![0f64; n * n];
        let mut b = vec![0f64; m * n];
        for s in 0..t {
            let fs = &f[s * n..(s + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    g[i * n + j] += fs[i] * fs[j];
                }
            }
            for o in 0..m {
                let y: f64 = (0..n).map(|i| w[o * n + i] * fs[i]).sum();
                for i in 0..n {
                    b[o * n + i] += y * fs[i];
                }
            }
        }
        let x = solve_spd_right(&g, &b, n, m, 1e-12);
        for (xi, wi) in x.iter().zip(&w) {
            assert!((xi - wi).abs() < 1e-8, "{xi} vs {wi}");
        }
    }
}
