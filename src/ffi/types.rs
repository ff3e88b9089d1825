//! Enums and config structs of the C ABI and their conversion into `core` types.
//! Enums cross the boundary as `int32_t` so that an unknown value is an error, never UB.
//! Their codes are those of the `#[repr(i32)]` enums in `core` (see `core::codes`); the
//! constants below repeat them as literals only because cbindgen emits nothing else, and
//! are asserted equal to them at compile time.

use crate::core::codes::{Code, DeviceKind, StepOutcome};
use crate::core::config::{
    defaults, AdamW, DecayMode, Method, RefreshMode, Scaling, Selection, Side,
};
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::{bail, ensure};
use std::mem::size_of;

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
/// Skipped: the gradient (or, on a CUDA context, a scale of the compressed step) held a NaN or
/// infinity, or the effective learning rate
/// `lr * *lr_scale` was not a finite non-negative number. `*lr_scale` lives in context memory
/// (a schedule on the device) and is only read where the step runs, so a bad value there
/// skips. The host argument `lr` itself is the caller's: a NaN, infinite or negative `lr` is
/// rejected with `GRASS_ERROR_INVALID_VALUE` naming `lr` before anything runs.
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

pub(crate) fn refresh_mode(name: &str, v: grass_refresh_mode) -> Result<RefreshMode> {
    code(name, v)
}

/// The dtype of optimizer states: f32 or bf16.
pub(crate) fn state_dtype(name: &str, v: grass_dtype) -> Result<Dtype> {
    let d = dtype(name, v)?;
    if d == Dtype::F16 {
        bail!(Dtype, "{name} = f16 is not supported (use f32 or bf16)");
    }
    Ok(d)
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
    /// `sizeof(grass_projection_config)` of the header the caller was built with (set by
    /// `grass_projection_config_init`): a library accepts the size of every earlier release
    /// of the struct in its ABI generation and gives the fields an older caller lacks their
    /// defaults; other sizes fail with `GRASS_ERROR_STRUCT_SIZE`.
    pub struct_size: usize,
    /// Default `GRASS_SIDE_COLS`.
    pub side: grass_side,
    /// Projection rank r, 1 <= r <= projected dimension d; 0 (the default) picks the rank
    /// rule's r for the layer's d (`grass_default_rank`: d/2 rounded to a multiple of 8).
    pub rank: i64,
    /// Default `GRASS_METHOD_UNIFORM_NR`.
    pub method: grass_method,
    /// Exponent p of the sampling probabilities q_i ∝ s_i^p, 1 or 2. Default 2.
    pub power: i32,
    /// Default `GRASS_SCALING_NONE`.
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
    /// `sizeof(grass_adamw_config)` of the caller's header (set by `grass_adamw_config_init`);
    /// older releases' sizes are accepted as for `grass_projection_config`.
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
    /// Scale α of the projected update (multiplies the step of every selected row). Default
    /// 0.177 (0.25 until 0.8), which wants a learning rate about 10-20x AdamW's (docs/api.md).
    pub alpha: f32,
    /// Default `GRASS_REFRESH_RESET`.
    pub refresh_mode: grass_refresh_mode,
    /// The GRASS layers' moments (M and V of a sparse optimizer): `GRASS_DTYPE_BF16` (default
    /// since 0.8: at the rank rule's d/2 they take the bytes of f32 moments at d/4) or
    /// `GRASS_DTYPE_F32`. Dense optimizers use `dense_state_dtype`.
    pub state_dtype: grass_dtype,
    /// Warm-up W of each state row's step after its moments were zeroed: the step of row j is
    /// scaled by min(1, t_j / W), t_j its step count since then (1 on its first step); 0 turns
    /// it off. Default 10. Since ABI 6 (an ABI 5 caller's smaller `struct_size` gets the
    /// default).
    pub row_warmup: i32,
    /// The moments' dtype of a dense parameter (`grass_optimizer_create_dense`,
    /// `grass_adamw_step`, and the AdamW and GaLore states of `grass_memory_plan`):
    /// `GRASS_DTYPE_F32` (default) or `GRASS_DTYPE_BF16`; `state_dtype` is the GRASS layers'. Since ABI 7: an older caller's
    /// smaller `struct_size` keeps its rule, dense moments of `state_dtype`.
    pub dense_state_dtype: grass_dtype,
    /// Must be 0 (room for a later field).
    pub reserved: i32,
}

