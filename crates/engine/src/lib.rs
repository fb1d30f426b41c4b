//! latent-engine
