//! Random mutations of valid files (fixed seed): parsing never panics, memory
//! stays proportional to the input, and whatever parses is self-consistent.

mod common;

use common::*;
use latent_formats::gguf::{FieldSpan, GgufError, GgufFile};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

const ITERATIONS: usize = 4000;

fn interesting_u64(rng: &mut Rng, file_len: u64) -> u64 {
    match rng.below(8) {
        0 => rng.next_u64(),
        1 => 1 << rng.below(64),
        2 => (1u64 << rng.below(64)).wrapping_sub(1),
        3 => rng.below(64),
        4 => file_len.wrapping_add(rng.below(64)).wrapping_sub(32),
        5 => u64::MAX - rng.below(64),
        6 => i64::MAX as u64 + rng.below(3),
        _ => rng.below(1 << 20),
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, spans: &[FieldSpan]) {
    let len = bytes.len() as u64;
    match rng.below(7) {
        // Overwrite a known numeric field with an interesting value.
        0 | 1 => {
            let s = spans[rng.below(spans.len() as u64) as usize];
            if s.offset + s.len as u64 <= len {
                let v = interesting_u64(rng, len).to_le_bytes();
                let at = s.offset as usize;
                bytes[at..at + s.len as usize].copy_from_slice(&v[..s.len as usize]);
            }
        }
        // Random byte(s) anywhere in the header region.
        2 | 3 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let at = rng.below(len.clamp(1, 1024)) as usize;
                if at < bytes.len() {
                    bytes[at] = rng.next_u64() as u8;
                }
            }
        }
        // Truncate.
        4 => {
            let cut = rng.below(len + 1) as usize;
            bytes.truncate(cut);
        }
        // Delete a few bytes.
        5 => {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len() as u64) as usize;
                let n = (1 + rng.below(16) as usize).min(bytes.len() - at);
                bytes.drain(at..at + n);
            }
        }
        // Insert a few random bytes.
        _ => {
            let at = rng.below(len + 1) as usize;
            let n = 1 + rng.below(16) as usize;
            let ins = rng.bytes(n);
            bytes.splice(at..at, ins);
        }
    }
}

fn check(bytes: &[u8]) -> Result<(), GgufError> {
    let (r, peak) = measure(|| GgufFile::from_slice(bytes));
    assert!(peak <= 48 * bytes.len() + (1 << 16), "peak {peak} for {} bytes", bytes.len());
    let f = r?;
    // Invariants of anything that parses.
    let file_len = f.file_bytes();
    assert_eq!(file_len, bytes.len() as u64);
    assert!(f.alignment().is_power_of_two());
    assert_eq!(f.data_offset() % f.alignment(), 0);
    let mut ranges = Vec::new();
    for t in f.tensors() {
        assert!((1..=4).contains(&t.dims.len()));
        assert_eq!(t.dims[0] % t.ggml_type.block_size(), 0);
        assert_eq!(t.ggml_type.bytes_for(t.n_elements()), Some(t.n_bytes));
        assert!(t.offset >= f.data_offset() && t.offset + t.n_bytes <= file_len);
        assert_eq!(t.offset % f.alignment(), 0);
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(f.tensor(&t.name), Some(t));
        if t.n_bytes > 0 {
            ranges.push((t.offset, t.offset + t.n_bytes));
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
    for (k, v) in f.metadata() {
        assert_eq!(f.get(k), Some(v));
    }
    Ok(())
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let bases: Vec<(Vec<u8>, Vec<FieldSpan>)> = [None, Some(1u32), Some(128)]
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut b = sample_builder(100 + i as u64);
            if let Some(a) = a {
                b.alignment(a);
            }
            b.build_with_layout().unwrap()
        })
        .collect();
    let (mut ok, mut err) = (0, 0);
    for i in 0..ITERATIONS {
        let (base, spans) = &bases[i % bases.len()];
        let mut m = base.clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut m, spans);
        }
        match check(&m) {
            Ok(()) => ok += 1,
            Err(e) => {
                let off = e.offset().expect("content error has an offset");
                assert!(off <= m.len() as u64, "{e:?}");
                err += 1;
            }
        }
    }
    assert_eq!(ok + err, ITERATIONS);
    assert!(err > ITERATIONS / 4, "ok {ok} err {err}");
}

#[test]
fn random_bytes_after_a_valid_header() {
    let mut rng = Rng(42);
    for i in 0..2000 {
        let mut r = Raw::header(2 + (i % 2) as u32, rng.below(4), rng.below(6));
        let n = rng.below(256) as usize;
        let body = rng.bytes(n);
        r.0.extend_from_slice(&body);
        let _ = check(&r.0);
    }
}