/// A struct of the ABI that starts with `struct_size` and may grow at its end within an ABI
/// generation. Each release of it is one entry of `VERSIONS`, oldest first: the `struct_size`
/// its callers set (C's `sizeof`, tail padding included) and the bytes its fields span (what
/// grass reads or writes: a later field may sit in an older version's tail padding). The last
/// entry is the current struct. A new field must make `sizeof` grow, so that every release has
/// its own `struct_size`; `versions_have_distinct_sizes` checks that.
pub(crate) trait Versioned: Copy {
    const NAME: &'static str;
    const VERSIONS: &'static [(usize, usize)];
    /// The value of every field a caller of an older version cannot set.
    fn defaults() -> Self;
}

/// The bytes of the fields of the release whose `struct_size` is `size`, or an error listing the
/// sizes this version knows.
fn known_size<T: Versioned>(arg: &str, size: usize) -> Result<usize> {
    match T::VERSIONS.iter().find(|v| v.0 == size) {
        Some(&(_, bytes)) => Ok(bytes),
        None => {
            let known: Vec<String> = T::VERSIONS.iter().map(|v| v.0.to_string()).collect();
            bail!(
                StructSize,
                "{arg}->struct_size = {size} is not a size of {} this library knows ({}): set it with sizeof or the _init function",
                T::NAME,
                known.join(", ")
            )
        }
    }
}

/// Reads a config struct of any known release: the fields the caller's release has, and the
/// defaults for the rest. Never reads past the caller's `struct_size`.
pub(crate) unsafe fn read_versioned<T: Versioned>(arg: &str, p: *const T) -> Result<T> {
    crate::ffi::args::req(arg, p)?;
    // SAFETY: every release starts with the usize struct_size; `req` checked alignment.
    let size = *(p as *const usize);
    let bytes = known_size::<T>(arg, size)?;
    let mut v = T::defaults();
    // SAFETY: the caller's struct holds at least `bytes` bytes (its release's fields), and the
    // current T holds them too (releases only grow); T is plain data.
    std::ptr::copy_nonoverlapping(p as *const u8, &mut v as *mut T as *mut u8, bytes);
    Ok(v)
}

/// Checks an info struct's `struct_size` before anything is computed; returns the bytes to
/// write for it.
pub(crate) unsafe fn info_size<T: Versioned>(arg: &str, p: *mut T) -> Result<usize> {
    crate::ffi::args::req(arg, p)?;
    // SAFETY: as in read_versioned.
    known_size::<T>(arg, *(p as *const usize))
}

/// Writes the fields of the caller's release of an info struct (`bytes` from [`info_size`]),
/// with `struct_size` left as the caller set it.
pub(crate) unsafe fn write_versioned<T: Versioned>(p: *mut T, bytes: usize, v: T) {
    // SAFETY: the caller's struct holds `bytes` bytes; struct_size (the first usize) is kept.
    let off = std::mem::size_of::<usize>();
    std::ptr::copy_nonoverlapping(
        (&v as *const T as *const u8).add(off),
        (p as *mut u8).add(off),
        bytes - off,
    );
}

/// Fills the release of a config struct whose `struct_size` is `size` with the defaults, that
/// `struct_size` included; never writes past it.
pub(crate) unsafe fn init_versioned<T: Versioned>(arg: &str, p: *mut T, size: usize) -> Result<()> {
    crate::ffi::args::req(arg, p)?;
    let bytes = known_size::<T>(arg, size)?;
    let mut v = T::defaults();
    // SAFETY: every release starts with the usize struct_size; T is plain data.
    *(&mut v as *mut T as *mut usize) = size;
    // SAFETY: the caller's struct of this release holds `bytes` bytes.
    std::ptr::copy_nonoverlapping(&v as *const T as *const u8, p as *mut u8, bytes);
    Ok(())
}

/// `sizeof(grass_adamw_config)` of ABI 3-5 (the release before `row_warmup`).
pub(crate) const ABI5_ADAMW_CONFIG_SIZE: usize = 40;
/// `sizeof(grass_adamw_config)` of ABI 6 (44 bytes of fields, the release before
/// `dense_state_dtype`).
pub(crate) const ABI6_ADAMW_CONFIG_SIZE: usize = 48;

