//! Prefix caching keys: a full block is named by a hash of its token ids chained with the
//! previous block's hash, so equal hashes mean equal prefixes up to and including the block.
//! The pool also keeps each published block's parent hash and token ids and compares them
//! on a hit, so a 64-bit collision can never hand out wrong K/V.

/// Parent hash of a sequence's first block.
pub const ROOT_HASH: u64 = 0;

/// SplitMix64's finaliser: a fast, well-mixed 64 → 64 bit map.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a block holding `tokens` whose previous block hashed to `parent`
/// ([`ROOT_HASH`] for the first block). Deterministic across runs and machines.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = mix(parent ^ 0x6C61_7465_6E74_6B76);
    for &t in tokens {
        h = mix(h ^ t as u64);
    }
    mix(h ^ (tokens.len() as u64).rotate_left(32))
}

/// What a published block holds.
#[derive(Clone, Debug)]
pub(crate) struct BlockKey {
    pub hash: u64,
    pub parent: u64,
    pub tokens: Box<[u32]>, // [B]
}

impl BlockKey {
    pub fn matches(&self, parent: u64, tokens: &[u32]) -> bool {
        self.parent == parent && *self.tokens == *tokens
    }
}
