//! Streaming detokenizer.

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// Turns token ids into text as they are generated, yielding only complete UTF-8: bytes of a
/// character cut between tokens are held until the character is complete. Bytes that can
/// never form a character become U+FFFD as soon as that is certain; an incomplete character
/// left at the end becomes U+FFFD in [`finish`](Self::finish). The concatenated output
/// equals [`Tokenizer::decode_lossy`] of all the ids.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    state: DecodeState,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder { tok, state: DecodeState::default() }
    }

    /// Control and unknown tokens produce no text (default: they produce their text).
    pub fn skip_special(mut self, yes: bool) -> Self {
        self.state.skip_special = yes;
        self
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.state.push(self.tok, id)
    }

    /// Bytes held back (an incomplete character).
    pub fn pending_bytes(&self) -> &[u8] {
        &self.state.pending
    }

    /// Flushes what is held: an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        self.state.finish()
    }
}

/// The state of a [`StreamDecoder`] without the borrow of its tokenizer, for decoders that
/// live beside the tokenizer's owner (e.g. one per sequence of a batch); every call is given
/// the tokenizer.
#[derive(Clone, Debug, Default)]
pub struct DecodeState {
    pending: Vec<u8>,
    skip_special: bool,
}

impl DecodeState {
    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let piece = tok.piece(id)?;
        if !self.skip_special || tok.renders_when_skipping(id) {
            self.pending.extend_from_slice(piece);
        }
        Ok(self.take_complete())
    }

    /// Flushes what is held: an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or_default());
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += bad;
                        }
                        None => break, // incomplete character at the end: hold it
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

impl Tokenizer {
    pub(crate) fn renders_when_skipping(&self, id: u32) -> bool {
        use crate::vocab::attr;
        self.attrs.get(id as usize).is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) == 0)
    }
}
