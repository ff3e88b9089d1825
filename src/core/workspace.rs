//! Carving typed, aligned scratch regions out of a caller-provided byte workspace.

use crate::core::error::Result;
use crate::ensure;

/// Bytes a region of `count` elements of `size` bytes takes, rounded up to 64 for alignment.
/// Saturates at `usize::MAX` instead of wrapping: sizes come from caller-given dimensions, and
/// the ABI rejects any total above [`MAX_BYTES`].
pub fn region(count: usize, size: usize) -> usize {
    match count
        .checked_mul(size)
        .and_then(|b| b.checked_next_multiple_of(64))
    {
        Some(b) => b,
        None => usize::MAX,
    }
}

/// Adds region sizes, saturating at `usize::MAX` (see [`region`]).
pub fn total(parts: &[usize]) -> usize {
    parts.iter().fold(0usize, |acc, &p| acc.saturating_add(p))
}

/// Largest byte count any buffer can have (Rust and C objects stay below `isize::MAX`); a
/// workspace query whose answer would exceed it fails instead of answering.
pub const MAX_BYTES: usize = isize::MAX as usize;

/// Hands out consecutive 64-byte aligned regions of a byte buffer.
pub struct Carver<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carver<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Carver { rest: buf }
    }

    /// Takes `count` elements of `T` (a plain numeric type).
    pub fn take<T: bytemuck_like::Pod>(&mut self, count: usize) -> Result<&'a mut [T]> {
        let buf = std::mem::take(&mut self.rest);
        let skip = buf.as_ptr().align_offset(64).min(buf.len());
        let (_, buf) = buf.split_at_mut(skip);
        let bytes = region(count, std::mem::size_of::<T>());
        ensure!(
            buf.len() >= count * std::mem::size_of::<T>(),
            WorkspaceTooSmall,
            "workspace is too small"
        );
        let take = bytes.min(buf.len());
        let (head, tail) = buf.split_at_mut(take);
        self.rest = tail;
        // SAFETY: `head` is 64-byte aligned, holds at least `count * size_of::<T>()` bytes, and
        // T is a plain numeric type for which every bit pattern is valid.
        let (pre, mid, _) = unsafe { head.align_to_mut::<T>() };
        debug_assert!(pre.is_empty());
        Ok(&mut mid[..count])
    }
}

/// Extra bytes a caller must add so that regions can be aligned whatever the buffer's address.
pub(crate) const ALIGN_SLACK: usize = 64;

pub mod bytemuck_like {
    /// Plain numeric types: every bit pattern is a valid value.
    pub trait Pod: Copy + 'static {}
    impl Pod for f32 {}
    impl Pod for f64 {}
    impl Pod for u32 {}
    impl Pod for i32 {}
    impl Pod for u64 {}
    impl Pod for u16 {}
    impl Pod for u8 {}
    impl Pod for half::bf16 {}
    impl Pod for half::f16 {}
}
