//! Shared helpers for the GGUF tests.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use latent_formats::gguf::{FieldSpan, GgmlType, GgufBuilder, MetaValue};

/// SplitMix64: small, deterministic PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Metadata covering every value type, nested arrays and empty arrays.
pub fn sample_metadata() -> Vec<(String, MetaValue)> {
    let m: Vec<(&str, MetaValue)> = vec![
        ("general.architecture", "llama".into()),
        ("general.name", "tiny test model ✓".into()),
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.u64", MetaValue::U64(u64::MAX - 5)),
        ("t.i64", MetaValue::I64(i64::MIN + 7)),
        ("t.f32", MetaValue::F32(1.5e-5)),
        ("t.f64", MetaValue::F64(-2.25e100)),
        ("t.bool_t", MetaValue::Bool(true)),
        ("t.bool_f", MetaValue::Bool(false)),
        ("t.empty_str", "".into()),
        ("t.tokens", vec!["<s>", "</s>", "hello", " wörld", ""].into()),
        ("t.scores", vec![0.0f32, -1.5, 3.25].into()),
        ("t.types", vec![1i32, 2, 3, -4].into()),
        ("t.u8s", vec![1u8, 2, 3].into()),
        ("t.bools", vec![true, false, true].into()),
        ("t.u64s", vec![u64::MAX, 0].into()),
        ("t.f64s", vec![0.5f64, -0.25].into()),
        ("t.empty", MetaValue::Array(vec![])),
        (
            "t.nested",
            MetaValue::Array(vec![
                vec![1u32, 2].into(),
                vec!["a", "b", "c"].into(),
                MetaValue::Array(vec![]),
                MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I16(-1)])]),
            ]),
        ),
        ("llama.block_count", MetaValue::U32(2)),
        ("llama.embedding_length", MetaValue::U64(64)),
        ("llama.rope.freq_base", MetaValue::F32(10000.0)),
    ];
    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// (name, dims, type) of the sample tensors.
pub fn sample_tensor_specs() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight", vec![64, 3], GgmlType::Q8_0),
        ("blk.0.attn_norm.weight", vec![64], GgmlType::F32),
        ("blk.0.attn_q.weight", vec![64, 2], GgmlType::Q4_0),
        ("blk.0.ffn_up.weight", vec![32, 2, 2], GgmlType::Q4_1),
        ("blk.0.ffn_down.weight", vec![256, 1], GgmlType::Q4_K),
        ("blk.0.odd.weight", vec![3, 1, 1, 2], GgmlType::F16),
        ("output_norm.weight", vec![5], GgmlType::F32),
    ]
}

/// Builder with the sample metadata and tensors (pseudo-random data).
pub fn sample_builder(seed: u64) -> GgufBuilder<'static> {
    let mut rng = Rng(seed);
    let mut b = GgufBuilder::new();
    for (k, v) in sample_metadata() {
        b.meta(k, v);
    }
    for (name, dims, ty) in sample_tensor_specs() {
        let n: u64 = dims.iter().product();
        let bytes = ty.bytes_for(n).unwrap() as usize;
        b.tensor(name, &dims, ty, rng.bytes(bytes));
    }
    b
}

pub fn sample_file() -> (Vec<u8>, Vec<FieldSpan>) {
    sample_builder(1).build_with_layout().unwrap()
}

pub fn put_u32(buf: &mut [u8], off: u64, v: u32) {
    buf[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(buf: &mut [u8], off: u64, v: u64) {
    buf[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn get_u64(buf: &[u8], off: u64) -> u64 {
    u64::from_le_bytes(buf[off as usize..off as usize + 8].try_into().unwrap())
}

/// Hand-rolled encoder for crafting files the builder refuses to produce.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(version).u64(tensors).u64(kvs);
        r
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    pub fn pos(&self) -> u64 {
        self.0.len() as u64
    }
    pub fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }
}

// --- allocation tracking -----------------------------------------------------

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Global allocator that records, per thread, the peak number of live bytes
/// since the last [`reset_peak`].
pub struct TrackingAlloc;

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now)
            }
        });
    });
}

// SAFETY: forwards to the system allocator unchanged; only bookkeeping is added.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts a new measurement on this thread.
pub fn reset_peak() {
    let live = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(live));
}

/// Peak live bytes on this thread since `reset_peak`, minus the live bytes at
/// that time.
pub fn peak_since(start_live: isize) -> usize {
    (PEAK.with(|p| p.get()) - start_live).max(0) as usize
}

pub fn live_now() -> isize {
    LIVE.with(|l| l.get())
}

/// Runs `f` and returns its result with the peak extra memory it used.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = live_now();
    reset_peak();
    let out = f();
    (out, peak_since(start))
}
