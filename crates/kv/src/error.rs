use std::fmt;
use thiserror::Error;

/// A sequence's handle. Ids are never reused, so a freed id stays unknown forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub(crate) u64);

impl SeqId {
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq#{}", self.0)
    }
}

/// Errors of the block pool. An operation that fails leaves the pool unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KvError {
    /// Not enough free (or evictable cached) blocks; a scheduler may free, preempt or wait.
    #[error("out of blocks: {needed} needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
    /// The sequence would exceed its token limit.
    #[error("{seq} full: {requested} tokens requested, limit {limit}")]
    SequenceFull { seq: SeqId, limit: usize, requested: usize },
    /// Never created, or already freed (use after free, double free).
    #[error("unknown sequence {0} (never created or already freed)")]
    UnknownSequence(SeqId),
    /// A position (or a truncation length) past the sequence's reserved tokens.
    #[error("{seq}: position {pos} out of range (length {len})")]
    PositionOutOfRange { seq: SeqId, pos: usize, len: usize },
    /// The position lies in a block released by a sliding window.
    #[error("{seq}: position {pos} was released from the cache (outside the window)")]
    Released { seq: SeqId, pos: usize },
    #[error("layer {layer} out of range ({layers} layers)")]
    LayerOutOfRange { layer: usize, layers: usize },
    /// A written row set of the wrong size.
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
    /// A K/V write on a latent cache or the other way round.
    #[error("{op} needs a {needs} cache, this pool holds {has}")]
    WrongLayout { op: &'static str, needs: &'static str, has: &'static str },
    /// The memory budget does not hold a single block.
    #[error("budget of {budget} bytes holds no block of {block_bytes} bytes")]
    Budget { budget: usize, block_bytes: usize },
    /// The pool's memory could not be allocated.
    #[error("cannot allocate {bytes} bytes for the pool")]
    Alloc { bytes: usize },
    #[error("invalid configuration: {0}")]
    Config(String),
}
