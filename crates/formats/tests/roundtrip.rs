//! Files built with `GgufBuilder` read back identically.

mod common;

use common::*;
use latent_formats::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, MetaValue, DEFAULT_ALIGNMENT, KEY_ALIGNMENT};

fn check_sample(f: &GgufFile, seed: u64, alignment: u64) {
    assert_eq!(f.alignment(), alignment);
    // Metadata: same pairs in the same order (alignment key may be extra).
    let expected = sample_metadata();
    let got: Vec<(String, MetaValue)> =
        f.metadata().filter(|(k, _)| *k != KEY_ALIGNMENT).map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(got, expected);
    for (k, v) in &expected {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    // Tensors: same names, shapes, types, data; aligned, in order.
    let mut rng = Rng(seed);
    let specs = sample_tensor_specs();
    assert_eq!(f.tensors().len(), specs.len());
    let mut prev_end = f.data_offset();
    for (t, (name, dims, ty)) in f.tensors().iter().zip(&specs) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ggml_type, *ty);
        let n: u64 = dims.iter().product();
        assert_eq!(t.n_elements(), n);
        assert_eq!(t.n_bytes, ty.bytes_for(n).unwrap());
        assert_eq!(t.offset % alignment, 0, "{name} misaligned");
        assert!(t.offset >= prev_end);
        prev_end = t.offset + t.n_bytes;
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes);
        assert_eq!(data, &rng.bytes(t.n_bytes as usize)[..]);
        assert_eq!(f.tensor(name), Some(t));
        assert_eq!(f.tensor_data_by_name(name), Some(data));
    }
    assert!(prev_end <= f.file_bytes());
    assert_eq!(f.file_bytes() % alignment, 0, "file padded to alignment");
    assert_eq!(f.data_offset() % alignment, 0);
}

#[test]
fn roundtrip_all_value_types_and_tensors() {
    let bytes = sample_builder(7).build().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), 3);
    check_sample(&f, 7, DEFAULT_ALIGNMENT);
    assert_eq!(f.as_bytes(), &bytes[..]);
    assert_eq!(f.file_bytes(), bytes.len() as u64);
    // Re-building from what was read gives the same bytes.
    let mut b = GgufBuilder::new();
    for (k, v) in f.metadata() {
        b.meta(k, v.clone());
    }
    for t in f.tensors() {
        b.tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t));
    }
    assert_eq!(b.build().unwrap(), bytes);
}

#[test]
fn roundtrip_custom_alignments() {
    for alignment in [1u32, 2, 8, 16, 64, 128, 4096] {
        let mut b = sample_builder(alignment as u64);
        b.alignment(alignment);
        let bytes = b.build().unwrap();
        let f = GgufFile::from_bytes(bytes).unwrap();
        check_sample(&f, alignment as u64, alignment as u64);
        assert_eq!(f.get_u32(KEY_ALIGNMENT).unwrap(), alignment);
        // In memory, data is aligned like in the file (up to 32 bytes).
        for t in f.tensors() {
            let ptr = f.tensor_data(t).as_ptr() as usize;
            assert_eq!(ptr % (alignment as usize).min(32), 0);
        }
    }
}

#[test]
fn alignment_of_other_integer_types_is_accepted() {
    let mut b = sample_builder(3);
    b.meta(KEY_ALIGNMENT, 64u64);
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    check_sample(&f, 3, 64);
    let mut b = sample_builder(3);
    b.meta(KEY_ALIGNMENT, MetaValue::I16(16));
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    check_sample(&f, 3, 16);
}

#[test]
fn roundtrip_version_2() {
    let mut b = sample_builder(11);
    b.version(2);
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    assert_eq!(f.version(), 2);
    check_sample(&f, 11, 32);
}

#[test]
fn empty_file_roundtrip() {
    let bytes = GgufBuilder::new().build().unwrap();
    assert_eq!(bytes.len(), 32); // 24-byte header padded to 32
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert!(f.metadata_len() == 0);
    assert!(f.tensors().is_empty());
    assert_eq!(f.data_offset(), 32);
    assert!(matches!(
        f.architecture(),
        Err(GgufError::MissingKey { key }) if key == "general.architecture"
    ));
}

