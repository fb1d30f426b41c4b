//! Opens the real SmolLM2 model if it is present (path from `LATENT_MODEL`,
//! else the shared models folder next to the workspace).

use std::collections::HashMap;
use std::path::PathBuf;

use latent_formats::gguf::{GgmlType, GgufFile};

fn model_path() -> Option<PathBuf> {
    let path = match std::env::var_os("LATENT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/models/smollm2-135m-instruct-q4_1.gguf"
        )),
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: model not found at {}", path.display());
        None
    }
}

#[test]
fn smollm2_135m_q4_1() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert!(f.version() == 2 || f.version() == 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types.len(), tokens.len());
    assert!(f.get_str_array("tokenizer.ggml.merges").unwrap().len() > 1000);
    assert!(f.get_str("tokenizer.chat_template").is_ok());

    assert_eq!(f.tensors().len(), 272);
    let mut by_type: HashMap<GgmlType, usize> = HashMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ggml_type).or_default() += 1;
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(t.offset % f.alignment(), 0);
    }
    assert_eq!(by_type.get(&GgmlType::Q4_1), Some(&210));
    assert_eq!(by_type.get(&GgmlType::Q8_0), Some(&1));
    assert_eq!(by_type.get(&GgmlType::F32), Some(&61));

    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.ggml_type, GgmlType::Q8_0);
    assert_eq!(emb.dims, [576, 49152]);
    assert_eq!(emb.n_bytes, 576 / 32 * 34 * 49152);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type, &q.dims[..]), (GgmlType::Q4_1, &[576u64, 576][..]));
    let norm = f.tensor("output_norm.weight").unwrap();
    assert_eq!((norm.ggml_type, &norm.dims[..]), (GgmlType::F32, &[576u64][..]));
    // RMS-norm weights are finite, positive-ish numbers.
    let w: Vec<f32> = f.tensor_data(norm).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(w.iter().all(|x| x.is_finite()));
    assert!(f.tensor("output.weight").is_none(), "tied embeddings");
    // The memory map covers the whole file.
    assert_eq!(f.file_bytes(), std::fs::metadata(&path).unwrap().len());
}

#[test]
fn smollm2_header_truncations_fail() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    // The metadata and tensor infos (a few MB): a dense sample of cuts.
    let head = &f.as_bytes()[..f.data_offset() as usize];
    let step = (head.len() / 400).max(1);
    for cut in (0..head.len()).step_by(step).chain([head.len() - 1]) {
        assert!(GgufFile::from_slice(&head[..cut]).is_err(), "cut {cut}");
    }
    // The header alone (no data) fails on the first tensor's bounds.
    assert!(GgufFile::from_slice(head).is_err());
}
