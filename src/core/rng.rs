//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011), keyed by the seed and
//! indexed by (draw index, purpose, layer id, refresh index): the same inputs give the same
//! numbers on CPU, on GPU and on every rank, with no state to carry between calls.
//! `kernels/rng.cuh` implements the identical function.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `ctr` with `key`.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// What a draw is for; each purpose has its own independent sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Purpose {
    /// i.i.d. draws of `multinomial` and `uniform`.
    Draw = 1,
    /// The random order of `multinomial_nr` and `uniform_nr`.
    Order = 2,
    /// The offset of systematic sampling.
    Offset = 3,
}

/// The generator of one layer at one refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub seed: u64,
    pub layer_id: u32,
    pub refresh_index: u32,
}

impl Stream {
    pub fn bits(&self, purpose: Purpose, i: u32) -> [u32; 4] {
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        philox4x32_10([i, purpose as u32, self.layer_id, self.refresh_index], key)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&self, purpose: Purpose, i: u32) -> f64 {
        let x = self.bits(purpose, i);
        let v = ((x[0] as u64) << 21) ^ ((x[1] as u64) >> 11);
        (v & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_is_in_range_and_spread() {
        let s = Stream {
            seed: 7,
            layer_id: 3,
            refresh_index: 1,
        };
        let n = 20000;
        let mut sum = 0.0;
        for i in 0..n {
            let u = s.uniform(Purpose::Draw, i);
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        let mean = sum / n as f64;
        // mean of n uniforms has standard deviation 1/sqrt(12 n) ≈ 0.002
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
