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
/// matching unit eigenvectors as the rows of `[n, n]` (Householder reduction to tridiagonal
/// form, then the implicit QL iteration with Wilkinson shifts; O(n³)).
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n);
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    // z: row-major working copy, symmetrized (sums of products differ in the last bits).
    let mut z = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            z[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    // Householder tridiagonalization; z accumulates the orthogonal transform.
    for i in (1..n).rev() {
        let l = i - 1;
        let mut h = 0f64;
        if l > 0 {
            let scale: f64 = (0..=l).map(|k| z[i * n + k].abs()).sum();
            if scale == 0.0 {
                e[i] = z[i * n + l];
            } else {
                for k in 0..=l {
                    z[i * n + k] /= scale;
                    h += z[i * n + k] * z[i * n + k];
                }
                let f = z[i * n + l];
                let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
                e[i] = scale * g;
                h -= f * g;
                z[i * n + l] = f - g;
                let mut f = 0f64;
                for j in 0..=l {
                    z[j * n + i] = z[i * n + j] / h;
                    let mut g = 0f64;
                    for k in 0..=j {
                        g += z[j * n + k] * z[i * n + k];
                    }
                    for k in j + 1..=l {
                        g += z[k * n + j] * z[i * n + k];
                    }
                    e[j] = g / h;
                    f += e[j] * z[i * n + j];
                }
                let hh = f / (h + h);
                for j in 0..=l {
                    let f = z[i * n + j];
                    let g = e[j] - hh * f;
                    e[j] = g;
                    for k in 0..=j {
                        z[j * n + k] -= f * e[k] + g * z[i * n + k];
                    }
                }
            }
        } else {
            e[i] = z[i * n + l];
        }
        d[i] = h;
    }
    d[0] = 0.0;
    e[0] = 0.0;
    for i in 0..n {
        if d[i] != 0.0 {
            for j in 0..i {
                let mut g = 0f64;
                for k in 0..i {
                    g += z[i * n + k] * z[k * n + j];
                }
                for k in 0..i {
                    z[k * n + j] -= g * z[k * n + i];
                }
            }
        }
        d[i] = z[i * n + i];
        z[i * n + i] = 1.0;
        for j in 0..i {
            z[j * n + i] = 0.0;
            z[i * n + j] = 0.0;
        }
    }
    // Implicit QL on the tridiagonal (d, e); eigenvectors are the columns of z.
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l || iter >= 64 {
                break;
            }
            iter += 1;
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r.abs() } else { -r.abs() });
            let (mut s, mut c, mut p) = (1f64, 1f64, 0f64);
            let mut underflow = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                for k in 0..n {
                    let f = z[k * n + i + 1];
                    z[k * n + i + 1] = s * z[k * n + i] + c * f;
                    z[k * n + i] = c * z[k * n + i] - s * f;
                }
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| d[b].total_cmp(&d[a]));
    let vals = order.iter().map(|&i| d[i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (r, &i) in order.iter().enumerate() {
        for k in 0..n {
            vecs[r * n + k] = z[k * n + i];
        }
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
        for &n in &[1usize, 2, 3, 17, 64, 129] {
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
    fn eigen_of_degenerate_matrices() {
        let n = 6;
        let check = |a: &[f64]| {
            let (vals, vecs) = sym_eigen(a, n);
            for i in 0..n {
                for j in 0..n {
                    let rec: f64 = (0..n).map(|e| vals[e] * vecs[e * n + i] * vecs[e * n + j]).sum();
                    assert!((rec - a[i * n + j]).abs() < 1e-12, "reconstruction");
                    let dot: f64 = (0..n).map(|k| vecs[i * n + k] * vecs[j * n + k]).sum();
                    assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "orthonormal");
                }
            }
            vals
        };
        assert!(check(&vec![0f64; n * n]).iter().all(|&v| v == 0.0));
        let eye: Vec<f64> = (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect();
        assert!(check(&eye).iter().all(|&v| (v - 1.0).abs() < 1e-14));
        let u = [0.3, -1.0, 2.0, 0.0, 0.5, 1.5];
        let r1: Vec<f64> = (0..n * n).map(|i| u[i / n] * u[i % n]).collect();
        let vals = check(&r1);
        let norm2: f64 = u.iter().map(|x| x * x).sum();
        assert!((vals[0] - norm2).abs() < 1e-12 && vals[1..].iter().all(|v| v.abs() < 1e-12));
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
