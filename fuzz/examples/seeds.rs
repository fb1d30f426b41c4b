//! Writes seed inputs for the fuzz targets into `corpus/<target>/seed-*` (the corpus
//! directories are not committed; run this first: `cargo run --example seeds`).
//!
//! - `gguf_reader`: small valid GGUF files from `GgufBuilder` (every metadata type, nested
//!   arrays, versions 2 and 3, several alignments, tensors of many types);
//! - `tokenizer_roundtrip`: texts (selector byte, then the text);
//! - `chat_template`: common chat templates with a few messages, in the target's input format.

use std::fs;
use std::path::Path;

use latent_formats::gguf::{GgmlType, GgufBuilder, MetaValue};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn gguf_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |name: &str, b: &GgufBuilder| out.push((name.to_string(), b.build().expect("seed builds")));

    push("empty", &GgufBuilder::new());
    push("empty-v2", GgufBuilder::new().version(2));

    let mut all = GgufBuilder::new();
    all.meta("general.architecture", "llama")
        .meta("u8", 7u8)
        .meta("i8", -7i8)
        .meta("u16", 700u16)
        .meta("i16", -700i16)
        .meta("u32", 70_000u32)
        .meta("i32", -70_000i32)
        .meta("u64", u64::MAX)
        .meta("i64", i64::MIN)
        .meta("f32", 1.5f32)
        .meta("f64", -2.25f64)
        .meta("bool", true)
        .meta("string", "héllo")
        .meta("strings", vec!["a", "bc", "", "日本"])
        .meta("ints", vec![1i32, -2, 3])
        .meta("floats", vec![0.5f32, f32::NAN, f32::INFINITY])
        .meta("nested", MetaValue::Array(vec![vec![1u8, 2].into(), vec![3u8].into()]))
        .meta("empty", MetaValue::Array(Vec::new()));
    push("metadata", &all);

    let mut t = GgufBuilder::new();
    t.meta("general.architecture", "tiny").tensor_f32("a", &[4, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).tensor(
        "b",
        &[32],
        GgmlType::Q8_0,
        vec![1u8; 34],
    );
    push("tensors", &t);
    for (align, name) in [(1u32, "align1"), (64, "align64")] {
        let mut t = GgufBuilder::new();
        t.alignment(align).tensor_f32("x", &[3], &[1.0, 2.0, 3.0]).tensor("y", &[2, 2], GgmlType::F16, vec![0u8; 8]);
        push(name, &t);
    }
    let mut many = GgufBuilder::new();
    many.version(2);
    for (i, &ty) in GgmlType::ALL.iter().enumerate() {
        let n = ty.block_size();
        let bytes = ty.bytes_for(n).expect("one block") as usize;
        if bytes <= 512 {
            many.tensor(format!("t{i}"), &[n], ty, vec![i as u8; bytes]);
        }
    }
    push("all-types", &many);

    let tokens: Vec<String> = (b'!'..=b'~').map(|b| (b as char).to_string()).collect();
    let mut tok = GgufBuilder::new();
    tok.meta("tokenizer.ggml.model", "gpt2")
        .meta("tokenizer.ggml.pre", "gpt-2")
        .meta("tokenizer.ggml.tokens", tokens)
        .meta("tokenizer.ggml.token_type", vec![1i32; 94])
        .meta("tokenizer.ggml.merges", vec!["a b", "c d"])
        .meta("tokenizer.ggml.bos_token_id", 1u32);
    push("tokenizer", &tok);
    out
}

const TEXTS: &[&str] = &[
    "the thing is, they're testing 123 and 4567!",
    "Hello, world!\n\nThis  has   runs\tof white space.\r\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "café 中文 日本語 한국어 emoji 🦀🙂 ß ﬁ",
    "fn main() { println!(\"{}\", 1 + 2); } // code's",
    "<tool><|endoftext|><unk><|im",
    "   leading and trailing   ",
    "ÀÉÎÕÜ àéîõü ǅ ǈ Ω ω ∑ ∞ \u{200b}\u{feff}",
];

const TEMPLATES: &[&str] = &[
    // ChatML (SmolLM2, Qwen).
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    // Llama 3 style.
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    // Alternation checks, namespace, raise_exception, Python string methods.
    "{%- set ns = namespace(system='') -%}\n{%- for m in messages -%}\n  {%- if m.role == 'system' -%}{%- set ns.system = m.content.strip() -%}\n  {%- elif (m.role == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('Conversation roles must alternate user/assistant') }}\n  {%- elif m.role == 'user' -%}{{ bos_token }}[INST] {{ (ns.system + '\n\n' if ns.system else '') + m.content }} [/INST]\n  {%- else -%}{{ ' ' + m.content.replace('\\n', ' ') + eos_token }}\n  {%- endif -%}\n{%- endfor -%}",
    // Macros, tojson, dict literals, filters, slicing, loops with else.
    "{% macro render(m, depth=0) %}{{ m.role|upper }}{% if depth < 2 %}[{{ render(m, depth + 1) }}]{% endif %}: {{ m.content[:20]|tojson }}{% endmacro %}{% for m in messages|reverse %}{{ render(m) }}{{ '\n' if not loop.last }}{% else %}(no messages){% endfor %}{{ {'a': 1, 'b': [1, 2, 3]}|tojson }}{{ messages|length }}{{ 'x'.startswith('x') }}{{ messages|map(attribute='role')|join(',') }}",
];

fn main() {
    let mut n = 0;
    for (name, bytes) in gguf_seeds() {
        write("gguf_reader", &name, &bytes);
        n += 1;
    }
    for (i, text) in TEXTS.iter().enumerate() {
        let mut input = vec![i as u8 * 7];
        input.extend_from_slice(text.as_bytes());
        write("tokenizer_roundtrip", &i.to_string(), &input);
        n += 1;
    }
    let messages: &[(u8, &str)] = &[(0, "You are terse."), (1, "Hi!"), (2, "Hello."), (1, "What is Rust?")];
    for (i, template) in TEMPLATES.iter().enumerate() {
        for (j, msgs) in [messages, &messages[1..2]].into_iter().enumerate() {
            let mut input = vec![(i + j) as u8 & 3];
            input.extend_from_slice(template.as_bytes());
            for (role, content) in msgs {
                input.push(0xFF);
                input.push(*role);
                input.extend_from_slice(content.as_bytes());
            }
            write("chat_template", &format!("{i}-{j}"), &input);
            n += 1;
        }
    }
    println!("wrote {n} seed files under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
