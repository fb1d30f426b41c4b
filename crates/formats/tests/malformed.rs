//! Malformed input: every case is a typed error naming the offset, never a
//! panic, and never a large allocation.

mod common;

use common::*;
use latent_formats::gguf::{
    FieldKind, FieldSpan, GgmlType, GgufBuilder, GgufError, GgufFile, MetaValue, MAX_ARRAY_DEPTH, MAX_METADATA_VALUES,
};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Parses `bytes` (borrowed, so the copy inside is the only baseline cost)
/// and checks the memory used stays proportional to the input.
fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let (r, peak) = measure(|| GgufFile::from_slice(bytes));
    // The aligned copy of the input, metadata values (32 bytes per value, and
    // a value takes at least one input byte), keys and hash maps.
    let bound = 48 * bytes.len() + (1 << 16);
    assert!(peak <= bound, "parse of {} bytes used {peak} bytes (bound {bound}): {:?}", bytes.len(), r.as_ref().err());
    if let Err(e) = &r {
        // Content errors name an offset inside the file (or at its end), and
        // the message repeats it.
        let off = e.offset().unwrap_or_else(|| panic!("no offset: {e:?}"));
        assert!(off <= bytes.len() as u64, "{e:?} offset beyond {}", bytes.len());
        assert!(e.to_string().contains(&off.to_string()), "{e}");
    }
    r
}

fn spans_of(spans: &[FieldSpan], kind: FieldKind) -> Vec<FieldSpan> {
    spans.iter().copied().filter(|s| s.kind == kind).collect()
}

fn span(spans: &[FieldSpan], kind: FieldKind, nth: usize) -> u64 {
    spans_of(spans, kind)[nth].offset
}

/// Offset of the first occurrence of `needle`.
fn find(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).position(|w| w == needle).expect("needle present") as u64
}

/// End of the last tensor's data: any truncation before it must fail.
fn data_end(bytes: &[u8]) -> u64 {
    let f = GgufFile::from_slice(bytes).unwrap();
    f.tensors().iter().map(|t| t.offset + t.n_bytes).max().unwrap_or(0)
}

#[test]
fn every_truncation_fails_cleanly() {
    for alignment in [32u32, 1, 256] {
        let mut b = sample_builder(9);
        b.alignment(alignment);
        let bytes = b.build().unwrap();
        let end = data_end(&bytes);
        for cut in 0..=bytes.len() {
            let r = parse(&bytes[..cut]);
            if (cut as u64) < end {
                assert!(r.is_err(), "truncation at {cut} of {} parsed", bytes.len());
            } else {
                // Only trailing padding was lost.
                assert!(r.is_ok(), "cut {cut}: {:?}", r.err());
            }
        }
    }
}

#[test]
fn truncation_errors_name_the_cut() {
    let (bytes, spans) = sample_file();
    let infos_end = span(&spans, FieldKind::TensorOffset, 6) + 8;
    for cut in 0..infos_end as usize {
        match parse(&bytes[..cut]).unwrap_err() {
            GgufError::Truncated { offset, needed, available } => {
                assert!(offset <= cut as u64 && offset + available == cut as u64);
                assert!(needed > available);
            }
            GgufError::CountTooLarge { offset, remaining, .. } => {
                assert!(offset < cut as u64 && remaining < cut as u64)
            }
            e => panic!("cut {cut}: unexpected {e:?}"),
        }
    }
}

/// Values written into each numeric field of a valid file.
fn interesting(original: u64, len: u8, file_len: u64) -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        12,
        13,
        31,
        32,
        255,
        256,
        0xFFFF,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 60,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX,
        u64::MAX - 31,
        file_len,
        file_len - 1,
        file_len / 2,
        original.wrapping_add(1),
        original.wrapping_sub(1),
        original.wrapping_add(32),
        original.wrapping_mul(2),
        original ^ 0x8000_0000,
    ];
    if len < 8 {
        let mask = (1u64 << (8 * len as u64)) - 1;
        for x in &mut v {
            *x &= mask;
        }
    }
    v.sort();
    v.dedup();
    v
}

