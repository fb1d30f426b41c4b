//! Rotary position embeddings as llama.cpp applies them, including YaRN scaling.
//!
//! Two layouts: [`RopeStyle::Interleaved`] rotates pairs (2i, 2i+1) (llama.cpp's "normal"
//! mode, used for `llama` and `deepseek2` GGUFs), [`RopeStyle::Neox`] rotates (i, i + d/2).
//! Pair i has frequency θ_i = base^(−2i/d). YaRN (ext_factor > 0) blends interpolated
//! (θ·freq_scale) and extrapolated (θ) angles with a ramp over the correction dims and scales
//! cos/sin by `mscale`, following ggml's `rope_yarn`.

/// Pairing of the rotated dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Neox,
}

/// YaRN parameters (see ggml's `ggml_rope_yarn_corr_dims`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// 1 / scaling factor.
    pub freq_scale: f32,
    /// Training context of the unscaled model.
    pub orig_ctx: usize,
    /// Blend strength (1.0 for YaRN).
    pub ext_factor: f32,
    /// Multiplies cos/sin (llama.cpp's attn_factor after its own YaRN magnitude correction).
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Rotated dims (even).
    pub dims: usize,
    pub base: f32,
    pub style: RopeStyle,
    pub yarn: Option<Yarn>,
}

fn corr_dim(n_dims: usize, orig_ctx: usize, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (orig_ctx as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
}

impl Rope {
    pub fn plain(dims: usize, base: f32, style: RopeStyle) -> Rope {
        Rope { dims, base, style, yarn: None }
    }

    /// (cos, sin) of pair `i` (0 ≤ i < dims/2) at position `pos`.
    pub fn cos_sin(&self, pos: usize, i: usize) -> (f32, f32) {
        let theta_extrap = pos as f32 * self.base.powf(-2.0 * i as f32 / self.dims as f32);
        match self.yarn {
            None => (theta_extrap.cos(), theta_extrap.sin()),
            Some(y) => {
                let theta_interp = y.freq_scale * theta_extrap;
                let mut theta = theta_interp;
                let mut mscale = y.attn_factor;
                if y.ext_factor != 0.0 {
                    let lo = corr_dim(self.dims, y.orig_ctx, y.beta_fast, self.base).floor().max(0.0);
                    let hi = corr_dim(self.dims, y.orig_ctx, y.beta_slow, self.base).ceil().min(self.dims as f32 - 1.0);
                    let ramp = {
                        let v = (i as f32 - lo) / (hi - lo).max(0.001);
                        1.0 - v.clamp(0.0, 1.0)
                    };
                    let mix = ramp * y.ext_factor;
                    theta = theta_interp * (1.0 - mix) + theta_extrap * mix;
                    mscale *= 1.0 + 0.1 * (1.0 / y.freq_scale).ln();
                }
                (theta.cos() * mscale, theta.sin() * mscale)
            }
        }
    }

    /// Rotates the first `dims` elements of `x` in place (`x.len() ≥ dims`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.dims / 2;
        for i in 0..half {
            let (c, s) = self.cos_sin(pos, i);
            let (a, b) = match self.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
    }
}

/// (cos, sin) of every pair at one position, computed once and applied to every head of
/// every layer.
#[derive(Clone, Debug)]
pub struct RopeAngles {
    pub style: RopeStyle,
    pub cs: Vec<(f32, f32)>, // [dims / 2]
}

impl Rope {
    pub fn angles(&self, pos: usize) -> RopeAngles {
        RopeAngles { style: self.style, cs: (0..self.dims / 2).map(|i| self.cos_sin(pos, i)).collect() }
    }
}

impl RopeAngles {
    /// Rotates the first `2 · cs.len()` elements of `x`.
    #[inline]
    pub fn apply(&self, x: &mut [f32]) {
        let half = self.cs.len();
        match self.style {
            RopeStyle::Interleaved => {
                for (i, &(c, s)) in self.cs.iter().enumerate() {
                    let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = x0 * c - x1 * s;
                    x[2 * i + 1] = x0 * s + x1 * c;
                }
            }
            RopeStyle::Neox => {
                for (i, &(c, s)) in self.cs.iter().enumerate() {
                    let (x0, x1) = (x[i], x[i + half]);
                    x[i] = x0 * c - x1 * s;
                    x[i + half] = x0 * s + x1 * c;
                }
            }
        }
    }
}
