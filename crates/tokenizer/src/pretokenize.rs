//! Pre-tokenizers: split text into words before BPE, as llama.cpp does for each
//! `tokenizer.ggml.pre` value.
//!
//! A pre-tokenizer is a list of stages. Each stage splits every piece left by the previous
//! stage further; a stage never joins pieces, so piece boundaries act as hard text boundaries
//! for later stages (e.g. SmolLM's first stage isolates every digit, so the gpt2 stage then
//! sees `" "` and `"1"` as separate pieces and cannot form `" 1"`).
//!
//! Two stage kinds exist, mirroring the reference implementation:
//! - hand-written splitters for the gpt2 and llama3 patterns (`Gpt2`, `Llama3`), where a code
//!   point that no alternative matches becomes a piece of its own;
//! - "regex" stages (`Regex`): leftmost-first matches of a pattern; the text between two
//!   matches is kept as one piece.

use crate::error::TokenizerError;
use crate::unicode::{c_letter, c_mark, c_number, c_punct, c_space, c_symbol, flags, wide, Flags};

const CR: u32 = '\r' as u32;
const LF: u32 = '\n' as u32;
const SPACE: u32 = ' ' as u32;
const APOS: u32 = '\'' as u32;

/// Character classes used by the regex stages.
#[derive(Clone, Debug)]
pub(crate) enum Class {
    /// `[\r\n]`
    CrLf,
    /// `\p{N}`
    Number,
    /// `\p{L}`
    Letter,
    /// `\p{P}`
    Punct,
    /// `[\p{P}\$\+<=>\^~\|]` (plus `` ` `` when `backtick`)
    PunctSymbols { backtick: bool },
    /// `[0-9]`
    AsciiDigit,
    /// Literal code point ranges (a bracket expression without `\p{..}`).
    Ranges(Vec<(u32, u32)>),
}

impl Class {
    #[inline]
    fn contains(&self, cp: u32) -> bool {
        match self {
            Class::CrLf => cp == CR || cp == LF,
            Class::Number => c_number(cp),
            Class::Letter => c_letter(cp),
            Class::Punct => c_punct(cp),
            Class::PunctSymbols { backtick } => {
                c_punct(cp)
                    || matches!(char::from_u32(cp), Some('$' | '+' | '<' | '=' | '>' | '^' | '~' | '|'))
                    || (*backtick && cp == '`' as u32)
            }
            Class::AsciiDigit => (b'0' as u32..=b'9' as u32).contains(&cp),
            Class::Ranges(r) => {
                let w = wide(cp);
                r.iter().any(|&(a, b)| a <= w && w <= b)
            }
        }
    }

    /// Parses the body of a bracket expression made of literal characters and `a-b` ranges.
    fn ranges(body: &str) -> Class {
        let chars: Vec<char> = body.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                out.push((chars[i] as u32, chars[i + 2] as u32));
                i += 3;
            } else {
                out.push((chars[i] as u32, chars[i] as u32));
                i += 1;
            }
        }
        Class::Ranges(out)
    }
}

/// Patterns of the regex stages.
#[derive(Clone, Debug)]
pub(crate) enum Pattern {
    /// `C+` (`max`: `C{1,max}`)
    Run { class: Class, max: Option<usize> },
    /// `\s?C+`
    SpaceRun(Class),
    /// `C{n}`
    Exact(Class, usize),
    /// `\s+$`
    TrailingSpace,
    /// deepseek-v3's main pattern:
    /// ``[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+``
    Deepseek3,
}

/// One splitting stage.
#[derive(Clone, Debug)]
pub(crate) enum Stage {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// with `D = max_digits` (3 for llama3, 1 for qwen2).
    Llama3 {
        max_digits: usize,
    },
    Regex(Pattern),
}

/// What a `tokenizer.ggml.pre` name selects.
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    pub stages: Vec<Stage>,
    /// A whole pre-token word that is in the vocabulary is emitted as is, without BPE.
    pub ignore_merges: bool,
    /// Default of `add_bos` when the metadata does not say.
    pub add_bos_default: bool,
}

