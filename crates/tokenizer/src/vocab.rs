//! Token attributes and the special-token bookkeeping llama.cpp does at load time.

use std::collections::BTreeSet;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
}

/// GGUF `tokenizer.ggml.token_type` values.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

pub(crate) fn attr_of_type(t: i32) -> u32 {
    match t {
        token_type::UNKNOWN => attr::UNKNOWN,
        token_type::UNUSED => attr::UNUSED,
        token_type::NORMAL => attr::NORMAL,
        token_type::CONTROL => attr::CONTROL,
        token_type::USER_DEFINED => attr::USER_DEFINED,
        token_type::BYTE => attr::BYTE,
        _ => attr::UNDEFINED,
    }
}

pub(crate) const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
pub(crate) const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
pub(crate) const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
pub(crate) const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
pub(crate) const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
pub(crate) const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
pub(crate) const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
pub(crate) const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Special token ids after auto-detection.
#[derive(Clone, Debug, Default)]
pub(crate) struct Specials {
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
    pub eog: BTreeSet<u32>,
}

/// Fills unset special ids from token texts, marks the tokens involved as control tokens and
/// builds the end-of-generation set, following llama.cpp's loader. Where the reference walks
/// a hash map (an unspecified order), this walks ids in increasing order.
pub(crate) fn detect_specials(tokens: &[String], attrs: &mut [u32], eos: Option<u32>, eot: Option<u32>) -> Specials {
    let mut sp = Specials { eot, ..Default::default() };
    let find = |slot: &mut Option<u32>, texts: &[&str], attrs: &mut [u32]| {
        if slot.is_some() {
            return;
        }
        if let Some(id) = tokens.iter().position(|t| texts.contains(&t.as_str())) {
            *slot = Some(id as u32);
            attrs[id] |= attr::CONTROL;
        }
    };
    find(&mut sp.eot, EOT_TEXTS, attrs);
    find(&mut sp.eom, EOM_TEXTS, attrs);
    find(&mut sp.fim_pre, FIM_PRE_TEXTS, attrs);
    find(&mut sp.fim_suf, FIM_SUF_TEXTS, attrs);
    find(&mut sp.fim_mid, FIM_MID_TEXTS, attrs);
    find(&mut sp.fim_pad, FIM_PAD_TEXTS, attrs);
    find(&mut sp.fim_rep, FIM_REP_TEXTS, attrs);
    find(&mut sp.fim_sep, FIM_SEP_TEXTS, attrs);

    // Control tokens whose text says "unused" are unused.
    for (t, a) in tokens.iter().zip(attrs.iter_mut()) {
        if *a & attr::CONTROL != 0 && t.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog = BTreeSet::new();
    eog.extend(sp.fim_pad);
    eog.extend(sp.fim_rep);
    eog.extend(sp.fim_sep);
    for (id, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&t.as_str()) {
            eog.insert(id as u32);
            attrs[id] |= attr::CONTROL;
        }
    }
    // Tokens of the gpt-oss format that are always rendered.
    for (id, t) in tokens.iter().enumerate() {
        if matches!(t.as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
            attrs[id] = attr::USER_DEFINED;
        }
    }
    eog.extend(eos);
    eog.extend(sp.eot);
    eog.extend(sp.eom);

    // With "<|return|>" and "<|call|>" (or "<|calls|>" and "<|flush|>"), "<|end|>" ends a
    // message but not the generation.
    let find_in = |eog: &BTreeSet<u32>, s: &str| eog.iter().copied().find(|&id| tokens[id as usize] == s);
    let has_return = find_in(&eog, "<|return|>").is_some();
    let has_call = find_in(&eog, "<|call|>").is_some() || find_in(&eog, "<|calls|>").is_some();
    let has_flush = find_in(&eog, "<|flush|>").is_some();
    if let Some(end_id) = find_in(&eog, "<|end|>") {
        if has_call && (has_return || has_flush) {
            eog.remove(&end_id);
            attrs[end_id as usize] = attr::USER_DEFINED;
        }
    }
    // With "<|tool_response>", "</s>" is an ordinary token.
    if find_in(&eog, "<|tool_response>").is_some() {
        if let Some(s_id) = find_in(&eog, "</s>") {
            eog.remove(&s_id);
            attrs[s_id as usize] = attr::NORMAL;
        }
    }
    sp.eog = eog;
    sp
}
