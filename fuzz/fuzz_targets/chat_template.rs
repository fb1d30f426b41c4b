//! Arbitrary chat templates and messages: rendering returns (a text or a typed error), never
//! panics, and stays within the work and memory bounds `render_template` sets (a hang or an
//! allocation past libFuzzer's limits is a finding).
//!
//! Input: a flag byte, then parts separated by 0xFF (a byte that never occurs in UTF-8): the
//! template, then up to 16 messages, each a role selector byte followed by its content.
#![no_main]

use latent_tokenizer::{render_template, ChatMessage, TokenizerError};
use libfuzzer_sys::fuzz_target;

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut parts = rest.split(|&b| b == 0xFF);
    let template = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let messages: Vec<ChatMessage> = parts
        .take(16)
        .map(|p| match p.split_first() {
            Some((&r, content)) => ChatMessage::new(ROLES[r as usize % ROLES.len()], String::from_utf8_lossy(content)),
            None => ChatMessage::user(""),
        })
        .collect();
    let add_generation_prompt = flags & 1 != 0;
    let (bos, eos) = if flags & 2 != 0 { ("<s>", "</s>") } else { ("", "<|im_end|>") };
    match render_template(&template, &messages, add_generation_prompt, bos, eos) {
        Ok(text) => {
            std::hint::black_box(text);
        }
        Err(TokenizerError::ChatTemplate(msg)) => {
            std::hint::black_box(msg);
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
