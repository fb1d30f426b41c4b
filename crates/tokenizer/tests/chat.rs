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

/// Templates come from model files: endless loops, exponential growth and deep recursion end
/// in a `ChatTemplate` error after bounded work (minijinja fuel and a recursion limit), on a
/// thread with the default 2 MiB stack.
#[test]
fn hostile_templates_are_bounded() {
    let hostile = [
        // ~10^10 iterations.
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        // A string doubled 100 times.
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        // Unbounded recursion.
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        // A recursive loop over an ever-deeper structure.
        "{% macro f(n) %}{% for m in messages %}{{ f(n) }}{% endfor %}{% endmacro %}{{ f(0) }}",
        // Padding allocated before fuel was charged: a failed 100 TB allocation aborted the
        // process, 10^9 took seconds and 2 GB.
        "{{ '{:>99999999999999}'.format(1) }}",
        "{{ '{:0999999999}'.format(1) }}",
        "{{ '{:x<99999999999999999999999}'.format(1) }}",
        // Rust's float formatting panics for exponent-form precisions of 65535 and more.
        "{{ '{:.70000}'.format(1.5) }}",
        "{{ '{:.65535e}'.format(1.5) }}",
        "{{ '%.70000e'|format(1.5) }}",
        "{{ '%(a)-+#0.65535g'|format(a=1.5) }}",
        // Indentation written before fuel was charged: minutes and tens of GB.
        "{{ {'a': [1]}|tojson(indent=99999999999999) }}",
        "{{ {'a': [1]}|tojson(indent=100000) }}",
        "{{ messages|tojson(4, indent=99999999999) }}",
        // Quadratic in nesting depth; not available.
        "{{ messages|pprint }}",
    ];
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let msgs = [ChatMessage::user("hi"), ChatMessage::assistant("yo")];
            for t in hostile {
                let start = std::time::Instant::now();
                let r = render_template(t, &msgs, true, "<s>", "</s>");
                assert!(matches!(&r, Err(TokenizerError::ChatTemplate(_))), "{t}: {r:?}");
                assert!(start.elapsed().as_secs() < 20, "{t}: {:?}", start.elapsed());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The bounds leave room for long conversations with long messages.
#[test]
fn long_conversations_fit_the_bounds() {
    let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let msgs: Vec<ChatMessage> = (0..5000)
        .map(|i| ChatMessage::new(["user", "assistant"][i % 2], format!("{i} ").repeat(1 + i % 400)))
        .collect();
    let text = render_template(chatml, &msgs, true, "", "").unwrap();
    assert_eq!(text.matches("<|im_start|>").count(), 5001);
    // A message larger than the fixed budget alone could copy.
    let big = [ChatMessage::user("x".repeat(8 << 20))];
    assert_eq!(render_template(chatml, &big, false, "", "").unwrap().len(), (8 << 20) + 28);
}

/// The bounds on format widths and `tojson` leave ordinary formatting alone.
#[test]
fn formatting_within_the_bounds() {
    let msgs = [ChatMessage::user("hi")];
    let r = |t: &str| render_template(t, &msgs, false, "", "").unwrap();
    assert_eq!(
        r("{{ '{:>6}|{:<4}|{:^5}|{:.3f}|{:05d}|{:,}'.format('ab', 'c', 'd', 1.5, 42, 1234567) }}"),
        "    ab|c   |  d  |1.500|00042|1,234,567"
    );
    assert_eq!(r("{{ '{0[role]}: {0[content]}'.format(messages[0]) }} {{ '{{}}{}'.format(1) }}"), "user: hi {}1");
    assert_eq!(r("{{ '%05.1f|%-4s|%%'|format(2.25, 'x') }}"), "002.2|x   |%");
    assert_eq!(r("{{ '%(a)3d'|format(a=7) }}"), "  7");
    assert_eq!(r("{{ messages|tojson }}"), r#"[{"role": "user", "content": "hi"}]"#);
    assert_eq!(r("{{ {'a': 1}|tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
    assert_eq!(r("{{ {'a': 1}|tojson(true) }}"), "{\n  \"a\": 1\n}");
    assert_eq!(r("{{ {'a': 1}|tojson(indent=32) }}").lines().nth(1).unwrap().len(), 32 + 6);
    assert_eq!(r("{{ '{:.1024e}'.format(1.5)|length }}"), "1030");
}
