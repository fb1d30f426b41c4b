//! Byte-level BPE: merge table and the per-word merge loop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::error::TokenizerError;
use crate::unicode::char_of_byte;

/// A candidate merge: `(rank, left position, right position, left id, right id)`.
type Bigram = (u32, u32, u32, u32, u32);

/// Symbol ids stay below this (u32::MAX is the merge loop's "no position").
const MAX_SYMBOLS: u32 = u32::MAX;

/// The longest word merged in one piece: positions `0..n` and the "none" marker u32::MAX
/// must all be distinct u32 values.
const MAX_WORD: usize = u32::MAX as usize - 1;

/// Merge rules over symbol ids.
///
/// Symbols are the vocabulary's tokens (ids `0..n_vocab`) plus "extra" symbols (ids from
/// `n_vocab` on) for strings that the merges can form but that are not tokens: the byte
/// characters missing from the vocabulary and merge results missing from it. A word that
/// ends up with an extra symbol falls back to single-byte tokens, as the reference does.
#[derive(Debug)]
pub(crate) struct Bpe {
    n_vocab: u32,
    /// `(left, right) -> (rank, merged)`.
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// Initial symbol of each byte.
    byte_sym: [u32; 256],
    /// Texts of the extra symbols (`id - n_vocab`).
    extra: Vec<String>,
}

impl Bpe {
    /// Builds the merge table; `merges` are `"left right"` strings, rank = position.
    /// `token_to_id` looks a vocabulary token up by its text.
    pub fn new(
        token_to_id: &dyn Fn(&str) -> Option<u32>,
        n_vocab: u32,
        merges: &[String],
    ) -> Result<Bpe, TokenizerError> {
        let mut extra: Vec<String> = Vec::new();
        let mut extra_ids: HashMap<String, u32> = HashMap::new();
        fn intern(
            s: &str,
            token_to_id: &dyn Fn(&str) -> Option<u32>,
            n_vocab: u32,
            extra: &mut Vec<String>,
            extra_ids: &mut HashMap<String, u32>,
        ) -> Result<u32, TokenizerError> {
            if let Some(id) = token_to_id(s) {
                return Ok(id);
            }
            if let Some(&id) = extra_ids.get(s) {
                return Ok(id);
            }
            // Checked: ids must stay below `MAX_SYMBOLS` (no wraparound onto real tokens).
            let id = u32::try_from(extra.len())
                .ok()
                .and_then(|e| n_vocab.checked_add(e))
                .filter(|&id| id < MAX_SYMBOLS)
                .ok_or(TokenizerError::TooLarge {
                    what: "symbol count (vocabulary plus merge-formed symbols)",
                    size: n_vocab as u64 + extra.len() as u64 + 1,
                    limit: MAX_SYMBOLS as u64,
                })?;
            extra.push(s.to_string());
            extra_ids.insert(s.to_string(), id);
            Ok(id)
        }

        // Ranks are u32 positions.
        if merges.len() > u32::MAX as usize {
            return Err(TokenizerError::TooLarge {
                what: "merge rule count",
                size: merges.len() as u64,
                limit: u32::MAX as u64,
            });
        }

        let mut byte_sym = [0u32; 256];
        for (b, slot) in byte_sym.iter_mut().enumerate() {
            let s = char_of_byte(b as u8).to_string();
            *slot = intern(&s, token_to_id, n_vocab, &mut extra, &mut extra_ids)?;
        }

        // Split every rule at the first space after its first byte (a symbol may itself be
        // a lone space in vocabularies that are not byte-level).
        let mut split = Vec::with_capacity(merges.len());
        for (index, m) in merges.iter().enumerate() {
            match m.as_bytes().iter().skip(1).position(|&c| c == b' ') {
                Some(p) => split.push((&m[..p + 1], &m[p + 2..])),
                None => return Err(TokenizerError::MalformedMerge { index, merge: m.clone() }),
            }
        }
        // Merge results first, so that a rule may use the result of a later rule.
        let mut buf = String::new();
        let results: Vec<u32> = split
            .iter()
            .map(|(a, b)| {
                buf.clear();
                buf.push_str(a);
                buf.push_str(b);
                intern(&buf, token_to_id, n_vocab, &mut extra, &mut extra_ids)
            })
            .collect::<Result<_, _>>()?;

        let lookup = |s: &str| token_to_id(s).or_else(|| extra_ids.get(s).copied());
        let mut ranks = HashMap::with_capacity(merges.len());
        for (index, ((a, b), &merged)) in split.iter().zip(&results).enumerate() {
            let (ida, idb) = (lookup(a), lookup(b));
            let (Some(ida), Some(idb)) = (ida, idb) else {
                let token = if ida.is_none() { a } else { b };
                return Err(TokenizerError::UnknownMergeToken {
                    index,
                    merge: merges[index].clone(),
                    token: token.to_string(),
                });
            };
            // `index` < merges.len() ≤ u32::MAX (checked above).
            ranks.entry((ida, idb)).or_insert((index as u32, merged));
        }
        Ok(Bpe { n_vocab, ranks, byte_sym, extra })
    }

