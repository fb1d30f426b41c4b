//! The converted model as a standard `deepseek2` GGUF (as llama.cpp reads it): no q_lora,
//! split `attn_k_b`/`attn_v_b`, every layer dense with the source's FFN and norms, the
//! source's embeddings, output and tokenizer copied byte for byte.
//!
//! The latent needs no norm: the file scales the latent rows of `attn_kv_a_mqa` by a small
//! δ so that `attn_kv_a_norm`'s RMSNorm runs far below its ε (mean c² ≤ 1e-6·ε on every
//! calibration token) and its weight √ε/δ undoes the scale: RMSNorm(δc)·√ε/δ =
//! c / √(1 + δ²·mean c²/ε), within 5e-7 of c on calibration data. Readers see an ordinary
//! deepseek2 file; `latent.convert.*` keys record how it was made.

use crate::layer::{Dims, MlaAttn};
use crate::{ConvertError, ConvertOptions, Source};
use latent_formats::gguf::{GgmlType, GgufBuilder, MetaValue};
use latent_quant::WeightType;

/// Margin of the norm trick: δ²·max mean c² = MARGIN·ε.
const MARGIN: f64 = 1e-6;

fn ggml(t: WeightType) -> Result<GgmlType, ConvertError> {
    GgmlType::from_id(t.ggml_id()).ok_or_else(|| ConvertError::Invalid(format!("no GGUF type for {t:?}")))
}

fn encode(t: WeightType, rows: usize, cols: usize, v: &[f32]) -> Result<Vec<u8>, ConvertError> {
    let rb = t.row_bytes(cols)?;
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        latent_quant::quantize_row(t, &v[r * cols..(r + 1) * cols], &mut out[r * rb..(r + 1) * rb])?;
    }
    Ok(out)
}

/// `attn_q` from the source's query rows `(row, scale)`: in the source's own type with the
/// scales applied to the block scales (`into: None`; exact up to one f16 rounding of a scaled
/// block scale), or dequantized, scaled and encoded as `into`.
fn query_rows(
    src: &Source,
    name: &str,
    rows: &[(usize, f32)],
    c: usize,
    into: Option<WeightType>,
) -> Result<(WeightType, Vec<u8>), ConvertError> {
    let f = &*src.file;
    let t = f.tensor(name).ok_or_else(|| ConvertError::Invalid(format!("{}: no tensor {name}", src.path)))?;
    let st = WeightType::from_ggml_id(t.ggml_type.id())
        .ok_or_else(|| ConvertError::Invalid(format!("{}: {name} has type {:?}", src.path, t.ggml_type)))?;
    let srb = st.row_bytes(c)?;
    let data = f.tensor_data(t);
    let src_row = |r: usize| -> Result<&[u8], ConvertError> {
        data.get(r * srb..(r + 1) * srb)
            .ok_or_else(|| ConvertError::Invalid(format!("{}: {name} has no row {r}", src.path)))
    };
    match into {
        None => {
            let mut out = Vec::with_capacity(rows.len() * srb);
            for &(r, scale) in rows {
                let at = out.len();
                out.extend_from_slice(src_row(r)?);
                latent_quant::scale_row(st, &mut out[at..], scale)?;
            }
            Ok((st, out))
        }
        Some(qt) => {
            let mut v = vec![0f32; rows.len() * c];
            for (dst, &(r, scale)) in v.chunks_exact_mut(c).zip(rows) {
                latent_quant::dequantize_row_ref(st, src_row(r)?, dst)?;
                dst.iter_mut().for_each(|x| *x *= scale);
            }
            Ok((qt, encode(qt, rows.len(), c, &v)?))
        }
    }
}