fn run(class: Class) -> Stage {
    Stage::Regex(Pattern::Run { class, max: None })
}

fn one(class: Class) -> Stage {
    Stage::Regex(Pattern::Run { class, max: Some(1) })
}

/// Chinese/Korean runs of deepseek's pre-tokenizers: `[一-龥ࠀ-一가-퟿]+`.
fn cjk_deepseek() -> Class {
    Class::ranges("\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}")
}

/// The pre-token names llama.cpp knows whose splitting this crate implements.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "gpt-2",
    "gpt2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "exaone4",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "starcoder",
    "refact",
    "command-r",
    "smollm",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "stablelm2",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "hunyuan",
    "solar-open",
    "chatglm-bpe",
    "glm4",
];

/// The configuration for a `tokenizer.ggml.pre` value (an empty name means "default").
pub(crate) fn pre_config(name: &str) -> Result<PreConfig, TokenizerError> {
    let mut ignore_merges = false;
    let mut add_bos_default = false;
    let stages = match name {
        "" | "default" => vec![
            run(Class::PunctSymbols { backtick: false }),
            Stage::Gpt2,
            run(Class::Number),
            Stage::Regex(Pattern::Exact(Class::AsciiDigit, 3)),
        ],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            ignore_merges = true;
            add_bos_default = true;
            vec![Stage::Llama3 { max_digits: 3 }]
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => vec![Stage::Llama3 { max_digits: 3 }],
        "stablelm2" | "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "hunyuan" | "solar-open" => {
            vec![Stage::Llama3 { max_digits: 1 }]
        }
        "deepseek-llm" => vec![
            one(Class::CrLf),
            Stage::Regex(Pattern::SpaceRun(Class::ranges(DEEPSEEK_LLM_LETTERS))),
            Stage::Regex(Pattern::SpaceRun(Class::ranges(
                "!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}",
            ))),
            Stage::Regex(Pattern::TrailingSpace),
            run(cjk_deepseek()),
            run(Class::Number),
        ],
        "deepseek-coder" => vec![
            one(Class::CrLf),
            Stage::Regex(Pattern::SpaceRun(Class::Letter)),
            Stage::Regex(Pattern::SpaceRun(Class::Punct)),
            run(cjk_deepseek()),
            one(Class::Number),
        ],
        "deepseek-v3" => vec![
            Stage::Regex(Pattern::Run { class: Class::Number, max: Some(3) }),
            run(Class::ranges("\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}")),
            Stage::Regex(Pattern::Deepseek3),
        ],
        "falcon" => vec![
            run(Class::PunctSymbols { backtick: true }),
            Stage::Gpt2,
            Stage::Regex(Pattern::Exact(Class::AsciiDigit, 3)),
        ],
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
        | "mellum" | "modern-bert" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
        | "jais" | "trillion" | "granite-docling" => vec![Stage::Gpt2],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            vec![one(Class::Number), Stage::Gpt2]
        }
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    };
    Ok(PreConfig { stages, ignore_merges, add_bos_default })
}

/// Latin, Greek, Cyrillic, ... letters of deepseek-llm's second pattern.
const DEEPSEEK_LLM_LETTERS: &str = "A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}";

/// A pre-tokenizer: its stages applied in order.
#[derive(Clone, Debug)]
pub(crate) struct PreTokenizer {
    stages: Vec<Stage>,
}

impl PreTokenizer {
    pub fn new(stages: Vec<Stage>) -> PreTokenizer {
        PreTokenizer { stages }
    }

