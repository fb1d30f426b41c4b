//! latent-attention
