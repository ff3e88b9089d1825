//! Planning scratch, for both backends. Each op describes its regions once, in a layout
//! function run both to size the workspace (on a [`Plan::sizing`] plan) and to place the
//! regions in the caller's scratch (on a [`Plan::within`] plan), so the size a
//! `*_workspace_size` query reports and the layout the op uses cannot drift apart. CUDA ops
//! pass the planned device addresses to their kernels; CPU ops turn the planned host
//! addresses into slices of the caller's workspace with [`Carve`].

use crate::core::error::Result;
use crate::ensure;

/// Alignment of every region (cuBLAS wants 256 bytes for its workspace).
pub(crate) const ALIGN: usize = 256;

/// Largest byte count any buffer can have (Rust and C objects stay below `isize::MAX`); a
/// workspace query whose answer would exceed it fails instead of answering.
pub(crate) const MAX_BYTES: usize = isize::MAX as usize;

/// The answer of a workspace query, or an error when the sizes it was computed from need more
/// than any buffer can hold (the size formulas saturate instead of wrapping).
pub(crate) fn need(bytes: usize) -> Result<usize> {
    ensure!(
        bytes <= MAX_BYTES,
        InvalidValue,
        "these sizes need a workspace of more than 2^63 - 1 bytes"
    );
    Ok(bytes)
}

/// Bytes of `count` elements of `size` bytes, saturating at `usize::MAX` instead of wrapping:
/// counts come from caller-given dimensions, and the ABI rejects any total above [`MAX_BYTES`].
pub fn bytes(count: usize, size: usize) -> usize {
    count.saturating_mul(size)
}

pub struct Plan {
    base: usize,
    used: usize,
    limit: usize,
}

impl Plan {
    /// A plan that only counts bytes.
    pub fn sizing() -> Plan {
        Plan {
            base: 0,
            used: 0,
            limit: usize::MAX,
        }
    }

    /// A plan placing regions in the `bytes` bytes of scratch at `addr`.
    pub fn within(addr: usize, bytes: usize) -> Plan {
        let pad = (ALIGN - addr % ALIGN) % ALIGN;
        Plan {
            base: addr + pad,
            used: 0,
            limit: bytes.saturating_sub(pad),
        }
    }

    /// The address of a fresh region of `bytes` bytes. Sizes saturate at `usize::MAX` rather
    /// than wrap (they come from caller-given dimensions; the ABI rejects such a total, and
    /// [`Plan::check`] fails on it).
    pub fn take(&mut self, bytes: usize) -> usize {
        let at = self.base.wrapping_add(self.used);
        let rounded = bytes.checked_next_multiple_of(ALIGN).unwrap_or(usize::MAX);
        self.used = self.used.saturating_add(rounded);
        at
    }

    /// Bytes a workspace needs for this plan, whatever its alignment.
    pub fn size(&self) -> usize {
        if self.used == 0 {
            0
        } else {
            self.used.saturating_add(ALIGN)
        }
    }

    /// Fails when the regions taken do not fit the scratch.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.used <= self.limit,
            WorkspaceTooSmall,
            "workspace holds {} usable bytes but this call needs {}",
            self.limit,
            self.used
        );
        Ok(())
    }
}

/// Typed slices of a host workspace at the addresses a checked [`Plan::within`] of it gave,
/// handed out in the order they were taken (so that they never overlap).
pub struct Carve<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carve<'a> {
    pub fn new(ws: &'a mut [u8]) -> Self {
        Carve { rest: ws }
    }

    /// The `count` elements of `T` at `addr`, which must lie at or after the end of the
    /// previous slice.
    pub fn at<T: bytemuck::Pod>(&mut self, addr: usize, count: usize) -> Result<&'a mut [T]> {
        let rest = std::mem::take(&mut self.rest);
        let bytes = bytes(count, std::mem::size_of::<T>());
        let skip = addr.wrapping_sub(rest.as_ptr() as usize);
        ensure!(
            skip <= rest.len() && bytes <= rest.len() - skip,
            Internal,
            "scratch region at {addr:#x} of {bytes} bytes lies outside the workspace"
        );
        let (region, tail) = rest[skip..].split_at_mut(bytes);
        self.rest = tail;
        match bytemuck::try_cast_slice_mut(region) {
            Ok(s) => Ok(s),
            Err(e) => crate::bail!(Internal, "scratch region at {addr:#x}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_and_placing_agree_whatever_the_alignment() {
        let layout = |p: &mut Plan| [p.take(3), p.take(1000), p.take(256), p.take(0)];
        let mut sizing = Plan::sizing();
        layout(&mut sizing);
        let need = sizing.size();
        let mut buf = vec![0u8; need + ALIGN];
        for off in [0, 1, 8, 255] {
            let ws = &mut buf[off..off + need];
            let mut plan = Plan::within(ws.as_ptr() as usize, ws.len());
            let at = layout(&mut plan);
            plan.check().unwrap();
            let mut carve = Carve::new(ws);
            let a: &mut [f32] = carve.at(at[1], 250).unwrap();
            assert_eq!(a.len(), 250);
            let b: &mut [u64] = carve.at(at[2], 32).unwrap();
            assert_eq!(b.len(), 32);
            assert!(carve.at::<u8>(at[0], 3).is_err(), "out of order");
        }
        // One byte short of the regions at an aligned address, or of regions and padding at
        // the worst-aligned one (255 bytes of padding).
        for (addr, bytes) in [(4096, sizing.used - 1), (4097, sizing.used + 254)] {
            let mut plan = Plan::within(addr, bytes);
            layout(&mut plan);
            assert!(plan.check().is_err(), "{bytes} bytes at {addr}");
        }
    }

    #[test]
    fn sizing_saturates_instead_of_wrapping() {
        let mut plan = Plan::sizing();
        plan.take(usize::MAX - 10);
        plan.take(1 << 40);
        assert_eq!(plan.size(), usize::MAX);
        let mut plan = Plan::sizing();
        plan.take(1000);
        assert_eq!(plan.size(), 1024 + ALIGN);
        assert_eq!(bytes(usize::MAX / 2, 4), usize::MAX);
    }
}
