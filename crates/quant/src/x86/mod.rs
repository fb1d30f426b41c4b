//! x86-64 kernels.
