//! The tokenizer: vocabulary, special tokens, encode and decode.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::bpe::Bpe;
use crate::error::TokenizerError;
use crate::pretokenize::{pre_config, PreTokenizer};
use crate::table::TokenTable;
use crate::unicode::{byte_of_char, char_of_byte};
use crate::vocab::{attr, attr_of_type, detect_specials, Specials};

/// Everything a tokenizer is built from: the `tokenizer.*` metadata of a GGUF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model` (only `gpt2` is supported).
    pub model: String,
    /// `tokenizer.ggml.pre` (empty: `default`).
    pub pre: String,
    /// `tokenizer.ggml.tokens`: token texts, in the gpt2 byte-level alphabet.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (e.g. `<|im_end|>`); found from the token texts when unset.
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Prepend BOS in [`Tokenizer::encode_with_bos`].
    pub add_bos: bool,
    /// Append EOS in [`Tokenizer::encode_with_bos`].
    pub add_eos: bool,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    /// A byte-level vocabulary of `vocab` tokens (≥ 258): the 256 bytes (id = byte), then
    /// control tokens `<|ctl_N|>`, the last being end-of-sequence. No merges: every byte is
    /// a token. For tiny test models and tools that need a tokenizer beside a model.
    pub fn byte_level(vocab: usize) -> TokenizerSpec {
        let vocab = vocab.max(258);
        let mut tokens: Vec<String> = (0..=255u8).map(|b| crate::unicode::char_of_byte(b).to_string()).collect();
        let mut token_types = vec![crate::vocab::token_type::NORMAL; 256];
        for i in 256..vocab {
            tokens.push(format!("<|ctl_{i}|>"));
            token_types.push(crate::vocab::token_type::CONTROL);
        }
        TokenizerSpec {
            model: "gpt2".into(),
            pre: "gpt-2".into(),
            tokens,
            token_types,
            eos: Some(vocab as u32 - 1),
            ..Default::default()
        }
    }

    /// The `add_bos` llama.cpp assumes for a model/pre-tokenizer pair when the metadata has
    /// no `tokenizer.ggml.add_bos_token` (true for the llama3 family).
    pub fn default_add_bos(model: &str, pre: &str) -> bool {
        model == "gpt2" && pre_config(pre).map(|c| c.add_bos_default).unwrap_or(false)
    }
}

/// Text or an already-recognised special token, while partitioning the input.
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

const CACHE_CAP: usize = 1 << 16;

/// A gpt2-style byte-level BPE tokenizer that matches llama.cpp token for token.
pub struct Tokenizer {
    pub(crate) model: String,
    pub(crate) pre_name: String,
    /// Token texts, by id and by text.
    pub(crate) tokens: TokenTable,
    pub(crate) attrs: Vec<u32>,
    /// Decoded bytes of every token (special tokens as their text).
    piece_data: Vec<u8>,
    piece_off: Vec<u32>,
    bpe: Bpe,
    pre: PreTokenizer,
    ignore_merges: bool,
    /// Tokens recognised in the text before BPE: control, user-defined and unknown tokens,
    /// longest first.
    special_order: Vec<u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    specials: Specials,
    add_bos: bool,
    add_eos: bool,
    pub(crate) chat_template: Option<String>,
    cache: Mutex<HashMap<Box<str>, Box<[u32]>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre_name)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.specials.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// The largest vocabulary: half the u32 id space, the rest left to the merge table's extra
/// symbols.
const MAX_VOCAB: usize = u32::MAX as usize / 2;

/// A byte offset into the rendered pieces as stored (u32), or [`TokenizerError::TooLarge`]
/// when the pieces exceed 4 GiB (a cast would wrap around and point into the wrong piece).
fn piece_offset(len: usize) -> Result<u32, TokenizerError> {
    u32::try_from(len).map_err(|_| TokenizerError::TooLarge {
        what: "total bytes of the token pieces",
        size: len as u64,
        limit: u32::MAX as u64,
    })
}