impl Versioned for grass_projection_config {
    const NAME: &'static str = "grass_projection_config";
    const VERSIONS: &'static [(usize, usize)] = &[(size_of::<Self>(), size_of::<Self>())];
    fn defaults() -> Self {
        Self::defaults()
    }
}

impl Versioned for crate::ffi::projection::grass_projection_info {
    const NAME: &'static str = "grass_projection_info";
    /// ABI 3's release ends at `memory_bytes` (88 bytes); ABI 4 added `full_rank`. ABI 2's
    /// struct without `memory_bytes` belongs to another ABI generation (its callers must
    /// rebuild) and its size is rejected like any unknown one.
    const VERSIONS: &'static [(usize, usize)] = &[(88, 88), (size_of::<Self>(), 92)];
    fn defaults() -> Self {
        // SAFETY: integers only; an info struct is written, never read.
        unsafe { std::mem::zeroed() }
    }
}

impl Versioned for crate::ffi::optimizer::grass_optimizer_info {
    const NAME: &'static str = "grass_optimizer_info";
    /// ABI 3's release ends at `memory_bytes` (48 bytes); ABI 4 added `full_rank`.
    const VERSIONS: &'static [(usize, usize)] = &[(48, 48), (size_of::<Self>(), 52)];
    fn defaults() -> Self {
        // SAFETY: integers only; an info struct is written, never read.
        unsafe { std::mem::zeroed() }
    }
}

impl Versioned for crate::ffi::memory::grass_memory_report {
    const NAME: &'static str = "grass_memory_report";
    const VERSIONS: &'static [(usize, usize)] = &[(size_of::<Self>(), size_of::<Self>())];
    fn defaults() -> Self {
        Self::default()
    }
}

impl Versioned for grass_adamw_config {
    const NAME: &'static str = "grass_adamw_config";
    /// ABI 3-5's release ends at `state_dtype` (40 bytes); ABI 6 added `row_warmup`, ABI 7
    /// `dense_state_dtype` and `reserved`.
    const VERSIONS: &'static [(usize, usize)] = &[
        (ABI5_ADAMW_CONFIG_SIZE, ABI5_ADAMW_CONFIG_SIZE),
        (ABI6_ADAMW_CONFIG_SIZE, 44),
        (size_of::<Self>(), size_of::<Self>()),
    ];
    fn defaults() -> Self {
        Self::defaults()
    }
}

impl grass_projection_config {
    pub fn defaults() -> Self {
        grass_projection_config {
            struct_size: std::mem::size_of::<Self>(),
            side: defaults::SIDE.code(),
            rank: defaults::RANK,
            method: defaults::METHOD.code(),
            power: defaults::POWER as i32,
            scaling: defaults::SCALING.code(),
            refresh_every: defaults::REFRESH_EVERY,
            seed: defaults::SEED,
            layer_id: defaults::LAYER_ID,
        }
    }

    /// The selection options, validated except for `rank <= d` (checked where d is known);
    /// rank 0 (the rank rule) is resolved where d is known too.
    pub(crate) fn selection(&self) -> Result<Selection> {
        let method: Method = code("config->method", self.method)?;
        let scaling: Scaling = code("config->scaling", self.scaling)?;
        side(self.side).map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        if self.rank < 0 || self.rank > i32::MAX as i64 {
            bail!(
                InvalidValue,
                "config->rank = {} must be 0 (the default rank rule) or in [1, the projected dimension]",
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
            decay_mode: d.decay_mode.code(),
            alpha: d.alpha,
            refresh_mode: d.refresh_mode.code(),
            state_dtype: d.state_dtype.code(),
            row_warmup: d.row_warmup,
            dense_state_dtype: crate::core::config::defaults::DENSE_STATE_DTYPE.code(),
            reserved: 0,
        }
    }

    pub(crate) fn adamw(&self) -> Result<AdamW> {
        let decay_mode: DecayMode = code("config->decay_mode", self.decay_mode)?;
        let refresh_mode = refresh_mode("config->refresh_mode", self.refresh_mode)?;
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
            row_warmup: self.row_warmup,
        };
        a.validate()
            .map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        ensure!(
            self.reserved == 0,
            InvalidValue,
            "config->reserved = {} must be 0",
            self.reserved
        );
        Ok(a)
    }