#[test]
fn empty_and_zero_sized_tensors() {
    let mut b = GgufBuilder::new();
    b.tensor("empty", &[0, 4], GgmlType::Q4_0, Vec::new()).tensor_f32("x", &[2], &[1.0, -2.0]).tensor(
        "also_empty",
        &[32, 0],
        GgmlType::Q8_0,
        &[][..],
    );
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    let e = f.tensor("empty").unwrap();
    assert_eq!((e.n_elements(), e.n_bytes), (0, 0));
    assert!(f.tensor_data(e).is_empty());
    let x = f.tensor("x").unwrap();
    let vals: Vec<f32> = f.tensor_data(x).chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(vals, [1.0, -2.0]);
}

#[test]
fn nan_and_special_floats_keep_their_bits() {
    let mut b = GgufBuilder::new();
    b.meta("nan32", f32::from_bits(0x7fc0_1234))
        .meta("nan64", f64::from_bits(0x7ff8_0000_dead_beef))
        .meta("ninf", f32::NEG_INFINITY)
        .meta("negzero", -0.0f64);
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    assert!(matches!(f.get("nan32"), Some(MetaValue::F32(x)) if x.to_bits() == 0x7fc0_1234));
    assert!(matches!(f.get("nan64"), Some(MetaValue::F64(x)) if x.to_bits() == 0x7ff8_0000_dead_beef));
    assert_eq!(f.get_f32("ninf").unwrap(), f32::NEG_INFINITY);
    assert!(f.get_f64("negzero").unwrap().is_sign_negative());
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(sample_builder(1).build().unwrap()).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_str("general.name").unwrap(), "tiny test model ✓");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 64); // u64 that fits
    assert_eq!(f.get_u32("t.u8").unwrap(), 200);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX - 5);
    assert_eq!(f.get_u64("t.u16").unwrap(), 60000);
    assert_eq!(f.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_i64("t.i64").unwrap(), i64::MIN + 7);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5e-5);
    assert_eq!(f.get_f32("llama.block_count").unwrap(), 2.0);
    assert_eq!(f.get_f64("t.f64").unwrap(), -2.25e100);
    assert!(f.get_bool("t.bool_t").unwrap());
    assert!(!f.get_bool("t.bool_f").unwrap());
    assert_eq!(f.get_str_array("t.tokens").unwrap(), ["<s>", "</s>", "hello", " wörld", ""]);
    assert_eq!(f.get_f32_array("t.scores").unwrap(), [0.0, -1.5, 3.25]);
    assert_eq!(f.get_f32_array("t.types").unwrap(), [1.0, 2.0, 3.0, -4.0]);
    assert_eq!(f.get_f32_array("t.f64s").unwrap(), [0.5, -0.25]);
    assert_eq!(f.get_i32_array("t.types").unwrap(), [1, 2, 3, -4]);
    assert_eq!(f.get_i32_array("t.u8s").unwrap(), [1, 2, 3]);
    assert_eq!(f.get_u32_array("t.u8s").unwrap(), [1, 2, 3]);
    assert!(f.get_str_array("t.empty").unwrap().is_empty());
    assert!(f.get_f32_array("t.empty").unwrap().is_empty());
    assert_eq!(f.get_array("t.nested").unwrap().len(), 4);

    // Errors name the key and the types involved.
    let wrong = |r: GgufError, key: &str, exp: &str, found: &str| match r {
        GgufError::WrongType { key: k, expected, found: fnd } => {
            assert_eq!((k.as_str(), expected, fnd.as_str()), (key, exp, found));
        }
        other => panic!("expected WrongType, got {other:?}"),
    };
    wrong(f.get_str("t.u8").unwrap_err(), "t.u8", "string", "u8");
    wrong(f.get_u32("t.f32").unwrap_err(), "t.f32", "u32", "f32");
    wrong(f.get_u32("t.bool_t").unwrap_err(), "t.bool_t", "u32", "bool");
    wrong(f.get_bool("t.u8").unwrap_err(), "t.u8", "bool", "u8");
    wrong(f.get_f32("general.name").unwrap_err(), "general.name", "f32", "string");
    wrong(f.get_str_array("t.scores").unwrap_err(), "t.scores", "array<string>", "array<f32>");
    wrong(f.get_str_array("general.name").unwrap_err(), "general.name", "array<string>", "string");
    wrong(f.get_i32_array("t.scores").unwrap_err(), "t.scores", "array<i32>", "array<f32>");
    wrong(f.get_f32_array("t.tokens").unwrap_err(), "t.tokens", "array<f32>", "array<string>");
    wrong(f.get_f32_array("t.nested").unwrap_err(), "t.nested", "array<f32>", "array<array<u32>>");
    for r in [
        f.get_u32("t.u64").unwrap_err(),
        f.get_u32("t.i8").unwrap_err(),
        f.get_u64("t.i64").unwrap_err(),
        f.get_i32("t.u32").unwrap_err(),
        f.get_i32_array("t.u64s").unwrap_err(),
        f.get_f32("t.f64").unwrap_err(),
    ] {
        assert!(matches!(r, GgufError::OutOfRange { .. }), "{r:?}");
    }
    assert!(matches!(
        f.get_u32("nope").unwrap_err(),
        GgufError::MissingKey { key } if key == "nope"
    ));
    let msg = f.get_u32("t.f32").unwrap_err().to_string();
    assert!(msg.contains("t.f32") && msg.contains("u32") && msg.contains("f32"), "{msg}");
    assert_eq!(f.tensor("nope"), None);
}