#[test]
fn huge_values_in_every_header_field() {
    for (seed, alignment) in [(1u64, None), (2, Some(64u32))] {
        let mut b = sample_builder(seed);
        if let Some(a) = alignment {
            b.alignment(a);
        }
        let (bytes, spans) = b.build_with_layout().unwrap();
        assert!(spans.len() > 100);
        let mut outcomes = [0usize; 2];
        for s in &spans {
            let off = s.offset as usize;
            let field = &bytes[off..off + s.len as usize];
            let mut raw = [0u8; 8];
            raw[..field.len()].copy_from_slice(field);
            let original = u64::from_le_bytes(raw);
            for value in interesting(original, s.len, bytes.len() as u64) {
                let mut m = bytes.clone();
                m[off..off + s.len as usize].copy_from_slice(&value.to_le_bytes()[..s.len as usize]);
                outcomes[parse(&m).is_ok() as usize] += 1;
            }
        }
        // Most corruptions are detected; some (e.g. a different valid type,
        // a smaller but still aligned offset) legitimately parse.
        assert!(outcomes[0] > outcomes[1], "{outcomes:?}");
    }
}

#[test]
fn every_header_byte_flipped() {
    let (bytes, _) = sample_file();
    let header_end = GgufFile::from_slice(&bytes).unwrap().data_offset() as usize;
    for pos in 0..header_end {
        for v in [0x00, 0xFF, 0x80, 0x7F, bytes[pos] ^ 0x01, bytes[pos] ^ 0x40] {
            let mut m = bytes.clone();
            m[pos] = v;
            let _ = parse(&m);
        }
    }
}

// --- specific cases -----------------------------------------------------------

#[test]
fn empty_and_tiny_inputs() {
    assert!(matches!(parse(&[]), Err(GgufError::Truncated { offset: 0, needed: 4, available: 0 })));
    assert!(matches!(parse(b"GGU"), Err(GgufError::Truncated { offset: 0, .. })));
    assert!(matches!(parse(b"GGUF\x03\x00"), Err(GgufError::Truncated { offset: 4, needed: 4, available: 2 })));
    assert!(matches!(parse(&Raw::header(3, 0, 0).0[..20]), Err(GgufError::Truncated { offset: 16, .. })));
    // A bare header with no padding is a valid empty file.
    let f = parse(&Raw::header(3, 0, 0).0).unwrap();
    assert!(f.tensors().is_empty() && f.metadata_len() == 0);
}