    /// The AdamW of a dense optimizer: `adamw()` with the moments of a dense parameter.
    pub(crate) fn dense_adamw(&self) -> Result<AdamW> {
        let a = self.adamw()?;
        Ok(AdamW {
            state_dtype: self.dense_state_dtype(a.state_dtype)?,
            ..a
        })
    }

    /// A dense parameter's moments: `dense_state_dtype`, or `state` (the checked
    /// `state_dtype`) for a caller of ABI 6 or older, whose release has no such field.
    pub(crate) fn dense_state_dtype(&self, state: Dtype) -> Result<Dtype> {
        if self.struct_size > ABI6_ADAMW_CONFIG_SIZE {
            state_dtype("config->dense_state_dtype", self.dense_state_dtype)
        } else {
            Ok(state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;

    /// Two releases of one struct: release 1 had `struct_size` and `a` (sizeof 16, `a` ends at
    /// 12); release 2 added `b` (sizeof 24: the u64 needs its own 8 bytes).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Grown {
        struct_size: usize,
        a: i32,
        b: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Release1 {
        struct_size: usize,
        a: i32,
    }

    impl Versioned for Grown {
        const NAME: &'static str = "grown";
        const VERSIONS: &'static [(usize, usize)] = &[(16, 12), (24, 24)];
        fn defaults() -> Self {
            Grown {
                struct_size: 24,
                a: 1,
                b: 77,
            }
        }
    }

    #[test]
    fn an_older_release_reads_its_fields_and_defaults_for_the_rest() {
        assert_eq!(size_of::<Release1>(), 16);
        // exactly the old struct's bytes, tail padding poisoned
        let mut bytes = vec![0xABu8; 16];
        let old = Release1 {
            struct_size: 16,
            a: -5,
        };
        unsafe {
            std::ptr::copy_nonoverlapping(&old as *const _ as *const u8, bytes.as_mut_ptr(), 12)
        };
        let mut words = vec![0u64; 2];
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, 16) };
        let got =
            unsafe { read_versioned::<Grown>("cfg", words.as_ptr() as *const Grown) }.unwrap();
        assert_eq!((got.a, got.b), (-5, 77), "a from the caller, b its default");
        let new = Grown {
            struct_size: 24,
            a: 3,
            b: 9,
        };
        let got = unsafe { read_versioned::<Grown>("cfg", &new) }.unwrap();
        assert_eq!(got, new);
        for size in [0usize, 8, 12, 20, 32] {
            let mut w = new;
            w.struct_size = size;
            let e = unsafe { read_versioned::<Grown>("cfg", &w) }.unwrap_err();
            assert_eq!(e.kind, ErrorKind::StructSize);
            assert!(
                e.message
                    .contains(&format!("cfg->struct_size = {size} is not a size of grown"))
                    && e.message.contains("(16, 24)"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn an_older_info_struct_gets_only_its_fields() {
        let mut words = [0u64; 3];
        words[0] = 16;
        words[2] = 0xFFFF_FFFF_FFFF_FFFF; // past release 1: must stay untouched
        let p = words.as_mut_ptr() as *mut Grown;
        let bytes = unsafe { info_size::<Grown>("info", p) }.unwrap();
        unsafe {
            write_versioned(
                p,
                bytes,
                Grown {
                    struct_size: 0,
                    a: 42,
                    b: 5,
                },
            )
        };
        assert_eq!(words[0], 16, "struct_size kept");
        assert_eq!(words[1] as u32 as i32, 42);
        assert_eq!(words[2], u64::MAX);
    }

    #[test]
    fn versions_have_distinct_sizes() {
        fn check<T: Versioned>() {
            let v = T::VERSIONS;
            assert_eq!(v.last().unwrap().0, size_of::<T>(), "{}", T::NAME);
            for w in v.windows(2) {
                assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{}: {v:?}", T::NAME);
            }
            for &(size, bytes) in v {
                assert!(bytes <= size && bytes >= size_of::<usize>(), "{}", T::NAME);
            }
        }
        check::<grass_projection_config>();
        check::<grass_adamw_config>();
        check::<crate::ffi::projection::grass_projection_info>();
        check::<crate::ffi::optimizer::grass_optimizer_info>();
        check::<crate::ffi::memory::grass_memory_report>();
        check::<Grown>();
    }
}
