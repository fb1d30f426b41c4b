//! Chat templates.

mod common;

use common::tiny_spec;
use latent_tokenizer::{render_template, ChatMessage, Tokenizer, TokenizerError};

#[test]
fn smollm_chatml() {
    let tok = model_or_skip!();
    let msgs = [
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hi!"),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("What is Rust?"),
    ];
    let text = tok.render_chat(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n\
         <|im_start|>user\nWhat is Rust?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let no_prompt = tok.render_chat(&msgs, false).unwrap();
    assert!(no_prompt.ends_with("What is Rust?<|im_end|>\n"));

    // Without a system message the template adds its default one.
    let text = tok.render_chat(&[ChatMessage::user("Hi")], true).unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{text}");

    // Encoded with special-token parsing, the markers are single tokens.
    let ids = tok.encode(&text, true);
    assert_eq!(ids[0], 1); // <|im_start|>
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2); // <|im_end|>
    let mut tail = vec![1];
    tail.extend(tok.encode("assistant\n", false));
    assert!(ids.ends_with(&tail), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // Without parsing they are plain text.
    assert!(!tok.encode(&text, false).contains(&1));
}

#[test]
fn template_features() {
    // trim_blocks / lstrip_blocks, Python string methods, bos/eos variables.
    let template = "{{ bos_token }}\n{% for m in messages %}\n  {{ m.role.upper() }}: {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}";
    let msgs = [ChatMessage::user("  hi  "), ChatMessage::assistant("yo")];
    let out = render_template(template, &msgs, true, "<s>", "</s>").unwrap();
    assert_eq!(out, "<s>\n  USER: hi</s>\n  ASSISTANT: yo</s>\nASSISTANT:");

    let raising = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}ok";
    let err = render_template(raising, &msgs, false, "", "").unwrap_err();
    assert!(matches!(&err, TokenizerError::ChatTemplate(m) if m.contains("system first")), "{err}");
    assert_eq!(render_template(raising, &[ChatMessage::system("s")], false, "", "").unwrap(), "ok");

    assert!(matches!(render_template("{% for %}", &msgs, false, "", ""), Err(TokenizerError::ChatTemplate(_))));
}

#[test]
fn no_template() {
    let tok = Tokenizer::new(tiny_spec(&[], &[])).unwrap();
    assert_eq!(tok.render_chat(&[ChatMessage::user("x")], true), Err(TokenizerError::NoChatTemplate));
}
