//! latent-kernels