    /// Splits `text` into words; returns byte ranges into `text`, covering it in order.
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut cpts = Vec::with_capacity(text.len());
        let mut byte_pos = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            cpts.push(c as u32);
            byte_pos.push(i);
        }
        byte_pos.push(text.len());

        let mut pieces = vec![(0usize, cpts.len())];
        let mut next = Vec::with_capacity(cpts.len() / 3 + 1);
        for stage in &self.stages {
            next.clear();
            for &(s, e) in &pieces {
                match stage {
                    Stage::Gpt2 => split_gpt2(&cpts, s, e, &mut next),
                    Stage::Llama3 { max_digits } => split_llama3(&cpts, s, e, *max_digits, &mut next),
                    Stage::Regex(p) => split_regex(p, &cpts, s, e, &mut next),
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        pieces.into_iter().map(|(s, e)| (byte_pos[s], byte_pos[e])).collect()
    }
}

/// Read access to a fragment `[ini, end)` of the code points: outside it there is nothing.
struct Frag<'a> {
    c: &'a [u32],
    ini: usize,
    end: usize,
}

const OUT_OF_RANGE: u32 = u32::MAX;

impl Frag<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.c[pos]
        } else {
            OUT_OF_RANGE
        }
    }
    #[inline]
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            flags(self.c[pos])
        } else {
            Flags::NONE
        }
    }
}

/// Emits pieces up to given ends, skipping empty ones.
struct Emitter<'a> {
    prev_end: usize,
    out: &'a mut Vec<(usize, usize)>,
}

impl Emitter<'_> {
    #[inline]
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
        len
    }
}

/// Matches `'s|'t|'m|'d|'re|'ve|'ll` at `pos` (ASCII case-insensitive when `fold`); returns the
/// length.
#[inline]
fn contraction(f: &Frag, pos: usize, fold: bool) -> Option<usize> {
    if f.cpt(pos) != APOS || pos + 1 >= f.end {
        return None;
    }
    let low = |c: u32| {
        if fold && (b'A' as u32..=b'Z' as u32).contains(&c) {
            c + 32
        } else {
            c
        }
    };
    let n1 = low(f.cpt(pos + 1));
    if [b's', b't', b'm', b'd'].iter().any(|&b| n1 == b as u32) {
        return Some(2);
    }
    if pos + 2 < f.end {
        let n2 = low(f.cpt(pos + 2));
        let pair = |a: u8, b: u8| n1 == a as u32 && n2 == b as u32;
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return Some(3);
        }
    }
    None
}

