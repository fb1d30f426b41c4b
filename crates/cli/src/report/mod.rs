//! `latent report`: regenerates REPORT.md with one SVG, PNG and CSV per figure, each figure
//! stating the commands, the machine (CPU, ISA, threads, read bandwidth and GEMM peak measured
//! in the same run) and the date it came from.
//!
//! Measurements run as `latent` subcommands (this binary, `--json`), the same commands a
//! reader can run by hand; the KV-size figure and the serving capacity come from the library
//! directly. Figures that need the model or the evaluation text say so when those are absent;
//! a figure whose measurement fails is written with the error and the command fails at the end.

mod figures;
pub mod plot;

use crate::model_path;
use anyhow::{bail, Context, Result};
use latent_kernels::Kernels;
use plot::{Figure, Panel};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Output directory: REPORT.md, and one .svg, .png and .csv per figure.
    #[arg(long, default_value = "docs/report")]
    pub out: PathBuf,
    /// Small sizes throughout (about two minutes on 2 cores): for CI, not for reading.
    #[arg(long)]
    pub quick: bool,
    /// GGUF model (llama architecture; default: $LATENT_MODEL, else the cached SmolLM2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Evaluation text (default: $LATENT_EVAL_TEXT, else ../shared/data/eval/rust-book-sample.txt).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Worker threads for every measurement (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Python with llama.cpp's bindings (default: $LATENT_LLAMA_PYTHON, else python3).
    #[arg(long)]
    pub llama_python: Option<PathBuf>,
    /// The reference script (default: $LATENT_LLAMA_REF, else ../shared/tools/llama-ref/llama_ref.py).
    #[arg(long)]
    pub llama_ref: Option<PathBuf>,
    /// Figures to make (comma-separated): kv, attention, conversion, window, generation,
    /// llama, or all.
    #[arg(long, default_value = "all")]
    pub only: String,
}

pub const FIGURES: [&str; 6] = ["kv", "attention", "conversion", "window", "generation", "llama"];

/// What the machine is, measured at the start of the run.
pub struct Machine {
    pub cpu: String,
    pub isa: &'static str,
    pub threads: usize,
    pub read_gbps: f64,
    pub gemm_gflops: f64,
    pub date: String,
}

impl Machine {
    fn measure(threads: usize) -> Result<Machine> {
        let pool = crate::util::thread_pool(threads)?;
        let lim = latent_kernels::machine::measure(&pool);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().into())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Ok(Machine {
            cpu,
            isa: Kernels::best().isa.name(),
            threads: lim.threads,
            read_gbps: lim.read_gbps,
            gemm_gflops: lim.gemm_gflops,
            date: utc_now(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {}, {} kernels, {} threads; read {:.1} GB/s, f32 GEMM {:.0} GFLOP/s (measured in this run); {}",
            self.cpu, self.isa, self.threads, self.read_gbps, self.gemm_gflops, self.date
        )
    }
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60)
}

/// Everything a figure needs to know about the run.
pub struct Ctx {
    pub exe: PathBuf,
    pub out: PathBuf,
    /// Scratch directory (the converted model), removed at the end.
    pub work: PathBuf,
    pub quick: bool,
    pub threads: usize,
    pub model: std::result::Result<PathBuf, String>,
    pub text: std::result::Result<PathBuf, String>,
    pub llama: std::result::Result<(PathBuf, PathBuf), String>,
    pub machine: Machine,
    /// The MLA conversion of the model, made once when a figure first needs it.
    converted: std::cell::RefCell<Option<std::result::Result<PathBuf, String>>>,
}

/// One figure's files and its section of REPORT.md.
pub struct Out {
    pub name: &'static str,
    pub title: String,
    pub commands: Vec<String>,
    pub csv_header: Vec<&'static str>,
    pub csv_rows: Vec<Vec<String>>,
    pub panels: Vec<Panel>,
    /// Markdown below the figure: what it shows, with numbers.
    pub summary: String,
    /// The measurement failed (the figure shows this; the command fails at the end).
    pub failed: Option<String>,
}

impl Out {
    pub fn new(name: &'static str, title: impl Into<String>, csv_header: Vec<&'static str>) -> Out {
        Out {
            name,
            title: title.into(),
            commands: Vec::new(),
            csv_header,
            csv_rows: Vec::new(),
            panels: Vec::new(),
            summary: String::new(),
            failed: None,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.csv_rows.push(cells);
    }
}

/// A quoted command line for the record (`latent …`).
fn shell_join(prog: &str, args: &[String]) -> String {
    let mut s = prog.to_string();
    for a in args {
        s.push(' ');
        if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./,=:+".contains(c)) && !a.is_empty() {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        }
    }
    s
}

impl Ctx {
    /// Runs `latent ARGS` (this binary), records the command in `out`, returns its stdout.
    pub fn latent(&self, out: &mut Out, args: &[String]) -> Result<String> {
        let mut args = args.to_vec();
        if !args.iter().any(|a| a == "--threads") && args.first().is_some_and(|a| a != "kv") {
            args.extend(["--threads".to_string(), self.threads.to_string()]);
        }
        self.run_recorded(out, &self.exe.clone(), "latent", &args)
    }

