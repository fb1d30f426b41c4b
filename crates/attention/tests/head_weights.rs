//! Per-head up-projection stacks read as stored: a BF16 stack gives, bit for bit, what the
//! f32 copy of its values gives (bf16 → f32 is exact and the tiles accumulate in the same
//! order), through the absorb, expand and decompress products, on hostile sizes.

use latent_attention::linear::{absorb_heads, decompress_heads, expand_heads, in_order};
use latent_attention::testing::Rng;
use latent_attention::HeadWeights;

/// Random values rounded to bf16: the bf16 stack and its exact f32 copy.
fn stacks(n: usize, rng: &mut Rng) -> (HeadWeights, HeadWeights) {
    let v = rng.normals(n, 0.3);
    let bits: Vec<u16> = v
        .iter()
        .map(|x| {
            let b = x.to_bits();
            ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
        })
        .collect();
    let f: Vec<f32> = bits.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
    let bytes: Vec<u8> = bits.iter().flat_map(|h| h.to_le_bytes()).collect();
    (HeadWeights::Bf16(bytes), HeadWeights::F32(f))
}

fn same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: {x} vs {y}");
    }
    assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite output");
    assert!(a.iter().any(|&x| x != 0.0), "{what}: all zero");
}

#[test]
fn bf16_stacks_give_their_f32_copies_results_bit_for_bit() {
    let mut rng = Rng(31);
    // (T, H, N, R): single elements, odd sizes across the 16-lane and register-block edges,
    // the converted SmolLM2's shape (9 heads, N = 64, R = 128).
    for (t, h, n, r) in [(1, 1, 1, 1), (3, 2, 63, 17), (5, 3, 64, 127), (1, 9, 64, 128), (7, 4, 33, 65)] {
        let (wb, wf) = stacks(h * n * r, &mut rng);
        assert_eq!((wb.len(), wb.bytes(), wf.bytes()), (h * n * r, 2 * h * n * r, 4 * h * n * r));
        assert_eq!(wb.to_f32(), wf.to_f32());
        // absorb: q [T, H, N + 3] (3 extra dims per head, untouched), out [T, H, R + 2].
        let (qd, od) = (n + 3, r + 2);
        let q = rng.normals(t * h * qd, 1.0);
        let mut ob = vec![f32::NAN; t * h * od];
        let mut of = ob.clone();
        absorb_heads(&in_order, &q, t, h, qd, n, wb.view(), 1, r, &mut ob, od);
        absorb_heads(&in_order, &q, t, h, qd, n, wf.view(), 1, r, &mut of, od);
        let pick = |o: &[f32]| -> Vec<f32> { o.chunks_exact(od).flat_map(|row| row[..r].to_vec()).collect() };
        same(&pick(&ob), &pick(&of), &format!("absorb T={t} H={h} N={n} R={r}"));
        assert!(ob.chunks_exact(od).all(|row| row[r..].iter().all(|x| x.is_nan())), "absorb wrote past R");
        // expand: the stack read as [H, N, R] maps latent outputs [T, H, R] to [T, H, N].
        let o = rng.normals(t * h * r, 1.0);
        same(
            &expand_heads(&in_order, &o, t, h, r, wb.view(), 1, n),
            &expand_heads(&in_order, &o, t, h, r, wf.view(), 1, n),
            &format!("expand T={t} H={h} N={n} R={r}"),
        );
        // decompress: latent rows [S, R + 5] through [H, N, R] into [S, H, N + 1].
        let s = t + 2;
        let rows = rng.normals(s * (r + 5), 1.0);
        same(
            &decompress_heads(&rows, s, r + 5, r, wb.view(), h, n, n + 1),
            &decompress_heads(&rows, s, r + 5, r, wf.view(), h, n, n + 1),
            &format!("decompress S={s} H={h} N={n} R={r}"),
        );
    }
}
