//! latent-kv
