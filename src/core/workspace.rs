//! Carving typed, aligned scratch regions out of a caller-provided byte workspace.

use crate::core::error::Result;
use crate::ensure;

/// Bytes a region of `count` elements of `size` bytes takes, rounded up to 64 for alignment.
pub fn region(count: usize, size: usize) -> usize {
    (count * size).div_ceil(64) * 64
}

/// Hands out consecutive 64-byte aligned regions of a byte buffer.
pub struct Carver<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carver<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Carver { rest: buf }
    }

    /// Takes `count` elements of `T` (a plain numeric type).
    pub fn take<T: bytemuck::Pod>(&mut self, count: usize) -> Result<&'a mut [T]> {
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
        // `head` starts 64-byte aligned and holds the whole region, so the cast cannot fail.
        match bytemuck::try_cast_slice_mut(&mut head[..count * std::mem::size_of::<T>()]) {
            Ok(s) => Ok(s),
            Err(e) => crate::bail!(Internal, "workspace region cannot hold its type: {e}"),
        }
    }
}

/// Extra bytes a caller must add so that regions can be aligned whatever the buffer's address.
pub(crate) const ALIGN_SLACK: usize = 64;
