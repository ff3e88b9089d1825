//! Enums and config structs of the C ABI and their conversion into `core` types.
//! Enums cross the boundary as `int32_t` so that an unknown value is an error, never UB.
//! Their codes are those of the `#[repr(i32)]` enums in `core` (see `core::codes`); the
//! constants below repeat them as literals only because cbindgen emits nothing else, and
//! are asserted equal to them at compile time.

use crate::bail;
use crate::core::codes::{Code, DeviceKind, StepOutcome};
use crate::core::config::{AdamW, DecayMode, Method, RefreshMode, Scaling, Selection, Side};
use crate::core::dtype::Dtype;
use crate::core::error::Result;

/// Element type of a tensor: one of `GRASS_DTYPE_*`.
pub type grass_dtype = i32;
pub const GRASS_DTYPE_F32: grass_dtype = 0;
pub const GRASS_DTYPE_BF16: grass_dtype = 1;
pub const GRASS_DTYPE_F16: grass_dtype = 2;

/// Which dimension of G = dYᵀX is projected: one of `GRASS_SIDE_*`.
pub type grass_side = i32;
/// Select rows of G (output features); compressed tensors are r x n.
pub const GRASS_SIDE_ROWS: grass_side = 0;
/// Select columns of G (input features); compressed tensors are r x m, row j = column σ_j of G.
pub const GRASS_SIDE_COLS: grass_side = 1;
/// Project the longer dimension (the smaller state); rows when m == n.
pub const GRASS_SIDE_AUTO: grass_side = 2;

/// How rows are chosen at a refresh: one of `GRASS_METHOD_*`.
pub type grass_method = i32;
/// The r largest scores (ties: lower index); deterministic, biased.
pub const GRASS_METHOD_TOP_R: grass_method = 0;
/// r i.i.d. draws with probability q_i ∝ s_i^p (with replacement).
pub const GRASS_METHOD_MULTINOMIAL: grass_method = 1;
/// r distinct rows with inclusion probability min(1, c·q_i) (systematic sampling).
pub const GRASS_METHOD_MULTINOMIAL_NR: grass_method = 2;
/// r i.i.d. uniform draws.
pub const GRASS_METHOD_UNIFORM: grass_method = 3;
/// r distinct uniform rows.
pub const GRASS_METHOD_UNIFORM_NR: grass_method = 4;

/// Scale ρ of the selected rows: one of `GRASS_SCALING_*`.
pub type grass_scaling = i32;
/// ρ makes E[P Pᵀ] = I for the sampling methods (1 for top_r).
pub const GRASS_SCALING_UNBIASED: grass_scaling = 0;
/// ρ = 1 for every method.
pub const GRASS_SCALING_NONE: grass_scaling = 1;

/// Decoupled weight decay: one of `GRASS_DECAY_*`.
pub type grass_decay_mode = i32;
pub const GRASS_DECAY_OFF: grass_decay_mode = 0;
/// Decay only the selected rows (keeps the update sparse).
pub const GRASS_DECAY_SELECTED: grass_decay_mode = 1;
/// Decay all of W every step (O(m·n) per step).
pub const GRASS_DECAY_DENSE: grass_decay_mode = 2;

/// Optimizer state at a refresh: one of `GRASS_REFRESH_*`.
pub type grass_refresh_mode = i32;
/// Zero M, V and every row's step count.
pub const GRASS_REFRESH_RESET: grass_refresh_mode = 0;
/// Keep the state rows (and their step counts) of indices that stay selected; zero the others,
/// so each entering row starts like a fresh Adam parameter.
pub const GRASS_REFRESH_CARRY: grass_refresh_mode = 1;

/// What an AdamW step wrote to `*skipped`: one of `GRASS_STEP_*`.
pub type grass_step_outcome = i32;
/// The step was applied.
pub const GRASS_STEP_APPLIED: grass_step_outcome = 0;
/// Skipped: the gradient held a NaN or infinity, or the effective learning rate was not a
/// finite non-negative number.
pub const GRASS_STEP_SKIPPED_NONFINITE: grass_step_outcome = 1;
/// Skipped (CUDA contexts, which check on the device): the indices were not sorted ascending
/// within [0, d). A CPU context returns `GRASS_ERROR_INVALID_VALUE` instead.
pub const GRASS_STEP_SKIPPED_BAD_INDICES: grass_step_outcome = 2;
/// Skipped (CUDA contexts, which check on the device): a step count was negative. A CPU
/// context returns `GRASS_ERROR_INVALID_VALUE` instead.
pub const GRASS_STEP_SKIPPED_BAD_STEP_COUNT: grass_step_outcome = 3;

