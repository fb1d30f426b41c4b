//! x86-64 kernels. Every function with a `#[target_feature]` here is reachable only
//! through a dispatch table that [`crate::dispatch`] hands out after runtime detection.

pub(crate) mod avx2;
pub(crate) mod avx512;
