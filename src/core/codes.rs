//! The numbered options of the C ABI. Each is a `#[repr(i32)]` enum whose discriminants are
//! the codes of include/grass.h, declared once here with the C name of every value; `ffi`
//! converts with [`Code::from_code`] and `as i32`, its `GRASS_*` constants are asserted equal
//! to these at compile time, and tests/enum_codes.rs checks the header, the kernels and the
//! bindings against them.

/// An enum whose values cross the C ABI as `int32_t` codes.
pub trait Code: Copy + Eq + Sized + 'static {
    /// The C type, e.g. `grass_dtype`.
    const C_TYPE: &'static str;
    /// The prefix of its C constants, e.g. `GRASS_DTYPE_`.
    const PREFIX: &'static str;
    /// Every value, in code order.
    const ALL: &'static [Self];
    fn code(self) -> i32;
    /// The C constant's name without the prefix, in lower case: `f32`, `top_r`.
    fn label(self) -> &'static str;

    fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.code() == code)
    }

    /// `0 = f32, 1 = bf16, 2 = f16`, for error messages.
    fn options() -> String {
        Self::ALL
            .iter()
            .map(|v| format!("{} = {}", v.code(), v.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Declares a `#[repr(i32)]` enum with its codes and C labels, and implements [`Code`].
macro_rules! code_enum {
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident: $ctype:literal, $prefix:literal {
            $($(#[$vm:meta])* $v:ident = $c:literal => $label:literal,)+
        }
    ) => {
        $(#[$m])*
        #[repr(i32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vm])* $v = $c,)+
        }

        impl $crate::core::codes::Code for $name {
            const C_TYPE: &'static str = $ctype;
            const PREFIX: &'static str = $prefix;
            const ALL: &'static [Self] = &[$($name::$v),+];
            fn code(self) -> i32 {
                self as i32
            }
            fn label(self) -> &'static str {
                match self {
                    $($name::$v => $label,)+
                }
            }
        }
    };
}
pub(crate) use code_enum;

code_enum! {
    /// What an AdamW step wrote to its outcome slot.
    pub enum StepOutcome: "grass_step_outcome", "GRASS_STEP_" {
        Applied = 0 => "applied",
        /// A NaN or infinity in the gradient, or a learning rate that is not finite and >= 0.
        SkippedNonfinite = 1 => "skipped_nonfinite",
        /// Indices not sorted ascending within [0, d) (CUDA contexts check on the device).
        SkippedBadIndices = 2 => "skipped_bad_indices",
        /// A negative step count (CUDA contexts check on the device).
        SkippedBadStepCount = 3 => "skipped_bad_step_count",
    }
}

code_enum! {
    /// The kind of a context's device.
    pub enum DeviceKind: "grass_device_kind", "GRASS_DEVICE_" {
        Cpu = 0 => "cpu",
        Cuda = 1 => "cuda",
    }
}
