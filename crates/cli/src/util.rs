//! Small helpers shared by the subcommands: thread and memory bounds, size lists, and
//! output that survives a closed pipe.

use std::io::Write;

/// `print!` for the CLI: writes and flushes stdout; a closed pipe (`latent … | head`) ends
/// the process quietly with status 141 (as 128 + SIGPIPE, like other Unix tools), any other
/// write error with a one-line `error:`. Never panics, unlike `print!`.
macro_rules! out {
    ($($t:tt)*) => { $crate::util::write_stdout(format_args!($($t)*)) };
}

/// `println!` for the CLI (see [`out!`]).
macro_rules! outln {
    () => { $crate::util::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::util::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprint!` that ignores a closed or failing stderr instead of panicking (progress and
/// notes only; errors go through [`report_error`]).
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut e = std::io::stderr().lock();
        let _ = e.write_fmt(format_args!($($t)*));
        let _ = e.flush();
    }};
}

/// `eprintln!` counterpart of [`note!`].
macro_rules! noteln {
    () => { note!("\n") };
    ($($t:tt)*) => { note!("{}\n", format_args!($($t)*)) };
}

/// Status of a process whose stdout reader went away (128 + SIGPIPE).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes `args` to stdout and flushes (see [`out!`]).
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        report_error(&format!("writing to stdout: {e}"));
        std::process::exit(1);
    }
}

/// Prints `error: {msg}` as one line on stderr (best effort: a closed stderr is ignored).
pub fn report_error(msg: &str) {
    let one_line = msg.replace(['\n', '\r'], " ");
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "error: {one_line}");
    let _ = e.flush();
}

/// The message of an error chain, joined with ": ", without the repeats of errors that print
/// their source and also return it (`not a regular file: not a regular file`, `(os error 2):
/// No such file or directory (os error 2)`), nor a bare name that the next part repeats
/// (`/tmp: cannot read /tmp`).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut joined = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        let m = m.trim();
        if m.is_empty() || joined.contains(m) {
            continue;
        }
        if !joined.is_empty() {
            joined.push_str(": ");
        }
        joined.push_str(m);
    }
    // Split into ": "-separated segments; drop a segment that is one bare word (no spaces)
    // repeated inside the segment right after it, and any segment equal to an earlier one.
    let segs: Vec<&str> = joined.split(": ").collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let bare_repeat = !s.contains(' ') && s.len() > 1 && segs.get(i + 1).is_some_and(|n| n.contains(s));
        if bare_repeat || kept.contains(s) {
            continue;
        }
        kept.push(s);
    }
    kept.join(": ")
}

/// Bytes of memory this machine has available now (`MemAvailable`, else `MemTotal`, from
/// /proc/meminfo); `None` where that is unknown.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .and_then(|kb| kb.checked_mul(1024))
    };
    field("MemAvailable:").or_else(|| field("MemTotal:"))
}

/// Refuses to allocate `bytes` (`None`: the size overflowed) for `what` when that is more
/// than the memory available, with a message that names both.
pub fn check_memory(what: &str, bytes: Option<u64>) -> anyhow::Result<()> {
    check_memory_against(what, bytes, available_memory())
}

fn check_memory_against(what: &str, bytes: Option<u64>, avail: Option<u64>) -> anyhow::Result<()> {
    match (bytes, avail) {
        (None, _) => anyhow::bail!("{what} would need more bytes than this machine can address"),
        (Some(b), Some(a)) if b > a => anyhow::bail!(
            "{what} would need {} but only {} of memory is available",
            human_bytes(b as f64),
            human_bytes(a as f64)
        ),
        _ => Ok(()),
    }
}

/// The product of `factors` in u64, `None` on overflow.
pub fn checked_product(factors: &[usize]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(u64::try_from(f).ok()?))
}

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

/// Parses "1k,4k,32768" style lists for the flag `flag`; every size must be ≥ 1 and fit a
/// usize (checked, not wrapped).
pub fn parse_sizes(flag: &str, s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let p = p.trim().to_ascii_lowercase();
            let (num, mult) = if let Some(n) = p.strip_suffix('k') { (n, 1024) } else { (p.as_str(), 1) };
            let n = num.parse::<usize>().map_err(|_| anyhow::anyhow!("{flag}: not a size: {p:?}"))?;
            match n.checked_mul(mult) {
                Some(0) => anyhow::bail!("{flag}: sizes must be ≥ 1, got {p:?}"),
                Some(v) => Ok(v),
                None => anyhow::bail!("{flag}: {p:?} is too large"),
            }
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

    #[test]
    fn sizes_are_checked() {
        assert_eq!(parse_sizes("--contexts", "1k, 4K,32768,").unwrap(), vec![1024, 4096, 32768]);
        assert_eq!(parse_sizes("--prefill", "").unwrap(), Vec::<usize>::new());
        let e = parse_sizes("--contexts", "0").unwrap_err().to_string();
        assert_eq!(e, "--contexts: sizes must be ≥ 1, got \"0\"");
        let e = parse_sizes("--contexts", "18014398509481984k").unwrap_err().to_string();
        assert_eq!(e, "--contexts: \"18014398509481984k\" is too large");
        assert!(parse_sizes("--contexts", "1e9").is_err());
    }

    #[test]
    fn memory_bounds() {
        assert!(check_memory_against("x", Some(10), Some(10)).is_ok());
        assert!(check_memory_against("x", Some(10), None).is_ok());
        let e = check_memory_against("the cache", Some(2 << 30), Some(1 << 30)).unwrap_err().to_string();
        assert_eq!(e, "the cache would need 2.00 GiB but only 1.00 GiB of memory is available");
        assert!(check_memory_against("x", None, None).is_err());
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[usize::MAX, 2]), None);
    }

    #[test]
    fn error_chains_do_not_repeat() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let leaf = E("not a regular file", None);
        let e = anyhow::Error::new(E("/tmp: cannot read /tmp: not a regular file", Some(Box::new(leaf))))
            .context("loading /tmp");
        assert_eq!(error_chain(&e), "loading /tmp: cannot read /tmp: not a regular file");
        let leaf = E("No such file or directory (os error 2)", None);
        let e = anyhow::Error::new(E("cannot read /x: No such file or directory (os error 2)", Some(Box::new(leaf))));
        assert_eq!(error_chain(&e), "cannot read /x: No such file or directory (os error 2)");
        let e = anyhow::anyhow!("bad magic at offset 0: expected \"GGUF\"").context("reading f.gguf");
        assert_eq!(error_chain(&e), "reading f.gguf: bad magic at offset 0: expected \"GGUF\"");
    }
}