    /// Runs `prog ARGS`, recording it as `shown ARGS`.
    pub fn run_recorded(&self, out: &mut Out, prog: &Path, shown: &str, args: &[String]) -> Result<String> {
        let line = shell_join(shown, args);
        noteln!("  $ {line}");
        out.commands.push(line.clone());
        let o = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {}", prog.display()))?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().filter(|l| !l.trim().is_empty()).take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("`{line}` failed ({}): {}", o.status, tail.join(" / "));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The model, or why there is none.
    pub fn need_model(&self) -> std::result::Result<&PathBuf, String> {
        self.model.as_ref().map_err(|e| e.clone())
    }

    pub fn need_text(&self) -> std::result::Result<&PathBuf, String> {
        self.text.as_ref().map_err(|e| e.clone())
    }

    /// `latent convert` of the model to MLA with half its KV elements, with the default method
    /// (the baseline recipe with `--quick`).
    pub fn converted(&self, out: &mut Out) -> Result<PathBuf> {
        if let Some(r) = self.converted.borrow().as_ref() {
            if let Ok(p) = r {
                out.commands.push(format!("(the MLA model from the conversion above: {})", p.display()));
            }
            return r.clone().map_err(anyhow::Error::msg);
        }
        let r = self.convert_now(out);
        *self.converted.borrow_mut() = Some(r.as_ref().map(|p| p.clone()).map_err(|e| format!("{e:#}")));
        r
    }

    fn convert_now(&self, out: &mut Out) -> Result<PathBuf> {
        let model = self.need_model().map_err(anyhow::Error::msg)?;
        let text = self.need_text().map_err(anyhow::Error::msg)?;
        let dst = self.work.join("mla-50pct.gguf");
        // Half the source's KV elements: P = the head dim (one mixed head keeps its RoPE),
        // R = the rest (SmolLM2: 3 KV heads × 64 × 2 = 384 → R = 128, P = 64).
        let src = latent_convert::Source::open(&model.display().to_string())?;
        let rope = src.cfg.head_dim;
        let rank = (src.kv_elems() / 2).checked_sub(rope).filter(|&r| r > 0).ok_or_else(|| {
            anyhow::anyhow!("{} keeps too few KV elements for a 50 % MLA conversion", model.display())
        })?;
        let mut args: Vec<String> = vec![
            "convert".into(),
            "--model".into(),
            model.display().to_string(),
            "--calib".into(),
            text.display().to_string(),
            "--kv-rank".into(),
            rank.to_string(),
            "--rope-dim".into(),
            rope.to_string(),
            "--out".into(),
            dst.display().to_string(),
            "--json".into(),
        ];
        if self.quick {
            // Speed and capacity do not depend on the fit: the quick run takes the fast one.
            args.extend(["--calib-tokens".into(), "512".into(), "--method".into(), "baseline".into()]);
        }
        self.latent(out, &args)?;
        Ok(dst)
    }
}

/// The evaluation text for the model figures, or why there is none.
fn find_text(explicit: &Option<PathBuf>) -> std::result::Result<PathBuf, String> {
    match crate::convert_cmd::eval_text_path(explicit) {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(format!("no evaluation text at {} (give --text or set LATENT_EVAL_TEXT)", p.display())),
        None => Err("no evaluation text (give --text or set LATENT_EVAL_TEXT)".into()),
    }
}

fn find_llama(a: &ReportArgs) -> std::result::Result<(PathBuf, PathBuf), String> {
    let py = a
        .llama_python
        .clone()
        .or_else(|| std::env::var_os("LATENT_LLAMA_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let script = a
        .llama_ref
        .clone()
        .or_else(|| std::env::var_os("LATENT_LLAMA_REF").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/tools/llama-ref/llama_ref.py"));
    if !script.is_file() {
        return Err(format!("the reference script {} is absent", script.display()));
    }
    let ok = Command::new(&py)
        .args(["-c", "import llama_cpp"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!(
            "llama.cpp's Python bindings are not installed for {} (run ../shared/tools/llama-ref/setup.sh and \
             pass its python with --llama-python or LATENT_LLAMA_PYTHON)",
            py.display()
        ));
    }
    Ok((py, script))
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
            cur.push_str("    ");
        }
        if !cur.is_empty() && !cur.ends_with("    ") {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.trim().is_empty() {
        lines.push(cur);
    }
    lines
}

/// The commands of a figure for its footer: the one command, or each program with its count
/// (the full lines are in REPORT.md).
fn command_summary(commands: &[String]) -> String {
    match commands {
        [] => "(computed in-process)".into(),
        [one] => one.clone(),
        many => {
            let mut kinds: Vec<(String, usize)> = Vec::new();
            for c in many.iter().filter(|c| !c.starts_with('(')) {
                let words: Vec<&str> = c.split(' ').collect();
                let n = if words.get(1) == Some(&"bench") { 3 } else { 2 };
                let key = words[..n.min(words.len())].join(" ");
                match kinds.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, count)) => *count += 1,
                    None => kinds.push((key, 1)),
                }
            }
            let list: Vec<String> =
                kinds.iter().map(|(k, n)| if *n > 1 { format!("{k} ×{n}") } else { k.clone() }).collect();
            format!("{} (every command line is in REPORT.md)", list.join(", "))
        }
    }
}

fn write_figure(cx: &Ctx, f: &Out, command: &str) -> Result<()> {
    let stem = cx.out.join(f.name);
    let mut csv = f.csv_header.join(",");
    csv.push('\n');
    for r in &f.csv_rows {
        csv.push_str(&r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        csv.push('\n');
    }
    let csv_path = stem.with_extension("csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;
    let width = 92 * f.panels.len().max(1);
    let mut footer = Vec::new();
    let cmds = command_summary(&f.commands);
    footer.extend(wrap(&format!("{command} → {}.csv; ran: {cmds}", f.name), width));
    footer.extend(wrap(&cx.machine.line(), width));
    let mut panels = f.panels.clone();
    if let Some(err) = &f.failed {
        if panels.is_empty() {
            panels.push(Panel { title: f.title.clone(), ..Default::default() });
        }
        let msg = wrap(&format!("measurement failed: {err}"), 70).join("\n");
        panels[0].note = Some(msg);
    }
    Figure { panels, footer }.save(&stem)
}

pub fn run(a: ReportArgs) -> Result<()> {
    let t0 = Instant::now();
    let threads = crate::util::check_threads(a.threads)?;
    let wanted: Vec<&str> = if a.only == "all" {
        FIGURES.to_vec()
    } else {
        let w: Vec<&str> = a.only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        for f in &w {
            if !FIGURES.contains(f) {
                bail!("unknown figure {f:?} in --only (choose from {}, or all)", FIGURES.join(", "));
            }
        }
        w
    };
    plot::init_fonts()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let exe = std::env::current_exe().context("finding the latent binary")?;
    let work = std::env::temp_dir().join(format!("latent-report-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let model = match (&a.model, std::env::var_os("LATENT_MODEL")) {
        (Some(_), _) | (None, Some(_)) => model_path::resolve(a.model.as_deref()).map_err(|e| format!("{e:#}")),
        // Without --model or $LATENT_MODEL: the cached default, never a download from here.
        (None, None) => model_path::cache_dir()
            .map(|d| d.join(model_path::DEFAULT_FILE))
            .map_err(|e| format!("{e:#}"))
            .and_then(|p| {
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!(
                        "no model (give --model, set LATENT_MODEL, or run `latent pull`; looked at {})",
                        p.display()
                    ))
                }
            }),
    };
    let resolved_threads = if threads == 0 { crate::util::available_cores() } else { threads };
    noteln!("latent report: measuring the machine ({resolved_threads} threads)…");
    let machine = Machine::measure(resolved_threads)?;
    noteln!("{}", machine.line());
    let cx = Ctx {
        exe,
        out: a.out.clone(),
        work: work.clone(),
        quick: a.quick,
        threads: resolved_threads,
        model,
        text: find_text(&a.text),
        llama: if wanted.contains(&"llama") { find_llama(&a) } else { Err("not requested".into()) },
        machine,
        converted: std::cell::RefCell::new(None),
    };
    let command = format!(
        "latent report{}{}",
        if a.quick { " --quick" } else { "" },
        if a.only == "all" { String::new() } else { format!(" --only {}", a.only) }
    );
    let mut outs = Vec::new();
    for name in &wanted {
        let t = Instant::now();
        noteln!("latent report: figure {name}…");
        let f = figures::make(&cx, name);
        write_figure(&cx, &f, &command)?;
        let secs = t.elapsed().as_secs_f64();
        let sec_path = a.out.join(format!("{}.md", f.name));
        std::fs::write(&sec_path, section(&cx, &f, &command, secs))
            .with_context(|| format!("writing {}", sec_path.display()))?;
        noteln!("latent report: {name} done in {secs:.1} s");
        outs.push(f);
    }
    let _ = std::fs::remove_dir_all(&work);
    let secs = t0.elapsed().as_secs_f64();
    let md = assemble(&cx, &a.out, &command)?;
    let md_path = a.out.join("REPORT.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    outln!("wrote {} and {} figures in {:.0} s", md_path.display(), outs.len(), secs);
    let failed: Vec<String> =
        outs.iter().filter_map(|f| f.failed.as_ref().map(|e| format!("{}: {e}", f.name))).collect();
    if !failed.is_empty() {
        bail!("{} figure(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// File stem of each figure key, in report order.
pub const STEMS: [(&str, &str); 6] = [
    ("kv", "kv_cache"),
    ("attention", "attention"),
    ("conversion", "conversion"),
    ("window", "window"),
    ("generation", "generation"),
    ("llama", "llama_cpp"),
];

/// One figure's section of REPORT.md (kept beside it as `{stem}.md`, so a figure remade with
/// `--only` replaces its own section and the others stay): heading, image, the run that made
/// it, summary, data and commands.
fn section(cx: &Ctx, f: &Out, command: &str, secs: f64) -> String {
    let mut md = format!("## {}\n\n![{}]({}.png)\n\n", f.title, f.title, f.name);
    md.push_str(&format!("Made by `{command}` in {secs:.0} s; {}.\n\n", cx.machine.line()));
    if let Some(e) = &f.failed {
        md.push_str(&format!("**The measurement failed:** {e}\n\n"));
    }
    if !f.summary.is_empty() {
        md.push_str(f.summary.trim_end());
        md.push_str("\n\n");
    }
    md.push_str(&format!("Data: [{0}.csv]({0}.csv) · figure: [{0}.svg]({0}.svg)\n\n", f.name));
    if !f.commands.is_empty() {
        md.push_str("Commands:\n\n```\n");
        for c in &f.commands {
            md.push_str(c);
            md.push('\n');
        }
        md.push_str("```\n\n");
    }
    md
}

/// REPORT.md: a header, then every section present in `dir` in report order, numbered.
fn assemble(cx: &Ctx, dir: &Path, command: &str) -> Result<String> {
    let mut md = String::from("# latent report\n\n");
    md.push_str(&format!(
        "Regenerate with `latent report` (all figures, about 25 minutes on 2 cores) or `latent report --only \
         NAME[,NAME]` (one section: {}); last run: `{command}`, {}. Every figure has its data beside it as CSV, \
         the commands that measured it, and the machine line of its own run in its footer and section.{}\n\n",
        FIGURES.join(", "),
        cx.machine.line(),
        if cx.quick { " **Quick run: small sizes for CI; the numbers are not for reading.**" } else { "" }
    ));
    let mut n = 0;
    for (_, stem) in STEMS {
        let p = dir.join(format!("{stem}.md"));
        if let Ok(sec) = std::fs::read_to_string(&p) {
            n += 1;
            let body = sec.strip_prefix("## ").unwrap_or(&sec);
            md.push_str(&format!("## {n}. {}", body.trim_end()));
            md.push_str("\n\n");
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_where_needed() {
        let a = vec!["bench".to_string(), "--out".into(), "a b".into(), "it's".into(), "1,2".into()];
        assert_eq!(shell_join("latent", &a), "latent bench --out 'a b' 'it'\\''s' 1,2");
    }

    #[test]
    fn footers_count_the_commands() {
        assert_eq!(command_summary(&[]), "(computed in-process)");
        assert_eq!(command_summary(&["latent kv --json".into()]), "latent kv --json");
        let many = vec![
            "latent perplexity --window 8".to_string(),
            "latent perplexity --window 16".into(),
            "latent bench generate --model x".into(),
            "(a note)".into(),
        ];
        assert_eq!(
            command_summary(&many),
            "latent perplexity ×2, latent bench generate (every command line is in REPORT.md)"
        );
    }

    #[test]
    fn csv_cells_escape_commas_and_quotes() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"x\""), "\"say \"\"x\"\"\"");
    }

    #[test]
    fn wrap_keeps_every_word_and_the_width() {
        let t = "one two three four five six seven eight nine ten";
        let lines = wrap(t, 14);
        assert!(lines.iter().all(|l| l.chars().count() <= 18), "{lines:?}");
        let words: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(words.join(" "), t);
    }

    #[test]
    fn dates_are_civil() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-12-05 16:00 UTC".len(), "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
