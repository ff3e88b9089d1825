//! Carving device scratch. Each op describes its regions once, in a function run both to
//! size the workspace (on an empty plan) and to place the regions in the caller's scratch,
//! so the size a query reports and the layout an op uses cannot drift apart.

use crate::backend::Scratch;
use crate::core::error::Result;
use crate::ensure;

/// Alignment of every region (cuBLAS wants 256 bytes for its workspace).
const ALIGN: usize = 256;

pub(crate) struct Plan {
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

    /// A plan placing regions in `ws`.
    pub fn within(ws: Scratch) -> Plan {
        let pad = (ALIGN - ws.addr % ALIGN) % ALIGN;
        Plan {
            base: ws.addr + pad,
            used: 0,
            limit: ws.bytes.saturating_sub(pad),
        }
    }

    /// The address of a fresh region of `bytes` bytes. Sizes saturate at `usize::MAX` rather
    /// than wrap (they come from caller-given dimensions; the ABI rejects such a total).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_saturates_instead_of_wrapping() {
        let mut plan = Plan::sizing();
        plan.take(usize::MAX - 10);
        plan.take(1 << 40);
        assert_eq!(plan.size(), usize::MAX);
        let mut plan = Plan::sizing();
        plan.take(1000);
        assert_eq!(plan.size(), 1024 + ALIGN);
    }
}
