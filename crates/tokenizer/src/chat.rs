//! Chat templates (`tokenizer.chat_template`), rendered with minijinja.

use minijinja::value::{Kwargs, Rest, ValueOrKwargs};
use minijinja::{context, Environment, Error, ErrorKind, State, Value};

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// Work budget of one render, in minijinja fuel (about one unit per instruction executed and
/// per 64 bytes of data created or processed; see minijinja's `Environment::set_fuel`): a
/// fixed part plus a share per message and per byte of message content. Real templates stay
/// far below it (SmolLM2's uses about 32 units per message), while a hostile template (an
/// endless loop, a string doubled in a loop) fails with an error after bounded time and memory
/// (the fixed part: about 20 ms of work in a release build, or 16 MiB of data).
pub const CHAT_FUEL_BASE: u64 = 1 << 18;
/// Fuel added per message.
pub const CHAT_FUEL_PER_MESSAGE: u64 = 4096;
/// Fuel added per byte of message content (enough to copy each byte ~64 times).
pub const CHAT_FUEL_PER_BYTE: u64 = 1;
/// Deepest nesting of loops, conditionals and calls (minijinja counts a macro call as about
/// six levels): ample for chat templates, and well within a 2 MiB thread stack.
pub const CHAT_RECURSION_LIMIT: usize = 200;

/// Largest width or precision accepted in a format string (`|format`, `str.format`).
/// minijinja allocates padding before charging fuel for it (`'{:>99999999999999}'.format(1)`
/// aborted the process on the failed allocation), and Rust's float formatting panics for an
/// exponent-form precision of 65535 and more (`'%.70000e'|format(1.5)`).
pub const CHAT_MAX_FORMAT_WIDTH: u64 = 1024;
/// Largest `indent` of `tojson` (indentation was written before fuel was charged:
/// `tojson(indent=99999999999999)` took 90 s and 24 GB).
pub const CHAT_MAX_JSON_INDENT: u64 = 32;

fn fuel_for(messages: &[ChatMessage]) -> u64 {
    messages.iter().fold(CHAT_FUEL_BASE, |fuel, m| {
        let bytes = (m.role.len() as u64).saturating_add(m.content.len() as u64);
        fuel.saturating_add(CHAT_FUEL_PER_MESSAGE).saturating_add(bytes.saturating_mul(CHAT_FUEL_PER_BYTE))
    })
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn too_large(what: &str, n: u64, limit: u64) -> Error {
    let n = if n == u64::MAX { "(out of range)".to_string() } else { n.to_string() };
    Error::new(ErrorKind::InvalidOperation, format!("{what} {n} is above the limit of {limit}"))
}

/// The decimal number at the start of `b` (saturating) and its length in bytes.
fn leading_number(b: &[u8]) -> (u64, usize) {
    let len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let n = b[..len].iter().fold(0u64, |n, &c| n.saturating_mul(10).saturating_add((c - b'0') as u64));
    (n, len)
}

/// Checks the widths and precisions of a printf-style format string
/// (`%[(key)][flags][width][.precision]type`).
fn check_printf_format(fmt: &str) -> Result<(), Error> {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        i += 1;
        if b.get(i) == Some(&b'%') {
            i += 1;
            continue;
        }
        if b.get(i) == Some(&b'(') {
            i += b[i..].iter().position(|&c| c == b')').map_or(b.len() - i, |p| p + 1);
        }
        while i < b.len() && b"#0- +".contains(&b[i]) {
            i += 1;
        }
        let (width, len) = leading_number(&b[i..]);
        if width > CHAT_MAX_FORMAT_WIDTH {
            return Err(too_large("format width", width, CHAT_MAX_FORMAT_WIDTH));
        }
        i += len;
        if b.get(i) == Some(&b'.') {
            let (precision, len) = leading_number(&b[i + 1..]);
            if precision > CHAT_MAX_FORMAT_WIDTH {
                return Err(too_large("format precision", precision, CHAT_MAX_FORMAT_WIDTH));
            }
            i += 1 + len;
        }
    }
    Ok(())
}

