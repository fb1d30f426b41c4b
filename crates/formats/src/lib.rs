//! latent-formats
