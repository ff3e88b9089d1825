//! Algorithm options with their defaults and validation.
//!
//! The defaults of every option live here, in [`defaults`], and nowhere else: the C init
//! functions (`grass_projection_config_init`, `grass_adamw_config_init`) return them and every
//! binding reads them from the library.

use crate::core::codes::code_enum;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::ensure;

code_enum! {
    /// Which dimension of G = dYᵀX is projected.
    pub enum Side: "grass_side", "GRASS_SIDE_" {
        /// Select rows of G (output features); states are r x n.
        Rows = 0 => "rows",
        /// Select columns of G (input features); states are r x m (row j holds column σ_j of G).
        Cols = 1 => "cols",
        /// Compress the longer dimension (smallest state); rows when m == n.
        Auto = 2 => "auto",
    }
}

code_enum! {
    /// How rows are chosen at a refresh.
    pub enum Method: "grass_method", "GRASS_METHOD_" {
        TopR = 0 => "top_r",
        Multinomial = 1 => "multinomial",
        MultinomialNr = 2 => "multinomial_nr",
        Uniform = 3 => "uniform",
        UniformNr = 4 => "uniform_nr",
    }
}

code_enum! {
    /// The scale ρ of the selected rows.
    pub enum Scaling: "grass_scaling", "GRASS_SCALING_" {
        Unbiased = 0 => "unbiased",
        None = 1 => "none",
    }
}

code_enum! {
    /// Decoupled weight decay.
    pub enum DecayMode: "grass_decay_mode", "GRASS_DECAY_" {
        Off = 0 => "off",
        Selected = 1 => "selected",
        Dense = 2 => "dense",
    }
}

code_enum! {
    /// Optimizer state at a refresh.
    pub enum RefreshMode: "grass_refresh_mode", "GRASS_REFRESH_" {
        Reset = 0 => "reset",
        Carry = 1 => "carry",
    }
}

/// The defaults of the projection and AdamW options, in one place: a later measurement changes
/// a default here and every binding follows (they read these through the C init functions).
///
/// Chosen by the project's 32-run trainer sweep (bench/results/sweep_train/sweep.md): uniform
/// rows without replacement, no scaling, alpha 0.25 and the column side gave the lowest
/// validation loss of the grass configurations (below AdamW's best, at its best learning rate
/// of about 4e-2, 20x AdamW's 2e-3); the former defaults (multinomial_nr, unbiased, alpha 1,
/// side auto) measured worst. That preset trained at rank 32 on a projected dimension of 128:
/// the rank rule's fraction 1/4 then. Since 0.8 the same bytes hold bf16 moments at twice the
/// rank with alpha 0.177 (0.25/√2, the update norm of half the rank), which lowered the
/// validation loss on both of the trainer's presets (docs/long-run.md). (`pub(crate)`: C sees
/// them only through the init functions, and cbindgen emits no macros for them.)
pub mod defaults {
    use super::{DecayMode, Method, RefreshMode, Scaling, Side};
    use crate::core::dtype::Dtype;

    pub(crate) const SIDE: Side = Side::Cols;
    /// 0: the rank rule ([`super::default_rank`]) picks r from the projected dimension.
    pub(crate) const RANK: i64 = 0;
    pub(crate) const METHOD: Method = Method::UniformNr;
    pub(crate) const POWER: u32 = 2;
    pub(crate) const SCALING: Scaling = Scaling::None;
    /// Steps between refreshes. 50 since the row warm-up: with it a refresh no longer
    /// costs a jump in the loss, and refreshing 4x as often as 200 lowered the validation
    /// loss on both of the trainer's presets (means of two seeds; 100 and 25 helped less on
    /// the cpu preset): docs/long-run.md.
    pub(crate) const REFRESH_EVERY: i64 = 50;
    pub(crate) const SEED: u64 = 0;
    pub(crate) const LAYER_ID: u32 = 0;