fn split_gpt2(c: &[u32], ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let f = Frag { c, ini, end };
    let mut em = Emitter { prev_end: ini, out };
    let mut pos = ini;
    while pos < end {
        let cpt = f.cpt(pos);
        let fl = f.flags(pos);

        if let Some(n) = contraction(&f, pos, false) {
            pos += em.add(pos + n);
            continue;
        }

        let mut fl2 = if cpt == SPACE { f.flags(pos + 1) } else { fl };
        // <space>?\p{L}+
        if fl2.is_letter() {
            pos += (cpt == SPACE) as usize;
            while fl2.is_letter() {
                pos += 1;
                fl2 = f.flags(pos);
            }
            em.add(pos);
            continue;
        }
        // <space>?\p{N}+
        if fl2.is_number() {
            pos += (cpt == SPACE) as usize;
            while fl2.is_number() {
                pos += 1;
                fl2 = f.flags(pos);
            }
            em.add(pos);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+
        let other = |x: Flags| !(x.is_whitespace() || x.is_letter() || x.is_number()) && x.is_some();
        if other(fl2) {
            pos += (cpt == SPACE) as usize;
            while other(fl2) {
                pos += 1;
                fl2 = f.flags(pos);
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        while f.flags(pos + n_ws).is_whitespace() {
            n_ws += 1;
        }
        // \s+(?!\S)
        if n_ws > 1 && f.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        // no match
        pos += 1;
        em.add(pos);
    }
}

fn split_llama3(c: &[u32], ini: usize, end: usize, max_digits: usize, out: &mut Vec<(usize, usize)>) {
    let f = Frag { c, ini, end };
    let mut em = Emitter { prev_end: ini, out };
    let mut pos = ini;
    while pos < end {
        let cpt = f.cpt(pos);
        let fl = f.flags(pos);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if let Some(n) = contraction(&f, pos, true) {
            pos += em.add(pos + n);
            continue;
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(cpt == CR || cpt == LF || fl.is_number()) && (fl.is_letter() || f.flags(pos + 1).is_letter()) {
            pos += 1;
            while f.flags(pos).is_letter() {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        // \p{N}{1,D}
        if fl.is_number() {
            let mut group = pos;
            while f.flags(pos).is_number() {
                pos += 1;
                if pos - group >= max_digits {
                    em.add(pos);
                    group = pos;
                }
            }
            em.add(pos);
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let mut fl2 = if cpt == SPACE { f.flags(pos + 1) } else { fl };
        let other = |x: Flags| !(x.is_whitespace() || x.is_letter() || x.is_number());
        if other(fl2) && fl.is_some() {
            pos += (cpt == SPACE) as usize;
            while other(fl2) && fl2.is_some() {
                pos += 1;
                fl2 = f.flags(pos);
            }
            let mut c2 = f.cpt(pos);
            while c2 == CR || c2 == LF {
                pos += 1;
                c2 = f.cpt(pos);
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        let mut last_crlf_end = 0;
        while f.flags(pos + n_ws).is_whitespace() {
            let c2 = f.cpt(pos + n_ws);
            if c2 == CR || c2 == LF {
                last_crlf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_crlf_end > 0 {
            pos = last_crlf_end;
            em.add(pos);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && f.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

/// Leftmost-first matching of `p` over `[ini, end)`: matches and the gaps between them.
fn split_regex(p: &Pattern, c: &[u32], ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    if let Pattern::TrailingSpace = p {
        let mut t = end;
        while t > ini && c_space(c[t - 1]) {
            t -= 1;
        }
        if t > ini {
            out.push((ini, t));
        }
        if t < end {
            out.push((t, end));
        }
        return;
    }
    let mut pos = ini;
    let mut gap = ini;
    while pos < end {
        match match_at(p, c, pos, end) {
            Some(m) => {
                debug_assert!(m > pos);
                if gap < pos {
                    out.push((gap, pos));
                }
                out.push((pos, m));
                pos = m;
                gap = m;
            }
            None => pos += 1,
        }
    }
    if gap < end {
        out.push((gap, end));
    }
}

/// End of the match of `p` starting exactly at `pos`, if any (never empty).
#[inline]
fn match_at(p: &Pattern, c: &[u32], pos: usize, end: usize) -> Option<usize> {
    let run_end = |class: &Class, from: usize, max: usize| {
        let mut q = from;
        while q < end && q - from < max && class.contains(c[q]) {
            q += 1;
        }
        q
    };
    match p {
        Pattern::Run { class, max } => {
            let q = run_end(class, pos, max.unwrap_or(usize::MAX));
            (q > pos).then_some(q)
        }
        Pattern::Exact(class, n) => {
            let q = run_end(class, pos, *n);
            (q - pos == *n).then_some(q)
        }
        Pattern::SpaceRun(class) => {
            if c_space(c[pos]) && pos + 1 < end && class.contains(c[pos + 1]) {
                return Some(run_end(class, pos + 1, usize::MAX));
            }
            let q = run_end(class, pos, usize::MAX);
            (q > pos).then_some(q)
        }
        Pattern::TrailingSpace => unreachable!("handled by split_regex"),
        Pattern::Deepseek3 => deepseek3_at(c, pos, end),
    }
}

fn deepseek3_at(c: &[u32], pos: usize, end: usize) -> Option<usize> {
    let at = |i: usize| if i < end { Some(c[i]) } else { None };
    let ascii_alpha = |i: usize| at(i).is_some_and(|x| x < 128 && (x as u8).is_ascii_alphabetic());
    let x = c[pos];

    // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
    if x < 128 && (x as u8).is_ascii_punctuation() && ascii_alpha(pos + 1) {
        let mut q = pos + 1;
        while ascii_alpha(q) {
            q += 1;
        }
        return Some(q);
    }

    // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
    let lm = |i: usize| at(i).is_some_and(|v| c_letter(v) || c_mark(v));
    let lm_run = |from: usize| {
        let mut q = from;
        while lm(q) {
            q += 1;
        }
        q
    };
    let lead = x != CR && x != LF && !c_letter(x) && !c_punct(x) && !c_symbol(x);
    if lead && lm(pos + 1) {
        return Some(lm_run(pos + 1));
    }
    if lm(pos) {
        return Some(lm_run(pos));
    }

    // ` ?[\p{P}\p{S}]+[\r\n]*`
    let ps = |i: usize| at(i).is_some_and(|v| c_punct(v) || c_symbol(v));
    let start = if x == SPACE && ps(pos + 1) {
        Some(pos + 1)
    } else if ps(pos) {
        Some(pos)
    } else {
        None
    };
    if let Some(s) = start {
        let mut q = s;
        while ps(q) {
            q += 1;
        }
        while at(q).is_some_and(|v| v == CR || v == LF) {
            q += 1;
        }
        return Some(q);
    }

    // \s*[\r\n]+|\s+(?!\S)|\s+
    let mut n_ws = 0;
    let mut last_crlf_end = 0;
    while at(pos + n_ws).is_some_and(c_space) {
        let v = c[pos + n_ws];
        if v == CR || v == LF {
            last_crlf_end = pos + n_ws + 1;
        }
        n_ws += 1;
    }
    if last_crlf_end > 0 {
        return Some(last_crlf_end);
    }
    if n_ws > 1 && pos + n_ws < end {
        return Some(pos + n_ws - 1);
    }
    if n_ws > 0 {
        return Some(pos + n_ws);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let cfg = pre_config(pre).unwrap();
        let p = PreTokenizer::new(cfg.stages);
        p.split(text).into_iter().map(|(s, e)| text[s..e].to_string()).collect()
    }

    #[test]
    fn gpt2_basic() {
        assert_eq!(words("gpt-2", "Hello world"), ["Hello", " world"]);
        assert_eq!(words("gpt-2", "I'm here  now"), ["I", "'m", " here", " ", " now"]);
        assert_eq!(words("gpt-2", "x  "), ["x", "  "]);
        assert_eq!(words("gpt-2", "a 123 b"), ["a", " 123", " b"]);
        assert_eq!(words("gpt-2", "hi!!\n\nyo"), ["hi", "!!", "\n", "\n", "yo"]);
        assert_eq!(words("gpt-2", "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(words("smollm", "in 2024 we"), ["in", " ", "2", "0", "2", "4", " we"]);
        assert_eq!(words("smollm", "x  1"), ["x", "  ", "1"]);
        assert_eq!(words("smollm", "v1.5"), ["v", "1", ".", "5"]);
    }

    #[test]
    fn llama3_and_qwen2() {
        assert_eq!(words("llama3", "12345 I'M"), ["123", "45", " I", "'M"]);
        assert_eq!(words("qwen2", "123"), ["1", "2", "3"]);
        assert_eq!(words("llama3", "a.\n\n b"), ["a", ".\n\n", " b"]);
        assert_eq!(words("llama3", "x \n  y"), ["x", " \n", " ", " y"]);
    }

    #[test]
    fn default_and_deepseek() {
        assert_eq!(words("default", "a,b 12345"), ["a", ",", "b", " ", "123", "45"]);
        assert_eq!(words("deepseek-v3", "Hello, 12345 世界!"), ["Hello", ",", " ", "123", "45", " ", "世界", "!"]);
        assert_eq!(words("deepseek-llm", "Hi there\n123"), ["Hi", " there", "\n", "123"]);
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(matches!(pre_config("nope"), Err(TokenizerError::UnsupportedPreTokenizer(_))));
    }
}