#[test]
fn meta_value_helpers() {
    assert_eq!(MetaValue::I8(-1).as_u64(), None);
    assert_eq!(MetaValue::I8(5).as_u64(), Some(5));
    assert_eq!(MetaValue::U64(u64::MAX).as_u64(), Some(u64::MAX));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::F32(0.5).as_f64(), Some(0.5));
    assert_eq!(MetaValue::U16(3).as_f64(), Some(3.0));
    assert_eq!(MetaValue::Bool(true).as_f64(), None);
    assert_eq!(MetaValue::from("x").as_str(), Some("x"));
    assert_eq!(MetaValue::from(1u32).as_str(), None);
    assert_eq!(MetaValue::from(vec![1u8]).as_array().map(|a| a.len()), Some(1));
    let names: Vec<_> = [
        MetaValue::U8(0),
        MetaValue::I8(0),
        MetaValue::U16(0),
        MetaValue::I16(0),
        MetaValue::U32(0),
        MetaValue::I32(0),
        MetaValue::U64(0),
        MetaValue::I64(0),
        MetaValue::F32(0.0),
        MetaValue::F64(0.0),
        MetaValue::Bool(false),
        MetaValue::String(String::new()),
        MetaValue::Array(vec![]),
    ]
    .iter()
    .map(|v| (v.type_name(), v.type_id()))
    .collect();
    assert_eq!(
        names,
        [
            ("u8", 0),
            ("i8", 1),
            ("u16", 2),
            ("i16", 3),
            ("u32", 4),
            ("i32", 5),
            ("u64", 10),
            ("i64", 11),
            ("f32", 6),
            ("f64", 12),
            ("bool", 7),
            ("string", 8),
            ("array", 9)
        ]
    );
}

#[test]
fn ggml_type_table() {
    let ids: Vec<u32> = GgmlType::ALL.iter().map(|t| t.id()).collect();
    let mut expected: Vec<u32> = (0..=3).chain(6..=30).chain([34, 35, 39, 40, 41]).collect();
    expected.sort();
    assert_eq!(ids, expected);
    for &t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(GgmlType::from_name(t.name()), Some(t));
        assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(t));
        assert_eq!(t.to_string(), t.name());
        assert!(t.block_size() >= 1 && t.type_size() >= 1);
    }
    for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_id(id), None, "{id}");
    }
    let spot = [
        (GgmlType::F32, 1, 4),
        (GgmlType::F16, 1, 2),
        (GgmlType::BF16, 1, 2),
        (GgmlType::Q4_0, 32, 18),
        (GgmlType::Q4_1, 32, 20),
        (GgmlType::Q5_0, 32, 22),
        (GgmlType::Q5_1, 32, 24),
        (GgmlType::Q8_0, 32, 34),
        (GgmlType::Q8_1, 32, 36),
        (GgmlType::Q2_K, 256, 84),
        (GgmlType::Q3_K, 256, 110),
        (GgmlType::Q4_K, 256, 144),
        (GgmlType::Q5_K, 256, 176),
        (GgmlType::Q6_K, 256, 210),
        (GgmlType::Q8_K, 256, 292),
        (GgmlType::IQ4_NL, 32, 18),
        (GgmlType::MXFP4, 32, 17),
    ];
    for (t, bs, ts) in spot {
        assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
    }
    assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
    assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    assert!(GgmlType::Q4_1.is_quantized() && !GgmlType::BF16.is_quantized());
}

