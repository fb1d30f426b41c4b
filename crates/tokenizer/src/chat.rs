//! Chat templates (`tokenizer.chat_template`), rendered with minijinja.

use minijinja::{context, Environment, Error, ErrorKind, Value};

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

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Renders a Jinja chat template the way Hugging Face's `apply_chat_template` does:
/// `trim_blocks` and `lstrip_blocks` on, Python string methods available, and the variables
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`.
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
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
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
