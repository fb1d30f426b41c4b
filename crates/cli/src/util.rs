//! Small helpers shared by the subcommands.

/// Cores this process may use (1 when unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `--threads` more than this many times the available cores is refused (oversubscription
/// only slows a spin-then-park team down, and a huge count would exhaust the OS first).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// Checks a `--threads` value: 0 (all cores) or at most [`MAX_THREADS_PER_CORE`] × the cores.
pub fn check_threads(threads: usize) -> anyhow::Result<usize> {
    check_threads_for(threads, available_cores())
}

fn check_threads_for(threads: usize, cores: usize) -> anyhow::Result<usize> {
    let max = cores.saturating_mul(MAX_THREADS_PER_CORE);
    if threads > max {
        anyhow::bail!(
            "--threads {threads} is more than {MAX_THREADS_PER_CORE}× the {cores} available cores (at most {max}; 0 = all cores)"
        );
    }
    Ok(threads)
}

/// A rayon pool with `threads` threads (0 = all available cores).
pub fn thread_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    let threads = check_threads(threads)?;
    let n = if threads == 0 { available_cores() } else { threads };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_capped_at_four_per_core() {
        assert_eq!(check_threads_for(0, 2).unwrap(), 0);
        assert_eq!(check_threads_for(8, 2).unwrap(), 8);
        let e = check_threads_for(9, 2).unwrap_err().to_string();
        assert_eq!(e, "--threads 9 is more than 4× the 2 available cores (at most 8; 0 = all cores)");
        assert!(check_threads_for(usize::MAX, usize::MAX).is_ok(), "no overflow in the bound");
        assert!(check_threads_for(usize::MAX, 2).is_err());
    }
}
