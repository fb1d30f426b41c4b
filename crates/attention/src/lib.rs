//! The attention family — MHA, GQA, MQA, sparse (sliding window + sinks), low-rank K/V and
//! DeepSeek's Multi-Head Latent Attention — with a plain f64 reference twin and fast tiled
//! CPU kernels that read every cache through a (paged) block-table view.
//!
//! Dimension legend (used in every shape comment of this crate): T query tokens, S KV length,
//! H query heads, Hkv KV heads, G = H/Hkv, Dk key dim, Dv value dim, R kv_lora_rank,
//! P rope dim, N nope dim, V value head dim (MLA), C hidden size.

mod error;
pub mod flash;
pub mod gqa;
pub mod kv_view;
pub mod layer;
pub mod reference;
pub mod testing;

pub use error::AttnError;
pub use flash::{
    attend, attend_with, decode, prefill, AttnParams, AttnShape, KvSplit, MaskSpec, Plan, SeqSpec, Workers,
};
pub use kv_view::{encode_rows, round_trip_rows, DenseKv, KvDtype, KvPlane, KvSeq, RowFormat, ValueSource, EVICTED};
pub mod linear;
pub mod lowrank;
pub mod mla;
pub mod rope;

pub use gqa::GqaLayer;
pub use kv_view::DenseLatent;
pub use layer::{BatchCache, CacheAccess, Dense, Local, Matrix, MatrixDims, Positions, Runner, Single, StreamWindow};
pub use linear::{HeadMats, HeadWeights};
pub use lowrank::LowRankKv;
pub use mla::{Mla, MlaConfig, MlaPath, MlaWeights, QProj};
pub use rope::{Rope, RopeAngles, RopeStyle, Yarn};
pub mod accounting;