/// Kind of a context's device: one of `GRASS_DEVICE_*`.
pub type grass_device_kind = i32;
pub const GRASS_DEVICE_CPU: grass_device_kind = 0;
pub const GRASS_DEVICE_CUDA: grass_device_kind = 1;

const _: () = {
    assert!(GRASS_DTYPE_F32 == Dtype::F32 as i32);
    assert!(GRASS_DTYPE_BF16 == Dtype::Bf16 as i32);
    assert!(GRASS_DTYPE_F16 == Dtype::F16 as i32);
    assert!(GRASS_SIDE_ROWS == Side::Rows as i32);
    assert!(GRASS_SIDE_COLS == Side::Cols as i32);
    assert!(GRASS_SIDE_AUTO == Side::Auto as i32);
    assert!(GRASS_METHOD_TOP_R == Method::TopR as i32);
    assert!(GRASS_METHOD_MULTINOMIAL == Method::Multinomial as i32);
    assert!(GRASS_METHOD_MULTINOMIAL_NR == Method::MultinomialNr as i32);
    assert!(GRASS_METHOD_UNIFORM == Method::Uniform as i32);
    assert!(GRASS_METHOD_UNIFORM_NR == Method::UniformNr as i32);
    assert!(GRASS_SCALING_UNBIASED == Scaling::Unbiased as i32);
    assert!(GRASS_SCALING_NONE == Scaling::None as i32);
    assert!(GRASS_DECAY_OFF == DecayMode::Off as i32);
    assert!(GRASS_DECAY_SELECTED == DecayMode::Selected as i32);
    assert!(GRASS_DECAY_DENSE == DecayMode::Dense as i32);
    assert!(GRASS_REFRESH_RESET == RefreshMode::Reset as i32);
    assert!(GRASS_REFRESH_CARRY == RefreshMode::Carry as i32);
    assert!(GRASS_STEP_APPLIED == StepOutcome::Applied as i32);
    assert!(GRASS_STEP_SKIPPED_NONFINITE == StepOutcome::SkippedNonfinite as i32);
    assert!(GRASS_STEP_SKIPPED_BAD_INDICES == StepOutcome::SkippedBadIndices as i32);
    assert!(GRASS_STEP_SKIPPED_BAD_STEP_COUNT == StepOutcome::SkippedBadStepCount as i32);
    assert!(GRASS_DEVICE_CPU == DeviceKind::Cpu as i32);
    assert!(GRASS_DEVICE_CUDA == DeviceKind::Cuda as i32);
};

/// The `core` value of enum argument `name`, or `GRASS_ERROR_INVALID_ENUM` listing the options.
pub(crate) fn code<T: Code>(name: &str, v: i32) -> Result<T> {
    match T::from_code(v) {
        Some(t) => Ok(t),
        None => bail!(
            InvalidEnum,
            "{name} = {v} is not a {} ({})",
            T::C_TYPE,
            T::options()
        ),
    }
}

pub(crate) fn dtype(name: &str, v: grass_dtype) -> Result<Dtype> {
    code(name, v)
}

pub(crate) fn side(v: grass_side) -> Result<Side> {
    code("side", v)
}

pub(crate) fn side_code(s: Side) -> grass_side {
    s.code()
}

/// Options of a projection (the selection and its schedule).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grass_projection_config {
    /// Must be `sizeof(grass_projection_config)`; set by `grass_projection_config_init`.
    pub struct_size: usize,
    /// Default `GRASS_SIDE_AUTO`.
    pub side: grass_side,
    /// Projection rank r, 1 <= r <= projected dimension. Default 256.
    pub rank: i64,
    /// Default `GRASS_METHOD_MULTINOMIAL_NR`.
    pub method: grass_method,
    /// Exponent p of the sampling probabilities q_i ∝ s_i^p, 1 or 2. Default 2.
    pub power: i32,
    /// Default `GRASS_SCALING_UNBIASED`.
    pub scaling: grass_scaling,
    /// Steps between refreshes (K). Default 200.
    pub refresh_every: i64,
    /// Seed of the counter-based generator. Default 0.
    pub seed: u64,
    /// Layer id mixed into the generator so that layers draw independently. Default 0.
    pub layer_id: u32,
}