    pub(crate) const BETA1: f32 = 0.9;
    pub(crate) const BETA2: f32 = 0.999;
    pub(crate) const EPS: f32 = 1e-8;
    pub(crate) const WEIGHT_DECAY: f32 = 0.0;
    pub(crate) const DECAY_MODE: DecayMode = DecayMode::Selected;
    /// Scale of the projected update: the learning rate it wants is about 10-20x AdamW's.
    /// 0.177 = 0.25/√2: at the rank rule's d/2 the update has the norm that 0.25 gave at d/4
    /// (0.25 and 0.125 at d/2 were worse on the cpu preset, docs/long-run.md).
    pub(crate) const ALPHA: f32 = 0.177;
    pub(crate) const REFRESH_MODE: RefreshMode = RefreshMode::Reset;
    /// bf16 moments: at the rank rule's d/2 they take the bytes of f32 moments at d/4, and
    /// twice the rank trained better on both of the trainer's presets (docs/long-run.md).
    pub(crate) const STATE_DTYPE: Dtype = Dtype::Bf16;
    /// The moments of dense parameters (embeddings, norms, AdamW itself): f32, as measured.
    pub(crate) const DENSE_STATE_DTYPE: Dtype = Dtype::F32;
    /// Steps over which a state row's update ramps up after its moments were zeroed (the
    /// step of row j is scaled by min(1, t_j / ROW_WARMUP), t_j its count; 0: no ramp). 10
    /// lowered the validation loss on both of the trainer's presets (means of two seeds; 20
    /// and 5 did not help the cpu preset): docs/long-run.md.
    pub(crate) const ROW_WARMUP: i32 = 10;
    /// The residual step (opt-in, `grass_optimizer_step_residual`) moves each element of the
    /// rows the selection leaves out by RESIDUAL_SCALE x the compressed step's `lr·alpha`
    /// (signSGD): 0.1 was best of 0.03 / 0.1 / 0.3 on the trainer's cpu preset and beat
    /// grass without it on the long preset (docs/long-run.md).
    pub(crate) const RESIDUAL_SCALE: f32 = 0.1;

    /// The rank rule: r = d * RANK_FRACTION.0 / RANK_FRACTION.1 of the projected dimension d,
    /// rounded to the nearest multiple of RANK_MULTIPLE (ties up), at least RANK_MULTIPLE and
    /// never above d. 1/2 with the default bf16 moments: the bytes of d/4 rows of f32 moments
    /// (with f32 moments, a rank of d/4 keeps those bytes).
    pub(crate) const RANK_FRACTION: (u64, u64) = (1, 2);
    pub(crate) const RANK_MULTIPLE: u64 = 8;
}

/// The default rank of a projected dimension `d >= 1` (see [`defaults::RANK_FRACTION`]): d/2
/// rounded to the nearest multiple of 8 (ties up), at least 8, at most d. d = 128 gives 64,
/// 768 gives 384, 4096 gives 2048; d <= 8 gives d itself (no memory saving).
pub fn default_rank(d: usize) -> usize {
    let (num, den) = defaults::RANK_FRACTION;
    let q = defaults::RANK_MULTIPLE;
    // d * num / den rounded to a multiple of q: floor((d * num + den * q / 2) / (den * q)) * q
    let d64 = d as u64;
    let r = (d64 * num + den * q / 2) / (den * q) * q;
    r.max(q).min(d64) as usize
}

/// How rows are chosen at a refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    pub rank: usize,
    pub method: Method,
    pub power: u32,
    pub scaling: Scaling,
    pub seed: u64,
    pub layer_id: u32,
}

impl Selection {
    pub fn validate(&self, d: usize) -> Result<()> {
        ensure!(self.rank > 0, InvalidValue, "rank must be positive");
        ensure!(
            self.rank <= d,
            InvalidValue,
            "rank = {} exceeds the projected dimension {}",
            self.rank,
            d
        );
        ensure!(
            self.power == 1 || self.power == 2,
            InvalidValue,
            "power = {} must be 1 or 2",
            self.power
        );
        Ok(())
    }
}

/// AdamW hyper-parameters shared by the compressed and the dense step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decay_mode: DecayMode,
    /// Scale of the projected update (GaLore uses 0.25); ignored by the dense step.
    pub alpha: f32,
    pub refresh_mode: RefreshMode,
    pub state_dtype: Dtype,
    /// W: the compressed step of state row j is scaled by min(1, t_j / W), t_j the steps the
    /// row has taken since its moments were zeroed (1 on its first step); 0 turns it off.
    /// A zeroed row's first Adam step is ±1 per element (m̂/√v̂ = sign(g) at t = 1), larger
    /// than the steps of rows with a history; the ramp spreads that over W steps.
    pub row_warmup: i32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: defaults::BETA1,
            beta2: defaults::BETA2,
            eps: defaults::EPS,
            weight_decay: defaults::WEIGHT_DECAY,
            decay_mode: defaults::DECAY_MODE,
            alpha: defaults::ALPHA,
            refresh_mode: defaults::REFRESH_MODE,
            state_dtype: defaults::STATE_DTYPE,
            row_warmup: defaults::ROW_WARMUP,
        }
    }
}