impl Tokenizer {
    /// Builds a tokenizer, validating the spec.
    pub fn new(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(spec.model));
        }
        let cfg = pre_config(&spec.pre)?;
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        // Ids are u32 with room for the merge table's extra symbols above the vocabulary;
        // every `as u32` of a token index below relies on this bound.
        if n > MAX_VOCAB {
            return Err(TokenizerError::TooLarge { what: "vocabulary size", size: n as u64, limit: MAX_VOCAB as u64 });
        }
        if !spec.token_types.is_empty() && spec.token_types.len() < n {
            return Err(TokenizerError::TokenTypesLength { expected: n, got: spec.token_types.len() });
        }

        let mut tokens = spec.tokens;
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let table = TokenTable::new(&tokens)?;

        let check = |name: &'static str, id: Option<u32>| match id {
            Some(id) if id as usize >= n => Err(TokenizerError::SpecialTokenOutOfRange { name, id, vocab_size: n }),
            _ => Ok(id),
        };
        let bos = check("bos", spec.bos)?;
        let eos = check("eos", spec.eos)?;
        let eot = check("eot", spec.eot)?;
        let unk = check("unk", spec.unk)?;
        let pad = check("pad", spec.pad)?;
        if spec.add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken("bos"));
        }
        if spec.add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken("eos"));
        }

        let bpe = Bpe::new(&|s| table.id(s), n as u32, &spec.merges)?;
        drop(spec.merges);

        let mut attrs: Vec<u32> = if spec.token_types.is_empty() {
            vec![attr::NORMAL; n]
        } else {
            spec.token_types[..n].iter().map(|&t| attr_of_type(t)).collect()
        };
        let specials = detect_specials(&tokens, &mut attrs, eos, eot);

        let mut special_order: Vec<u32> = (0..n as u32)
            .filter(|&id| attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .collect();
        special_order.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()).then(a.cmp(&b)));

        let mut piece_data = Vec::with_capacity(n.saturating_mul(6));
        let mut piece_off = Vec::with_capacity(n + 1);
        piece_off.push(0u32);
        for (t, &a) in tokens.iter().zip(&attrs) {
            render_piece(t, a, &mut piece_data);
            piece_off.push(piece_offset(piece_data.len())?);
        }

        Ok(Tokenizer {
            model: spec.model,
            pre_name: spec.pre,
            tokens: table,
            attrs,
            piece_data,
            piece_off,
            bpe,
            pre: PreTokenizer::new(cfg.stages),
            ignore_merges: cfg.ignore_merges,
            special_order,
            bos,
            eos,
            unk,
            pad,
            specials,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            chat_template: spec.chat_template,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (set, or found from the token texts).
    pub fn eot(&self) -> Option<u32> {
        self.specials.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether [`encode_with_bos`](Self::encode_with_bos) prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`encode_with_bos`](Self::encode_with_bos) appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The `tokenizer.ggml.pre` name in use.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre_name
    }

    /// Whether generation stops at this token (llama.cpp's end-of-generation set: EOS, EOT,
    /// EOM, `<|im_end|>`, `<|endoftext|>`, ... and some FIM tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.specials.eog.contains(&id)
    }

    /// The end-of-generation set, in increasing id order.
    pub fn eog_ids(&self) -> Vec<u32> {
        self.specials.eog.iter().copied().collect()
    }

    /// Whether the token is a control token (e.g. `<|im_start|>`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & attr::CONTROL != 0)
    }

    /// The token's text as stored in the vocabulary (byte-level alphabet for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    /// The id of a token given its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.id(text)
    }

    /// The bytes a token decodes to (special tokens decode to their text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if i >= self.tokens.len() {
            return None;
        }
        Some(&self.piece_data[self.piece_off[i] as usize..self.piece_off[i + 1] as usize])
    }

    /// Tokenizes `text` without BOS/EOS. With `parse_special`, control tokens written in the
    /// text (e.g. `<|im_start|>`) become their ids; user-defined tokens are always recognised.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_special(text, false, parse_special)
    }

    /// Like [`encode`](Self::encode), with BOS prepended if the model asks for it (and EOS
    /// appended if it asks for that), as llama.cpp's `add_special`.
    pub fn encode_with_bos(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_special(text, true, parse_special)
    }

    /// llama.cpp's `tokenize(text, add_special, parse_special)`.
    pub fn encode_special(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let fragments = self.partition(text, parse_special);
        let mut guard = self.cache.try_lock().ok();
        let mut scratch = Vec::new();
        let mut word_enc = String::new();
        for frag in fragments {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(s, e) => {
                    let t = &text[s..e];
                    for (ws, we) in self.pre.split(t) {
                        let word = &t[ws..we];
                        if let Some(cache) = guard.as_deref_mut() {
                            if let Some(ids) = cache.get(word) {
                                out.extend_from_slice(ids);
                                continue;
                            }
                            let start = out.len();
                            self.encode_word(word, &mut out, &mut scratch, &mut word_enc);
                            if cache.len() >= CACHE_CAP {
                                cache.clear();
                            }
                            cache.insert(word.into(), out[start..].into());
                        } else {
                            self.encode_word(word, &mut out, &mut scratch, &mut word_enc);
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The pre-token words of `text` (no special-token handling), for inspection.
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        self.pre.split(text).into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    /// BPE over one pre-token word.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>, scratch: &mut Vec<u32>, enc: &mut String) {
        if self.ignore_merges {
            enc.clear();
            enc.extend(word.bytes().map(char_of_byte));
            if let Some(id) = self.tokens.id(enc.as_str()) {
                out.push(id);
                return;
            }
        }
        scratch.clear();
        self.bpe.merge_word(word.as_bytes(), scratch);
        let n_vocab = self.tokens.len() as u32;
        for &sym in scratch.iter() {
            if sym < n_vocab {
                out.push(sym);
            } else if let Some(text) = self.bpe.extra_text(sym) {
                // A symbol that is not a token: its single-byte pieces that are tokens.
                for b in text.bytes() {
                    if b < 0x80 {
                        if let Some(id) = self.tokens.id(std::str::from_utf8(&[b]).unwrap_or("")) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// Splits the text around special tokens (longest first).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        for &id in &self.special_order {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let Some(pat) = self.tokens.get(id as usize) else { continue };
            if !frags.iter().any(|f| matches!(f, Fragment::Text(s, e) if text[*s..*e].contains(pat))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut s, e) => {
                        while let Some(p) = text[s..e].find(pat) {
                            if p > 0 {
                                next.push(Fragment::Text(s, s + p));
                            }
                            next.push(Fragment::Token(id));
                            s += p + pat.len();
                        }
                        if s < e {
                            next.push(Fragment::Text(s, e));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes of a token sequence, special tokens included as text.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.piece(id)?);
        }
        Ok(out)
    }

    /// Decodes a token sequence to text (special tokens included as text). Fails on ids out
    /// of range and on bytes that are not valid UTF-8 (use [`decode_lossy`](Self::decode_lossy)
    /// or [`crate::StreamDecoder`] for text that may end inside a character).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        String::from_utf8(bytes).map_err(|e| TokenizerError::InvalidUtf8 { valid_up_to: e.utf8_error().valid_up_to() })
    }

    /// Like [`decode`](Self::decode), with invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Like [`decode`](Self::decode), but control and unknown tokens decode to nothing (as
    /// llama.cpp's detokenizer without `special`).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.piece(id)?;
            if self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) == 0 {
                out.extend_from_slice(piece);
            }
        }
        String::from_utf8(out).map_err(|e| TokenizerError::InvalidUtf8 { valid_up_to: e.utf8_error().valid_up_to() })
    }

    pub(crate) fn piece(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.token_bytes(id).ok_or(TokenizerError::TokenOutOfRange { id, vocab_size: self.tokens.len() })
    }
}

/// What a token decodes to (llama.cpp's `token_to_piece` with `special = true`).
fn render_piece(text: &str, a: u32, out: &mut Vec<u8>) {
    if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        for c in text.chars() {
            match byte_of_char(c) {
                Some(b) => out.push(b),
                None => {
                    // Not a byte-level character: the reference writes a marker.
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
    } else if a & attr::BYTE != 0 {
        // "<0xXX>"
        if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Piece offsets past 4 GiB are a typed error (the cast used to wrap to a small offset).
    #[test]
    fn piece_offsets_past_u32_are_an_error() {
        assert_eq!(piece_offset(0), Ok(0));
        assert_eq!(piece_offset(u32::MAX as usize), Ok(u32::MAX));
        let e = piece_offset(u32::MAX as usize + 1).unwrap_err();
        assert_eq!(
            e,
            TokenizerError::TooLarge {
                what: "total bytes of the token pieces",
                size: u32::MAX as u64 + 1,
                limit: u32::MAX as u64
            }
        );
        assert!(piece_offset(usize::MAX).is_err());
    }
}
