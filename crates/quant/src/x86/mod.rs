//! x86-64 kernels. Every function with a `#[target_feature]` here is reachable only
//! through a dispatch table that [`crate::dispatch`] hands out after runtime detection.

// Register-tile loops index several parallel arrays (accumulators, rows) by the same index.
#![allow(clippy::needless_range_loop)]

pub(crate) mod avx2;
pub(crate) mod avx512;