impl AdamW {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.beta1),
            InvalidValue,
            "beta1 = {} must lie in [0, 1)",
            self.beta1
        );
        ensure!(
            (0.0..1.0).contains(&self.beta2),
            InvalidValue,
            "beta2 = {} must lie in [0, 1)",
            self.beta2
        );
        ensure!(
            self.eps.is_finite() && self.eps > 0.0,
            InvalidValue,
            "eps = {} must be finite and positive",
            self.eps
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            InvalidValue,
            "weight_decay = {} must be finite and non-negative",
            self.weight_decay
        );
        ensure!(
            self.alpha.is_finite(),
            InvalidValue,
            "alpha = {} must be finite",
            self.alpha
        );
        ensure!(
            self.state_dtype != Dtype::F16,
            Dtype,
            "state_dtype = f16 is not supported (use f32 or bf16)"
        );
        ensure!(
            self.row_warmup >= 0,
            InvalidValue,
            "row_warmup = {} must be 0 (off) or a positive number of steps",
            self.row_warmup
        );
        Ok(())
    }

    /// The warm-up factor min(1, t / row_warmup) of a state row at its step count `t >= 1`
    /// (1 when the warm-up is off), computed in f32 as every backend computes it.
    pub fn row_ramp(&self, t: i32) -> f32 {
        if t >= self.row_warmup {
            1.0
        } else {
            t as f32 / self.row_warmup as f32
        }
    }

    /// Bias corrections `(1 - β1^t, 1 - β2^t)` for step `t >= 1`, computed once per step in f64
    /// so that every backend agrees to the last bit.
    pub fn bias_corrections(&self, t: i32) -> (f32, f32) {
        let c1 = 1.0 - (self.beta1 as f64).powi(t);
        let c2 = 1.0 - (self.beta2 as f64).powi(t);
        (c1 as f32, c2 as f32)
    }
}

/// Validates a gradient scale given per call (`grass_optimizer_step_scaled`).
pub fn check_grad_scale(grad_scale: f32) -> Result<()> {
    ensure!(
        grad_scale.is_finite() && grad_scale >= 0.0,
        InvalidValue,
        "grad_scale = {grad_scale} must be finite and non-negative"
    );
    Ok(())
}

/// Validates the scale of a residual step given per call (`grass_residual_step`).
pub fn check_residual_scale(residual_scale: f32) -> Result<()> {
    ensure!(
        residual_scale.is_finite() && residual_scale >= 0.0,
        InvalidValue,
        "residual_scale = {residual_scale} must be finite and non-negative"
    );
    Ok(())
}

/// Validates a learning rate given per call.
pub fn check_lr(lr: f32) -> Result<()> {
    ensure!(
        lr.is_finite() && lr >= 0.0,
        InvalidValue,
        "lr = {lr} must be finite and non-negative"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent statement of the rule: the multiple of 8 nearest to d/2 (ties up),
    /// clamped to [min(8, d), d].
    fn rule(d: usize) -> usize {
        let half = d as f64 / 2.0;
        let r = ((half / 8.0) + 0.5).floor() as usize * 8;
        r.max(8).min(d)
    }

    #[test]
    fn the_rank_rule() {
        for (d, r) in [
            (1, 1),
            (7, 7),
            (8, 8),
            (16, 8),
            (24, 16),
            (48, 24),
            (64, 32),
            (100, 48),
            (128, 64),
            (144, 72),
            (768, 384),
            (3072, 1536),
            (4096, 2048),
            (5120, 2560),
            (13824, 6912),
        ] {
            assert_eq!(default_rank(d), r, "d = {d}");
        }
        for d in 1..5000 {
            let r = default_rank(d);
            assert_eq!(r, rule(d), "d = {d}");
            assert!(r >= 1 && r <= d);
            assert!(r == d || r % 8 == 0);
        }
    }
}
