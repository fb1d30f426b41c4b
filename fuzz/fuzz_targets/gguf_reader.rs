//! Arbitrary bytes as a GGUF file: parsing never panics, errors point inside the input, and
//! whatever parses is self-consistent and can be walked in full through the public API.
#![no_main]

use std::hint::black_box;

use latent_formats::gguf::{GgufFile, MetaValue};
use libfuzzer_sys::fuzz_target;

/// Touches every accessor of a value, recursively; returns a count so nothing is optimised out.
fn walk(v: &MetaValue, depth: usize) -> u64 {
    assert!(depth <= latent_formats::gguf::MAX_ARRAY_DEPTH, "array nesting {depth}");
    let mut n = 1u64;
    black_box(v.type_id());
    black_box(v.type_name());
    black_box(v.describe());
    black_box((v.as_i128(), v.as_u64(), v.as_i64(), v.as_f64(), v.as_bool()));
    if let Some(s) = v.as_str() {
        n += s.len() as u64;
    }
    if let Some(items) = v.as_array() {
        for item in items {
            n += walk(item, depth + 1);
        }
    }
    n
}

fuzz_target!(|data: &[u8]| {
    let f = match GgufFile::from_slice(data) {
        Ok(f) => f,
        Err(e) => {
            black_box(e.to_string());
            if let Some(off) = e.offset() {
                assert!(off <= data.len() as u64, "error offset {off} past {} bytes: {e}", data.len());
            }
            return;
        }
    };
    // The owned and the Vec entry points agree.
    assert_eq!(GgufFile::from_bytes(data.to_vec()).map(|g| g.metadata().len()).ok(), Some(f.metadata().len()));

    // File-level invariants.
    let file_len = f.file_bytes();
    assert_eq!(file_len, data.len() as u64);
    assert_eq!(f.as_bytes(), data);
    assert!(matches!(f.version(), 2 | 3), "version {}", f.version());
    assert!(f.alignment().is_power_of_two());
    assert_eq!(f.data_offset() % f.alignment(), 0);
    assert!(f.data_offset() <= file_len.next_multiple_of(f.alignment()));
    black_box(format!("{f:?}"));
    black_box(f.architecture().ok());

    // Every metadata value, through the lookup and every typed getter.
    let mut count = 0u64;
    for (k, v) in f.metadata() {
        // Keys are unique, so the lookup finds this very value (not just an equal one: NaN).
        assert!(f.get(k).is_some_and(|g| std::ptr::eq(g, v)), "key {k:?}");
        count += walk(v, 0);
        black_box(f.get_str(k).ok());
        black_box(f.get_u32(k).ok());
        black_box(f.get_u64(k).ok());
        black_box(f.get_i32(k).ok());
        black_box(f.get_i64(k).ok());
        black_box(f.get_f32(k).ok());
        black_box(f.get_f64(k).ok());
        black_box(f.get_bool(k).ok());
        black_box(f.get_array(k).ok());
        black_box(f.get_str_array(k).ok());
        black_box(f.get_f32_array(k).ok());
        black_box(f.get_i32_array(k).ok());
        black_box(f.get_u32_array(k).ok());
        // Errors of the getters render.
        if let Err(e) = f.get_u32(k) {
            black_box(e.to_string());
        }
    }
    black_box(count);

    // Every tensor: its info is consistent and its bytes are inside the file, disjoint from
    // the others.
    let mut ranges = Vec::new();
    for t in f.tensors() {
        assert!((1..=4).contains(&t.dims.len()), "{t:?}");
        assert_eq!(t.dims[0] % t.ggml_type.block_size(), 0, "{t:?}");
        assert_eq!(t.ggml_type.bytes_for(t.n_elements()), Some(t.n_bytes), "{t:?}");
        assert!(t.offset >= f.data_offset(), "{t:?}");
        assert!(t.offset.checked_add(t.n_bytes).is_some_and(|end| end <= file_len), "{t:?}");
        assert_eq!(t.offset % f.alignment(), 0, "{t:?}");
        assert_eq!(t.shape_row_major().len(), t.dims.len());
        black_box(t.ggml_type.to_string());
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        let sum = bytes.iter().fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
        black_box(sum);
        assert!(f.tensor(&t.name).is_some_and(|g| std::ptr::eq(g, t)), "tensor {:?}", t.name);
        assert_eq!(f.tensor_data_by_name(&t.name).map(<[u8]>::len), Some(bytes.len()));
        if t.n_bytes > 0 {
            ranges.push((t.offset, t.offset + t.n_bytes));
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors {w:?}");
    }
});