/// Checks the widths and precisions (every number in a format spec) of a `str.format` string
/// (`{[name][.attr|[key]]*[:spec]}`).
fn check_str_format(fmt: &str) -> Result<(), Error> {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'{') {
            i += 2;
            continue;
        }
        // The field name, with `[key]` parts that may contain anything.
        i += 1;
        while i < b.len() && b[i] != b':' && b[i] != b'}' {
            if b[i] == b'[' {
                i += b[i..].iter().position(|&c| c == b']').unwrap_or(b.len() - i);
            }
            i += 1;
        }
        if b.get(i) != Some(&b':') {
            continue;
        }
        while i < b.len() && b[i] != b'}' {
            let (n, len) = leading_number(&b[i..]);
            if n > CHAT_MAX_FORMAT_WIDTH {
                return Err(too_large("format width or precision", n, CHAT_MAX_FORMAT_WIDTH));
            }
            i += len.max(1);
        }
    }
    Ok(())
}

/// The `format` filter, with [`CHAT_MAX_FORMAT_WIDTH`].
fn format_filter(state: &mut State, fmt: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    if let Some(s) = fmt.as_str() {
        check_printf_format(s)?;
    }
    minijinja::filters::format(state, fmt, args)
}

/// The `tojson` filter, with [`CHAT_MAX_JSON_INDENT`], charging fuel for its output as the
/// built-in one does.
fn tojson_filter(state: &State, value: &Value, indent: Option<Value>, args: Kwargs) -> Result<Value, Error> {
    let requested = match &indent {
        Some(v) => Some(v.clone()),
        None => args.peek::<Option<Value>>("indent")?,
    };
    if let Some(v) = requested.filter(|v| v.is_number()) {
        let n = i128::try_from(v).map(|n| u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(u64::MAX);
        if n > CHAT_MAX_JSON_INDENT {
            return Err(too_large("tojson indent", n, CHAT_MAX_JSON_INDENT));
        }
    }
    let out = minijinja::filters::tojson(value, indent, args)?;
    state.consume_fuel(out.as_str().map_or(0, |s| s.len() as u64 / 4))?;
    Ok(out)
}

/// Python string and container methods, with `str.format` under [`CHAT_MAX_FORMAT_WIDTH`].
fn unknown_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if method == "format" {
        if let Some(s) = value.as_str() {
            check_str_format(s)?;
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Renders a Jinja chat template the way Hugging Face's `apply_chat_template` does:
/// `trim_blocks` and `lstrip_blocks` on, Python string methods available, and the variables
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`.
///
/// Templates come from model files and may be hostile: rendering is bounded in work and memory
/// ([`CHAT_FUEL_BASE`] and the per-message shares), in nesting depth
/// ([`CHAT_RECURSION_LIMIT`]) and in format widths ([`CHAT_MAX_FORMAT_WIDTH`],
/// [`CHAT_MAX_JSON_INDENT`]); past a bound it fails with [`TokenizerError::ChatTemplate`].
/// `pprint` is not available. Known gap (minijinja 3.1): printing or serializing a value
/// nested thousands deep, or built by repeatedly doubling a shared list
/// (`{% set ns.x = [ns.x, ns.x] %}` in a loop), is not bounded by the fuel; see
/// `docs/FUZZING.md`.
pub fn render_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(fuel_for(messages)));
    env.set_recursion_limit(CHAT_RECURSION_LIMIT);
    env.set_unknown_method_callback(unknown_method);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("format", format_filter);
    env.add_filter("tojson", tojson_filter);
    // Quadratic in the nesting depth of its argument, and of no use to a chat template.
    env.remove_filter("pprint");
    env.add_template("chat", template).map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
    let msgs: Vec<Value> =
        messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
    let tmpl = env.get_template("chat").map_err(|e| TokenizerError::ChatTemplate(describe(&e)))?;
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TokenizerError::ChatTemplate(describe(&e)))
}

fn describe(e: &Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.to_string(),
    }
}

impl Tokenizer {
    /// Renders the model's chat template for `messages`; with `add_generation_prompt`, the
    /// text ends with the opening of an assistant turn. Encode the result with
    /// `parse_special = true`.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or(TokenizerError::NoChatTemplate)?;
        let text_of = |id: Option<u32>| id.and_then(|id| self.token_text(id)).unwrap_or("");
        render_template(template, messages, add_generation_prompt, text_of(self.bos), text_of(self.eos))
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}