#[test]
fn open_memory_maps_a_file() {
    let dir = std::env::temp_dir().join(format!("latent-formats-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    let b = sample_builder(5);
    let written = b.write_file(&path).unwrap();
    assert_eq!(written, std::fs::metadata(&path).unwrap().len());
    let f = GgufFile::open(&path).unwrap();
    check_sample(&f, 5, 32);
    assert_eq!(f.as_bytes(), &b.build().unwrap()[..]);
    let dbg = format!("{f:?}");
    assert!(dbg.contains("tensors: 7"), "{dbg}");

    // Missing file, directory, empty file.
    assert!(matches!(GgufFile::open(dir.join("missing.gguf")), Err(GgufError::Io { .. })));
    assert!(matches!(GgufFile::open(&dir), Err(GgufError::Io { .. })));
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::Truncated { offset: 0, .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn builder_rejects_invalid_input() {
    let build_err = |b: &GgufBuilder| match b.build() {
        Err(GgufError::Build(msg)) => msg,
        other => panic!("expected Build error, got {other:?}"),
    };
    let mut b = GgufBuilder::new();
    b.tensor("t", &[32], GgmlType::Q4_0, vec![0u8; 17]);
    assert!(build_err(&b).contains("needs 18"));
    let mut b = GgufBuilder::new();
    b.tensor("t", &[33], GgmlType::Q4_0, vec![0u8; 18]);
    assert!(build_err(&b).contains("multiple"));
    let mut b = GgufBuilder::new();
    b.tensor("t", &[], GgmlType::F32, vec![]);
    build_err(&b);
    let mut b = GgufBuilder::new();
    b.tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]);
    build_err(&b);
    let mut b = GgufBuilder::new();
    b.tensor("t", &[1 << 40, 1 << 40], GgmlType::F32, vec![]);
    build_err(&b);
    let mut b = GgufBuilder::new();
    b.tensor_f32("t", &[1], &[0.0]).tensor_f32("t", &[1], &[0.0]);
    assert!(build_err(&b).contains("duplicate"));
    let mut b = GgufBuilder::new();
    b.meta("a", MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]));
    assert!(build_err(&b).contains("mixes"));
    let mut b = GgufBuilder::new();
    b.alignment(48);
    build_err(&b);
    let mut b = GgufBuilder::new();
    b.meta(KEY_ALIGNMENT, "32");
    build_err(&b);
    let mut b = GgufBuilder::new();
    b.version(1);
    build_err(&b);
    let mut deep = MetaValue::U8(0);
    for _ in 0..9 {
        deep = MetaValue::Array(vec![deep]);
    }
    let mut b = GgufBuilder::new();
    b.meta("deep", deep);
    assert!(build_err(&b).contains("nested"));
    // Replacing a key keeps its position.
    let mut b = GgufBuilder::new();
    b.meta("a", 1u8).meta("b", 2u8).meta("a", 3u8);
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    let got: Vec<_> = f.metadata().collect();
    assert_eq!(got, [("a", &MetaValue::U8(3)), ("b", &MetaValue::U8(2))]);
}

#[test]
fn deepest_allowed_nesting_roundtrips() {
    let mut deep = MetaValue::String("leaf".into());
    for _ in 0..latent_formats::gguf::MAX_ARRAY_DEPTH {
        deep = MetaValue::Array(vec![deep.clone(), deep]);
    }
    let mut b = GgufBuilder::new();
    b.meta("deep", deep.clone());
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    assert_eq!(f.get("deep"), Some(&deep));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GgufFile>();
    check::<GgufError>();
    check::<GgufBuilder<'static>>();
}

