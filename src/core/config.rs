//! Algorithm options (DESIGN.md §1) with their defaults and validation.

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
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_mode: DecayMode::Selected,
            alpha: 1.0,
            refresh_mode: RefreshMode::Reset,
            state_dtype: Dtype::F32,
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
        Ok(())
    }

    /// Bias corrections `(1 - β1^t, 1 - β2^t)` for step `t >= 1`, computed once per step in f64
    /// so that every backend agrees to the last bit.
    pub fn bias_corrections(&self, t: i32) -> (f32, f32) {
        let c1 = 1.0 - (self.beta1 as f64).powi(t);
        let c2 = 1.0 - (self.beta2 as f64).powi(t);
        (c1 as f32, c2 as f32)
    }
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
