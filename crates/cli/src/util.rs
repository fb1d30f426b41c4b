//! Small helpers shared by the subcommands.

/// A rayon pool with `threads` threads (0 = all available cores).
pub fn thread_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    let n = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    Ok(rayon::ThreadPoolBuilder::new().num_threads(n).build()?)
}

/// Human-readable bytes (binary units).
pub fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// Parses "1k,4k,32768" style lists.
pub fn parse_sizes(s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let p = p.trim().to_ascii_lowercase();
            let (num, mult) = if let Some(n) = p.strip_suffix('k') { (n.to_string(), 1024) } else { (p.clone(), 1) };
            num.parse::<usize>().map(|n| n * mult).map_err(|_| anyhow::anyhow!("not a size: {p:?}"))
        })
        .collect()
}
