//! The vocabulary's token texts in one buffer, looked up by id or by text.
//!
//! One `String` per token plus a `HashMap<String, u32>` of copies cost ~8 MB for a 49k
//! vocabulary; this table holds the same texts in ~0.8 MB (texts back to back, offsets, and
//! the ids sorted by text for a binary search).

use crate::error::TokenizerError;

pub(crate) struct TokenTable {
    /// All token texts back to back.
    text: String,
    /// `[n + 1]` byte offsets: token i is `text[off[i]..off[i + 1]]`.
    off: Vec<u32>,
    /// `[n]` token ids sorted by text.
    by_text: Vec<u32>,
}

impl TokenTable {
    /// The table of `tokens` (id = position); two equal texts are an error naming the first
    /// repeated id and the id it repeats.
    pub fn new(tokens: &[String]) -> Result<TokenTable, TokenizerError> {
        let total: usize = tokens.iter().map(String::len).sum();
        if total > u32::MAX as usize || tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::TooLarge {
                what: "total bytes of the token texts",
                size: total as u64,
                limit: u32::MAX as u64,
            });
        }
        let mut text = String::with_capacity(total);
        let mut off = Vec::with_capacity(tokens.len() + 1);
        off.push(0u32);
        for t in tokens {
            text.push_str(t);
            off.push(text.len() as u32);
        }
        let mut by_text: Vec<u32> = (0..tokens.len() as u32).collect();
        by_text.sort_by(|&a, &b| tokens[a as usize].cmp(&tokens[b as usize]).then(a.cmp(&b)));
        // Equal texts sit together in id order: each group's first two ids are its first
        // repeat, and the repeat with the smallest id is the one a pass in id order meets.
        let same = |i: usize, j: usize| tokens[by_text[i] as usize] == tokens[by_text[j] as usize];
        let dup = (1..by_text.len())
            .filter(|&i| same(i - 1, i) && (i < 2 || !same(i - 2, i - 1)))
            .map(|i| (by_text[i - 1], by_text[i]))
            .min_by_key(|&(_, b)| b);
        if let Some((first, second)) = dup {
            return Err(TokenizerError::DuplicateToken { token: tokens[second as usize].clone(), first, second });
        }
        Ok(TokenTable { text, off, by_text })
    }

    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    /// The text of token `id`.
    pub fn get(&self, id: usize) -> Option<&str> {
        let (a, b) = (*self.off.get(id)?, *self.off.get(id + 1)?);
        self.text.get(a as usize..b as usize)
    }

    /// The id of the token whose text is `s`.
    pub fn id(&self, s: &str) -> Option<u32> {
        self.by_text.binary_search_by(|&id| self.get(id as usize).unwrap_or("").cmp(s)).ok().map(|i| self.by_text[i])
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.text.capacity() + 4 * (self.off.capacity() + self.by_text.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_both_ways_and_duplicates() {
        let toks: Vec<String> = ["b", "a", "", "ab", "é", "a b", "zz"].iter().map(|s| s.to_string()).collect();
        let t = TokenTable::new(&toks).unwrap();
        assert_eq!(t.len(), toks.len());
        for (i, s) in toks.iter().enumerate() {
            assert_eq!(t.get(i), Some(s.as_str()));
            assert_eq!(t.id(s), Some(i as u32), "{s:?}");
        }
        assert_eq!(t.get(toks.len()), None);
        assert_eq!(t.id("abc"), None);
        assert_eq!(t.id("c"), None);
        assert!(t.bytes() < 200);

        // The first repeat in id order is reported, as a pass over the ids would find it.
        let toks: Vec<String> = ["x", "y", "z", "y", "x", "y"].iter().map(|s| s.to_string()).collect();
        match TokenTable::new(&toks) {
            Err(TokenizerError::DuplicateToken { token, first, second }) => {
                assert_eq!((token.as_str(), first, second), ("y", 1, 3))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