/// AdamW hyper-parameters (shared by the compressed and the dense step).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grass_adamw_config {
    /// Must be `sizeof(grass_adamw_config)`; set by `grass_adamw_config_init`.
    pub struct_size: usize,
    /// Default 0.9.
    pub beta1: f32,
    /// Default 0.999.
    pub beta2: f32,
    /// Default 1e-8.
    pub eps: f32,
    /// Decoupled weight decay λ. Default 0.
    pub weight_decay: f32,
    /// Default `GRASS_DECAY_SELECTED` (the dense step decays every element unless OFF).
    pub decay_mode: grass_decay_mode,
    /// Scale α of the projected update (GaLore uses 0.25). Default 1.
    pub alpha: f32,
    /// Default `GRASS_REFRESH_RESET`.
    pub refresh_mode: grass_refresh_mode,
    /// `GRASS_DTYPE_F32` (default) or `GRASS_DTYPE_BF16`.
    pub state_dtype: grass_dtype,
}

fn check_struct_size(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!(
            StructSize,
            "{name}->struct_size = {got}, expected {want} (call the _init function first)"
        );
    }
    Ok(())
}

impl grass_projection_config {
    pub fn defaults() -> Self {
        grass_projection_config {
            struct_size: std::mem::size_of::<Self>(),
            side: GRASS_SIDE_AUTO,
            rank: 256,
            method: GRASS_METHOD_MULTINOMIAL_NR,
            power: 2,
            scaling: GRASS_SCALING_UNBIASED,
            refresh_every: 200,
            seed: 0,
            layer_id: 0,
        }
    }

    /// The selection options, validated except for `rank <= d` (checked where d is known).
    pub(crate) fn selection(&self) -> Result<Selection> {
        check_struct_size("config", self.struct_size, std::mem::size_of::<Self>())?;
        let method: Method = code("config->method", self.method)?;
        let scaling: Scaling = code("config->scaling", self.scaling)?;
        side(self.side).map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        if self.rank <= 0 || self.rank > i32::MAX as i64 {
            bail!(
                InvalidValue,
                "config->rank = {} must be positive",
                self.rank
            );
        }
        if self.power != 1 && self.power != 2 {
            bail!(
                InvalidValue,
                "config->power = {} must be 1 or 2",
                self.power
            );
        }
        if self.refresh_every <= 0 {
            bail!(
                InvalidValue,
                "config->refresh_every = {} must be positive",
                self.refresh_every
            );
        }
        Ok(Selection {
            rank: self.rank as usize,
            method,
            power: self.power as u32,
            scaling,
            seed: self.seed,
            layer_id: self.layer_id,
        })
    }
}

impl grass_adamw_config {
    pub fn defaults() -> Self {
        let d = AdamW::default();
        grass_adamw_config {
            struct_size: std::mem::size_of::<Self>(),
            beta1: d.beta1,
            beta2: d.beta2,
            eps: d.eps,
            weight_decay: d.weight_decay,
            decay_mode: GRASS_DECAY_SELECTED,
            alpha: d.alpha,
            refresh_mode: GRASS_REFRESH_RESET,
            state_dtype: GRASS_DTYPE_F32,
        }
    }

    pub(crate) fn adamw(&self) -> Result<AdamW> {
        check_struct_size("config", self.struct_size, std::mem::size_of::<Self>())?;
        let decay_mode: DecayMode = code("config->decay_mode", self.decay_mode)?;
        let refresh_mode: RefreshMode = code("config->refresh_mode", self.refresh_mode)?;
        let state_dtype = dtype("config->state_dtype", self.state_dtype)?;
        let a = AdamW {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay_mode,
            alpha: self.alpha,
            refresh_mode,
            state_dtype,
        };
        a.validate()
            .map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        Ok(a)
    }
}