/// Long flat arrays stay in the file until asked for as values: the typed accessors read
/// them in place, `get`/`metadata` parse them on first use, and both agree with what was
/// written. Bad elements are still refused when the file is opened.
#[test]
fn long_arrays_are_read_in_place_and_validated_at_open() {
    let n = 5000usize;
    let strings: Vec<String> = (0..n).map(|i| if i % 7 == 0 { String::new() } else { format!("tok{i}·é") }).collect();
    let ints: Vec<i32> = (0..n as i32).map(|i| i * 37 - 90_000).collect();
    let floats: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 3.0).collect();
    let arr = |v: Vec<MetaValue>| MetaValue::Array(v);
    let mut b = GgufBuilder::new();
    b.meta("s", arr(strings.iter().cloned().map(MetaValue::String).collect()))
        .meta("i", arr(ints.iter().map(|&x| MetaValue::I32(x)).collect()))
        .meta("f", arr(floats.iter().map(|&x| MetaValue::F32(x)).collect()))
        .meta("b", arr((0..n).map(|i| MetaValue::Bool(i % 3 == 0)).collect()))
        .meta("short", arr(vec![MetaValue::U8(1), MetaValue::U8(2)]))
        .meta("x", 7u32);
    let bytes = b.build().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    // In place (no value parsed yet).
    assert_eq!(f.get_str_array("s").unwrap(), strings.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(f.get_i32_array("i").unwrap(), ints);
    assert_eq!(f.get_f32_array("i").unwrap(), ints.iter().map(|&x| x as f32).collect::<Vec<_>>());
    assert_eq!(f.get_f32_array("f").unwrap(), floats);
    assert!(matches!(f.get_u32_array("i"), Err(GgufError::OutOfRange { .. })), "negative i32 is no u32");
    assert!(matches!(f.get_i32_array("s"), Err(GgufError::WrongType { .. })));
    assert!(matches!(f.get_str_array("i"), Err(GgufError::WrongType { .. })));
    assert!(matches!(f.get_f32_array("b"), Err(GgufError::WrongType { .. })));
    // As values: the same elements.
    let want_s = arr(strings.iter().cloned().map(MetaValue::String).collect());
    assert_eq!(f.get("s"), Some(&want_s));
    assert_eq!(f.get_array("i").unwrap().len(), n);
    assert_eq!(f.get_array("b").unwrap()[3], MetaValue::Bool(true));
    // Parsed now: the typed accessors read the value and still agree.
    assert_eq!(f.get_str_array("s").unwrap().len(), n);
    assert_eq!(f.get_i32_array("i").unwrap(), ints);
    assert_eq!(f.metadata_len(), 6);
    let keys: Vec<&str> = f.metadata().map(|(k, _)| k).collect();
    assert_eq!(keys, ["s", "i", "f", "b", "short", "x"]);
    // Written back, the same bytes.
    let mut b2 = GgufBuilder::new();
    for (k, v) in f.metadata() {
        b2.meta(k, v.clone());
    }
    assert_eq!(b2.build().unwrap(), bytes);

    // Invalid UTF-8 deep inside a long string array is refused at open.
    let mut bad = bytes.clone();
    let at = bad.windows(8).position(|w| w == b"tok4321\xc2").unwrap();
    bad[at + 1] = 0xFF;
    assert!(matches!(GgufFile::from_bytes(bad), Err(GgufError::InvalidUtf8 { .. })));
    // So is a bool that is neither 0 nor 1, and an array cut short.
    let mut b = GgufBuilder::new();
    b.meta("b", arr((0..n).map(|_| MetaValue::Bool(true)).collect()));
    let mut bad = b.build().unwrap();
    let last_true = bad.iter().rposition(|&x| x == 1).unwrap();
    bad[last_true] = 2;
    assert!(matches!(GgufFile::from_bytes(bad), Err(GgufError::InvalidBool { value: 2, .. })));
    let good = b.build().unwrap();
    let cut = &good[..good.len() - 3000];
    assert!(GgufFile::from_slice(cut).is_err());
}