    /// Text of an extra symbol.
    pub fn extra_text(&self, id: u32) -> Option<&str> {
        id.checked_sub(self.n_vocab).and_then(|i| self.extra.get(i as usize)).map(String::as_str)
    }

    /// Runs the merges over the bytes of one word; pushes the resulting symbol ids (which may
    /// include extra symbols) to `out`.
    pub fn merge_word(&self, word: &[u8], out: &mut Vec<u32>) {
        self.merge_word_in_parts(word, out, MAX_WORD);
    }

    /// [`Bpe::merge_word`] over parts of at most `max` bytes: positions are u32 with u32::MAX
    /// as "none", so a word of 4 GiB or more is merged part by part instead of wrapping
    /// positions around (no real text has such a word; `max` is small only in tests).
    fn merge_word_in_parts(&self, word: &[u8], out: &mut Vec<u32>, max: usize) {
        for part in word.chunks(max.clamp(1, MAX_WORD)) {
            self.merge_part(part, out);
        }
    }

    /// The merge loop over one word of fewer than u32::MAX bytes.
    fn merge_part(&self, word: &[u8], out: &mut Vec<u32>) {
        match word.len() {
            0 => return,
            1 => {
                out.push(self.byte_sym[word[0] as usize]);
                return;
            }
            _ => {}
        }
        #[derive(Clone, Copy)]
        struct Sym {
            id: u32,
            prev: u32,
            next: u32,
            alive: bool,
        }
        const NONE: u32 = u32::MAX;
        let n = word.len();
        let mut syms: Vec<Sym> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Sym {
                id: self.byte_sym[b as usize],
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: if i + 1 == n { NONE } else { i as u32 + 1 },
                alive: true,
            })
            .collect();

        // Min-heap on (rank, left position); entries are validated when popped.
        let mut heap: BinaryHeap<Reverse<Bigram>> = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<_>, syms: &[Sym], l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (a, b) = (syms[l as usize].id, syms[r as usize].id);
            if let Some(&(rank, _)) = self.ranks.get(&(a, b)) {
                heap.push(Reverse((rank, l, r, a, b)));
            }
        };
        for i in 1..n as u32 {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(Reverse((_, l, r, a, b))) = heap.pop() {
            let (ls, rs) = (syms[l as usize], syms[r as usize]);
            if !ls.alive || !rs.alive || ls.id != a || rs.id != b || ls.next != r {
                continue;
            }
            let merged = self.ranks[&(a, b)].1;
            syms[l as usize].id = merged;
            syms[l as usize].next = rs.next;
            syms[r as usize].alive = false;
            if rs.next != NONE {
                syms[rs.next as usize].prev = l;
            }
            push(&mut heap, &syms, ls.prev, l);
            push(&mut heap, &syms, l, rs.next);
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(syms[i as usize].id);
            i = syms[i as usize].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_vocab() -> HashMap<String, u32> {
        (0..=255u8).map(|b| (char_of_byte(b).to_string(), b as u32)).collect()
    }

    /// Symbol ids near the top of u32 are a typed error, not a wrapped id (the byte symbols
    /// interned above an absurd vocabulary size used to overflow).
    #[test]
    fn symbol_ids_that_would_wrap_are_an_error() {
        let e = Bpe::new(&|_| None, u32::MAX - 100, &[]).unwrap_err();
        assert!(matches!(e, TokenizerError::TooLarge { limit, .. } if limit == u32::MAX as u64), "{e}");
        assert!(e.to_string().contains("exceeds the limit of 4294967295"), "{e}");
        // Room for the 256 byte symbols but not for a merge result.
        let merges = vec!["a b".to_string()];
        assert!(Bpe::new(&|_| None, u32::MAX - 256, &[]).is_ok());
        assert!(matches!(Bpe::new(&|_| None, u32::MAX - 256, &merges), Err(TokenizerError::TooLarge { .. })));
    }

    /// A word longer than a part is merged part by part, each part as a word of its own.
    #[test]
    fn long_words_are_merged_in_parts() {
        let vocab = {
            let mut v = byte_vocab();
            v.insert("ab".into(), 256);
            v
        };
        let bpe = Bpe::new(&|s| vocab.get(s).copied(), 257, &["a b".to_string()]).unwrap();
        let mut whole = Vec::new();
        bpe.merge_word(b"ababab", &mut whole);
        assert_eq!(whole, [256, 256, 256]);
        let mut parts = Vec::new();
        bpe.merge_word_in_parts(b"ababab", &mut parts, 3);
        // "aba" + "bab": the pair cut at the boundary stays unmerged.
        assert_eq!(parts, [256, b'a' as u32, b'b' as u32, 256]);
        let mut same = Vec::new();
        bpe.merge_word_in_parts(b"ababab", &mut same, 0);
        assert_eq!(same.len(), 6, "a zero bound means single bytes, not a panic");
    }
}