#[test]
fn bad_magic() {
    let (mut bytes, _) = sample_file();
    bytes[..4].copy_from_slice(b"GGML");
    match parse(&bytes) {
        Err(GgufError::BadMagic { offset: 0, found }) => assert_eq!(&found, b"GGML"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn versions() {
    let (bytes, _) = sample_file();
    for v in [0u32, 1, 4, 0xFFFF_FFFF] {
        let mut m = bytes.clone();
        put_u32(&mut m, 4, v);
        match parse(&m) {
            Err(GgufError::UnsupportedVersion { offset: 4, version }) => assert_eq!(version, v),
            r => panic!("{v}: {r:?}"),
        }
    }
    let mut m = bytes.clone();
    put_u32(&mut m, 4, 3u32.swap_bytes());
    assert!(matches!(parse(&m), Err(GgufError::BigEndian { offset: 4, raw: 0x0300_0000 })));
    let msg = parse(&{
        let mut m = bytes.clone();
        put_u32(&mut m, 4, 1);
        m
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("unsupported") && msg.contains('1'), "{msg}");
}

#[test]
fn absurd_counts_fail_before_allocating() {
    let (bytes, spans) = sample_file();
    for (kind, nth, field, what) in
        [(FieldKind::TensorCount, 0, 8, "tensor count"), (FieldKind::KvCount, 0, 16, "metadata kv count")]
    {
        for v in [1u64 << 60, u64::MAX, bytes.len() as u64] {
            let mut m = bytes.clone();
            put_u64(&mut m, span(&spans, kind, nth), v);
            match parse(&m) {
                Err(GgufError::CountTooLarge { offset, what: w, count, .. }) => {
                    assert_eq!((offset, w, count), (field, what, v));
                }
                r => panic!("{kind:?}={v}: {r:?}"),
            }
        }
    }
    for (kind, what) in [
        (FieldKind::KeyLength, "string length"),
        (FieldKind::StringLength, "string length"),
        (FieldKind::TensorNameLength, "string length"),
        (FieldKind::ArrayLength, "array length"),
    ] {
        for s in spans_of(&spans, kind) {
            for v in [1u64 << 60, u64::MAX, (bytes.len() - s.offset as usize) as u64] {
                let mut m = bytes.clone();
                put_u64(&mut m, s.offset, v);
                match parse(&m) {
                    Err(GgufError::CountTooLarge { offset, what: w, .. }) => assert_eq!((offset, w), (s.offset, what)),
                    r => panic!("{kind:?} at {}={v}: {r:?}", s.offset),
                }
            }
        }
    }
}

#[test]
fn too_many_values_is_bounded() {
    // A u8 array with more elements than the value budget, all present.
    let n = MAX_METADATA_VALUES + 1;
    let mut r = Raw::header(3, 0, 1);
    r.str(b"big").u32(9).u32(0);
    let len_at = r.pos();
    r.u64(n);
    r.0.resize(r.0.len() + n as usize, 0);
    let (res, peak) = measure(|| GgufFile::from_slice(&r.0));
    match res {
        Err(GgufError::TooManyValues { offset, max }) => {
            assert_eq!((offset, max), (len_at, MAX_METADATA_VALUES))
        }
        r => panic!("{r:?}"),
    }
    assert!(peak < r.0.len() + (1 << 20), "peak {peak}");
}

#[test]
fn invalid_utf8() {
    let (bytes, spans) = sample_file();
    // In a key.
    let key_len_at = span(&spans, FieldKind::KeyLength, 0);
    let mut m = bytes.clone();
    m[key_len_at as usize + 8] = 0xFF;
    assert!(matches!(parse(&m), Err(GgufError::InvalidUtf8 { offset }) if offset == key_len_at));
    // In a string value ("llama").
    let at = find(&bytes, b"llama");
    let mut m = bytes.clone();
    m[at as usize + 1] = 0xC3; // truncated two-byte sequence
    assert!(matches!(parse(&m), Err(GgufError::InvalidUtf8 { offset }) if offset == at - 8));
    // In a string array element and in a tensor name.
    for needle in [&b"hello"[..], b"output_norm"] {
        let at = find(&bytes, needle);
        let mut m = bytes.clone();
        m[at as usize] = 0x80;
        assert!(
            matches!(parse(&m), Err(GgufError::InvalidUtf8 { offset }) if offset == at - 8),
            "{:?}",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn unknown_value_types() {
    let (bytes, spans) = sample_file();
    for (kind, nth) in [(FieldKind::ValueType, 3), (FieldKind::ArrayType, 0)] {
        for v in [13u32, 100, u32::MAX] {
            let at = span(&spans, kind, nth);
            let mut m = bytes.clone();
            put_u32(&mut m, at, v);
            match parse(&m) {
                Err(GgufError::UnknownValueType { offset, type_id }) => {
                    assert_eq!((offset, type_id), (at, v))
                }
                r => panic!("{kind:?}={v}: {r:?}"),
            }
        }
    }
}

#[test]
fn invalid_bools() {
    let (bytes, spans) = sample_file();
    for s in spans_of(&spans, FieldKind::Bool) {
        for v in [2u8, 0x80, 0xFF] {
            let mut m = bytes.clone();
            m[s.offset as usize] = v;
            match parse(&m) {
                Err(GgufError::InvalidBool { offset, value }) => {
                    assert_eq!((offset, value), (s.offset, v))
                }
                r => panic!("{r:?}"),
            }
        }
    }
}

#[test]
fn nesting_depth_is_bounded() {
    // depth levels of arrays, each holding one element, around a u8.
    let nested = |depth: usize| {
        let mut r = Raw::header(3, 0, 1);
        r.str(b"deep").u32(9);
        let mut type_offsets = vec![r.pos() - 4];
        for level in 0..depth {
            type_offsets.push(r.pos());
            r.u32(if level + 1 == depth { 0 } else { 9 }).u64(1);
        }
        r.u8(7);
        (r.0, type_offsets)
    };
    let (ok, _) = nested(MAX_ARRAY_DEPTH);
    assert!(parse(&ok).is_ok());
    let (bad, type_offsets) = nested(MAX_ARRAY_DEPTH + 1);
    match parse(&bad) {
        Err(GgufError::NestingTooDeep { offset, max }) => {
            assert_eq!(max, MAX_ARRAY_DEPTH);
            assert_eq!(offset, type_offsets[MAX_ARRAY_DEPTH]);
        }
        r => panic!("{r:?}"),
    }
    // A very deep claim in a tiny file neither recurses far nor allocates.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"deep").u32(9);
    for _ in 0..100_000 {
        r.u32(9).u64(1);
    }
    assert!(matches!(parse(&r.0), Err(GgufError::NestingTooDeep { .. })));
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut b = GgufBuilder::new();
    b.meta("key.a", 1u8).meta("key.b", 2u8);
    b.tensor_f32("t.a", &[1], &[1.0]).tensor_f32("t.b", &[1], &[2.0]);
    let (bytes, spans) = b.build_with_layout().unwrap();

    let mut m = bytes.clone();
    let at = span(&spans, FieldKind::KeyLength, 1);
    m[at as usize + 8 + 4] = b'a';
    match parse(&m) {
        Err(GgufError::DuplicateKey { offset, key }) => {
            assert_eq!((offset, key.as_str()), (at, "key.a"))
        }
        r => panic!("{r:?}"),
    }

    let mut m = bytes.clone();
    let at = span(&spans, FieldKind::TensorNameLength, 1);
    m[at as usize + 8 + 2] = b'a';
    match parse(&m) {
        Err(GgufError::DuplicateTensor { offset, name }) => {
            assert_eq!((offset, name.as_str()), (at, "t.a"))
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn invalid_alignment_values() {
    let build = |v: MetaValue| {
        let mut b = GgufBuilder::new();
        b.meta("general.name", "x");
        // Bypass the builder's own check: write a valid alignment, then patch.
        b.alignment(32);
        b.tensor_f32("t", &[2], &[1.0, 2.0]);
        let (mut bytes, spans) = b.build_with_layout().unwrap();
        let type_at = span(&spans, FieldKind::ValueType, 1);
        let value_at = type_at + 4;
        let mut patched = bytes[..type_at as usize].to_vec();
        let mut tail = Raw::default();
        tail.u32(v.type_id());
        match &v {
            MetaValue::U32(x) => {
                tail.u32(*x);
            }
            MetaValue::I32(x) => {
                tail.u32(*x as u32);
            }
            MetaValue::U64(x) => {
                tail.u64(*x);
            }
            MetaValue::String(s) => {
                tail.str(s.as_bytes());
            }
            MetaValue::F32(x) => {
                tail.u32(x.to_bits());
            }
            _ => unreachable!(),
        }
        patched.extend_from_slice(&tail.0);
        patched.extend_from_slice(&bytes.split_off(value_at as usize + 4));
        (patched, value_at)
    };
    for v in [
        MetaValue::U32(0),
        MetaValue::U32(3),
        MetaValue::U32(48),
        MetaValue::I32(-32),
        MetaValue::U64(1 << 32),
        MetaValue::String("32".into()),
        MetaValue::F32(32.0),
    ] {
        let (m, value_at) = build(v.clone());
        match parse(&m) {
            Err(GgufError::InvalidAlignment { offset, detail }) => {
                assert_eq!(offset, value_at, "{v:?}: {detail}")
            }
            r => panic!("{v:?}: {r:?}"),
        }
    }
    // Sanity: a valid value in the same position parses.
    let (m, _) = build(MetaValue::U32(32));
    assert!(parse(&m).is_ok());
}

#[test]
fn tensor_shape_errors() {
    let (bytes, spans) = sample_file();
    // Tensor 2 is Q4_0 [64, 2]: NDims at its index, dims follow.
    let nd = span(&spans, FieldKind::NDims, 2);
    let dim0 = nd + 4;
    for n in [0u32, 5, 64, u32::MAX] {
        let mut m = bytes.clone();
        put_u32(&mut m, nd, n);
        match parse(&m) {
            Err(GgufError::InvalidDimCount { offset, n_dims, name }) => {
                assert_eq!((offset, n_dims, name.as_str()), (nd, n, "blk.0.attn_q.weight"))
            }
            r => panic!("n_dims={n}: {r:?}"),
        }
    }
    // Negative (as int64) dimension.
    for v in [1u64 << 63, u64::MAX] {
        let mut m = bytes.clone();
        put_u64(&mut m, dim0 + 8, v);
        match parse(&m) {
            Err(GgufError::InvalidDimension { offset, index, value, .. }) => {
                assert_eq!((offset, index, value), (dim0 + 8, 1, v))
            }
            r => panic!("{r:?}"),
        }
    }
    // Product overflows i64.
    let mut m = bytes.clone();
    put_u64(&mut m, dim0, 1 << 32);
    put_u64(&mut m, dim0 + 8, 1 << 31);
    assert!(matches!(parse(&m), Err(GgufError::ShapeOverflow { offset, .. }) if offset == dim0));
    // Row length not a multiple of the Q4_0 block size.
    let mut m = bytes.clone();
    put_u64(&mut m, dim0, 48);
    match parse(&m) {
        Err(GgufError::RowNotBlockMultiple { offset, ggml_type, row_len, block_size, .. }) => {
            assert_eq!((offset, ggml_type, row_len, block_size), (dim0, GgmlType::Q4_0, 48, 32))
        }
        r => panic!("{r:?}"),
    }
    // A shape whose size fits the header but not the file.
    let mut m = bytes.clone();
    put_u64(&mut m, dim0 + 8, 1 << 40);
    assert!(matches!(parse(&m), Err(GgufError::TensorOutOfBounds { .. })));
}

#[test]
fn unknown_tensor_types() {
    let (bytes, spans) = sample_file();
    let at = span(&spans, FieldKind::TensorType, 1);
    for id in [4u32, 5, 31, 33, 36, 38, 42, 1000, u32::MAX] {
        let mut m = bytes.clone();
        put_u32(&mut m, at, id);
        match parse(&m) {
            Err(GgufError::UnknownTensorType { offset, type_id, name }) => {
                assert_eq!((offset, type_id, name.as_str()), (at, id, "blk.0.attn_norm.weight"))
            }
            r => panic!("{id}: {r:?}"),
        }
    }
}

#[test]
fn tensor_offset_errors() {
    let (bytes, spans) = sample_file();
    let offs = spans_of(&spans, FieldKind::TensorOffset);
    let last = offs.len() - 1;
    // Misaligned.
    for delta in [1u64, 4, 16, 31] {
        let mut m = bytes.clone();
        let v = get_u64(&m, offs[3].offset) + delta;
        put_u64(&mut m, offs[3].offset, v);
        match parse(&m) {
            Err(GgufError::MisalignedTensor { offset, data_offset, alignment, .. }) => {
                assert_eq!((offset, data_offset, alignment), (offs[3].offset, v, 32))
            }
            r => panic!("{r:?}"),
        }
    }
    // Past the end, including offsets that overflow when made absolute.
    for v in [1u64 << 40, u64::MAX - 31, bytes.len() as u64 / 32 * 32] {
        let mut m = bytes.clone();
        put_u64(&mut m, offs[last].offset, v);
        match parse(&m) {
            Err(GgufError::TensorOutOfBounds { offset, name, end, file_len, .. }) => {
                assert_eq!((offset, name.as_str()), (offs[last].offset, "output_norm.weight"));
                assert!(end > file_len);
                assert_eq!(file_len, bytes.len() as u64);
            }
            r => panic!("{v}: {r:?}"),
        }
    }
    // Data cut short (file truncated inside the last tensor).
    let end = data_end(&bytes) as usize;
    assert!(matches!(
        parse(&bytes[..end - 1]),
        Err(GgufError::TensorOutOfBounds { offset, .. }) if offset == offs[last].offset
    ));
}

#[test]
fn overlapping_tensors() {
    let (bytes, spans) = sample_file();
    let offs = spans_of(&spans, FieldKind::TensorOffset);
    // Tensor 4 placed at tensor 1's offset.
    let mut m = bytes.clone();
    put_u64(&mut m, offs[4].offset, get_u64(&bytes, offs[1].offset));
    match parse(&m) {
        Err(GgufError::OverlappingTensors { offset, name, other, .. }) => {
            assert_eq!(offset, offs[4].offset);
            assert_eq!((name.as_str(), other.as_str()), ("blk.0.ffn_down.weight", "blk.0.attn_norm.weight"));
        }
        r => panic!("{r:?}"),
    }
    // Partial overlap: tensor 0 (Q8_0 [64,3] = 204 bytes) and tensor 1 moved
    // 32 bytes into it; reported on the later info whatever the order.
    let mut m = bytes.clone();
    put_u64(&mut m, offs[1].offset, 32);
    match parse(&m) {
        Err(GgufError::OverlappingTensors { offset, other, .. }) => {
            assert_eq!((offset, other.as_str()), (offs[1].offset, "token_embd.weight"))
        }
        r => panic!("{r:?}"),
    }
    let mut m = bytes.clone();
    put_u64(&mut m, offs[0].offset, get_u64(&bytes, offs[1].offset));
    put_u64(&mut m, offs[1].offset, 0);
    match parse(&m) {
        Err(GgufError::OverlappingTensors { offset, name, .. }) => {
            assert_eq!((offset, name.as_str()), (offs[1].offset, "blk.0.attn_norm.weight"))
        }
        r => panic!("{r:?}"),
    }
    // Out-of-order but disjoint tensors are fine.
    let mut m = bytes.clone();
    let (a, b) = (get_u64(&bytes, offs[5].offset), get_u64(&bytes, offs[6].offset));
    put_u64(&mut m, offs[5].offset, b);
    put_u64(&mut m, offs[6].offset, a);
    let f = parse(&m).unwrap();
    assert!(f.tensors()[6].offset < f.tensors()[5].offset);
}