pub(crate) fn deepseek2(
    src: &Source,
    opts: &ConvertOptions,
    dm: &Dims,
    layers: &[MlaAttn],
) -> Result<Vec<u8>, ConvertError> {
    let f = &*src.file;
    let cfg = &src.cfg;
    let (c, h, d, p, r) = (dm.c, dm.h, dm.d, dm.p, dm.r);
    let n = dm.n();
    let mut b = GgufBuilder::new();
    let k = |s: &str| format!("deepseek2.{s}");
    b.meta("general.architecture", "deepseek2");
    let name = f.get_str("general.name").unwrap_or("model");
    b.meta("general.name", format!("{name} (MLA: R={r}, P={p})"));
    for (key, v) in f.metadata() {
        let copy = (key.starts_with("general.") && key != "general.architecture" && key != "general.name")
            || key.starts_with("tokenizer.");
        if copy {
            b.meta(key.to_string(), v.clone());
        }
    }
    b.meta(k("vocab_size"), cfg.vocab as u32);
    b.meta(k("context_length"), cfg.context as u32);
    b.meta(k("embedding_length"), c as u32);
    b.meta(k("block_count"), cfg.layers as u32);
    b.meta(k("feed_forward_length"), cfg.ffn as u32);
    b.meta(k("leading_dense_block_count"), cfg.layers as u32);
    b.meta(k("attention.head_count"), h as u32);
    b.meta(k("attention.head_count_kv"), 1u32);
    b.meta(k("attention.q_lora_rank"), 0u32);
    b.meta(k("attention.kv_lora_rank"), r as u32);
    b.meta(k("attention.key_length"), (r + p) as u32);
    b.meta(k("attention.value_length"), r as u32);
    b.meta(k("attention.key_length_mla"), (n + p) as u32);
    b.meta(k("attention.value_length_mla"), d as u32);
    b.meta(k("attention.layer_norm_rms_epsilon"), cfg.eps);
    b.meta(k("rope.dimension_count"), p as u32);
    b.meta(k("rope.freq_base"), cfg.rope.base);
    b.meta(k("expert_count"), 0u32);
    b.meta(k("expert_used_count"), 0u32);
    b.meta(k("expert_shared_count"), 0u32);
    b.meta(k("expert_feed_forward_length"), 0u32);
    b.meta(k("expert_weights_scale"), 1.0f32);
    b.meta(k("expert_gating_func"), 1u32);
    let m = opts.method;
    b.meta("latent.convert.source", MetaValue::String(name.to_string()));
    b.meta("latent.convert.kv_rank", r as u32);
    b.meta("latent.convert.rope_dim", p as u32);
    b.meta("latent.convert.rope_avg", m.rope_avg);
    b.meta("latent.convert.metric_latent", m.metric);
    b.meta("latent.convert.value_refit", m.v_refit);
    b.meta("latent.convert.joint_value_refit", m.v_refit && m.joint);
    b.meta("latent.convert.norm_free_latent", true);
    b.meta("latent.convert.norm_margin", MARGIN as f32);
    b.meta("latent.convert.latent_type", format!("{:?}", opts.latent_type));

    let raw = |b: &mut GgufBuilder<'_>, name: &str, as_name: &str| -> Result<(), ConvertError> {
        let t = f.tensor(name).ok_or_else(|| ConvertError::Invalid(format!("{}: no tensor {name}", src.path)))?;
        b.tensor(as_name, &t.dims, t.ggml_type, f.tensor_data(t).to_vec());
        Ok(())
    };
    raw(&mut b, "token_embd.weight", "token_embd.weight")?;
    raw(&mut b, "output_norm.weight", "output_norm.weight")?;
    if f.tensor("output.weight").is_some() {
        raw(&mut b, "output.weight", "output.weight")?;
    } else {
        // Tied embeddings: llama.cpp's deepseek2 needs its own output matrix.
        raw(&mut b, "token_embd.weight", "output.weight")?;
    }
    let eps = cfg.eps as f64;
    for (l, ly) in layers.iter().enumerate() {
        let nm = |s: &str| format!("blk.{l}.{s}.weight");
        for s in ["attn_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "attn_output"] {
            raw(&mut b, &nm(s), &nm(s))?;
        }
        let (q_type, q_bytes) = query_rows(src, &nm("attn_q"), &ly.q_rows, c, opts.q_type)?;
        b.tensor(nm("attn_q"), &[c as u64, (h * (n + p)) as u64], ggml(q_type)?, q_bytes);
        let delta = (MARGIN * eps / ly.latent_ms_max.max(1e-30)).sqrt();
        let mut kva = ly.wkv_a.clone(); // [R+P, C]
        for v in kva[..r * c].iter_mut() {
            *v = (*v as f64 * delta) as f32;
        }
        // F32 or BF16: the latent rows are scaled by δ (tiny), below what a Q8_0/F16 block's
        // f16 scale can hold (tried: Q8_0 here sends SmolLM2's perplexity from 28.6 to 1.6e5).
        let lt = opts.latent_type;
        b.tensor(nm("attn_kv_a_mqa"), &[c as u64, (r + p) as u64], ggml(lt)?, encode(lt, r + p, c, &kva)?);
        b.tensor_f32(nm("attn_kv_a_norm"), &[r as u64], &vec![(eps.sqrt() / delta) as f32; r]);
        // attn_k_b {N, R, H}: per head [R, N] = W_UKᵀ.
        let kb = latent_models::weights::transpose_heads(&ly.w_uk, h, n, r);
        b.tensor(nm("attn_k_b"), &[n as u64, r as u64, h as u64], ggml(lt)?, encode(lt, h * r, n, &kb)?);
        b.tensor(nm("attn_v_b"), &[r as u64, d as u64, h as u64], ggml(lt)?, encode(lt, h * d, r, &ly.w_uv)?);
    }
    Ok(b.build()?)
}
