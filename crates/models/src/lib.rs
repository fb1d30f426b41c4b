//! latent-models
