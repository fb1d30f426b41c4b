//! A pool's capacity costs address space, not memory: pages are committed as blocks are
//! first written (in every build: poisoning fills a block when it is first handed out).

use latent_attention::{KvDtype, RowFormat};
use latent_kv::{BlockPool, CacheLayout, DEFAULT_BLOCK_SIZE};

#[cfg(target_os = "linux")]
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("resident pages");
    pages * 4096
}

#[cfg(target_os = "linux")]
#[test]
fn capacity_is_committed_on_first_use() {
    let layout = CacheLayout::gqa(30, 3, 64, RowFormat::plain(KvDtype::F32));
    let before = rss_bytes();
    let mut pool = BlockPool::with_budget(layout, DEFAULT_BLOCK_SIZE, 2 << 30).unwrap();
    let after = rss_bytes();
    assert!(pool.capacity_bytes() > (1 << 30));
    assert!(after < before + (64 << 20), "creating a 2 GiB pool took {} MiB", (after - before) >> 20);
    let seq = pool.create();
    pool.append(seq, 3 * DEFAULT_BLOCK_SIZE).unwrap();
    for pos in 0..3 * DEFAULT_BLOCK_SIZE {
        for layer in 0..30 {
            pool.write_kv(seq, layer, pos, &[0.5; 192], &[0.25; 192]).unwrap();
        }
    }
    let used = rss_bytes();
    assert!(used < before + (64 << 20), "three blocks took {} MiB", (used - before) >> 20);
    assert_eq!(pool.read_kv(seq, 29, 100).unwrap().0[0], 0.5);
}
