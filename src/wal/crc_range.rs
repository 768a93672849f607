//! CRC32C of arbitrary byte ranges of one buffer, without re-reading each range.
//!
//! Replay's rule 4c asks whether a checksum-valid batch starts at ANY 8-aligned offset after a
//! damaged position. Checking each candidate by computing its checksum costs up to a batch body
//! per offset, so a torn tail crafted with a plausible batch header every 24 bytes, each
//! claiming a body to the end of the segment, cost O(n²): 13 s of CPU for a 1 MiB segment,
//! hours for a production one (found with the `wal_replay` fuzz target).
//!
//! [`RangeCrc`] makes each range checksum cheap. It relies on the identity behind zlib's
//! `crc32_combine`: for byte strings `A` and `B`,
//! `crc(A ‖ B) = Z^|B|(crc(A)) ⊕ crc(B)`, where `Z` is the linear map "append one zero byte"
//! acting on checksums. So with prefix checksums `P(i) = crc(bytes[..i])`,
//! `crc(bytes[a..b]) = P(b) ⊕ Z^(b−a)(P(a))`. `P` is stored at every
//! [`CHECKPOINT_STRIDE_BYTES`] (one linear pass) and finished from the nearest checkpoint;
//! `Z^n` is applied as a product of precomputed `Z^(2^k)` matrices over GF(2).

/// Distance between stored prefix checksums: at most this many bytes are hashed per prefix.
const CHECKPOINT_STRIDE_BYTES: usize = 64;
/// CRC32C (Castagnoli) polynomial, bit-reversed.
const CRC32C_POLY_REVERSED: u32 = 0x82F6_3B78;

/// A linear map on 32-bit checksums: column `i` is the image of bit `i`.
type Gf2Matrix = [u32; 32];

const fn apply(matrix: &Gf2Matrix, vector: u32) -> u32 {
    let mut sum = 0;
    let mut rest = vector;
    let mut column = 0;
    while rest != 0 {
        if rest & 1 == 1 {
            sum ^= matrix[column];
        }
        rest >>= 1;
        column += 1;
    }
    sum
}

const fn square(matrix: &Gf2Matrix) -> Gf2Matrix {
    let mut out = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = apply(matrix, matrix[i]);
        i += 1;
    }
    out
}

/// `Z^(2^k)` for every `k` below `usize::BITS`: appending `2^k` zero bytes. Computed at
/// compile time.
const ZERO_BYTE_POWERS: [Gf2Matrix; usize::BITS as usize] = {
    // One zero bit: shift right, folding the polynomial in when the low bit falls off.
    let mut one_bit = [0u32; 32];
    one_bit[0] = CRC32C_POLY_REVERSED;
    let mut i = 1;
    while i < 32 {
        one_bit[i] = 1 << (i - 1);
        i += 1;
    }
    let mut powers = [[0u32; 32]; usize::BITS as usize];
    powers[0] = square(&square(&square(&one_bit)));
    let mut k = 1;
    while k < powers.len() {
        powers[k] = square(&powers[k - 1]);
        k += 1;
    }
    powers
};

/// Range checksums over one buffer. Building it hashes the buffer once.
pub struct RangeCrc<'a> {
    bytes: &'a [u8],
    /// `checkpoints[j]` is the CRC32C of `bytes[..j * CHECKPOINT_STRIDE_BYTES]`.
    checkpoints: Vec<u32>,
}

impl<'a> RangeCrc<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let mut checkpoints = Vec::with_capacity(bytes.len() / CHECKPOINT_STRIDE_BYTES + 1);
        let mut crc = 0;
        checkpoints.push(crc);
        for chunk in bytes.chunks_exact(CHECKPOINT_STRIDE_BYTES) {
            crc = crc32c::crc32c_append(crc, chunk);
            checkpoints.push(crc);
        }
        Self { bytes, checkpoints }
    }

    /// CRC32C of `bytes[..end]`; `None` if `end` is past the buffer.
    fn prefix(&self, end: usize) -> Option<u32> {
        let checkpoint = end / CHECKPOINT_STRIDE_BYTES;
        let from = checkpoint * CHECKPOINT_STRIDE_BYTES;
        let crc = *self.checkpoints.get(checkpoint)?;
        Some(crc32c::crc32c_append(crc, self.bytes.get(from..end)?))
    }

    /// `Z^zero_bytes(crc)`: the checksum `crc` after `zero_bytes` zero bytes were appended to
    /// its input, minus the checksum of those zeros alone.
    fn shift(mut crc: u32, zero_bytes: usize) -> u32 {
        for (bit, power) in ZERO_BYTE_POWERS.iter().enumerate() {
            if zero_bytes >> bit == 0 {
                break;
            }
            if (zero_bytes >> bit) & 1 == 1 {
                crc = apply(power, crc);
            }
        }
        crc
    }

    /// CRC32C of `bytes[start..end]`, equal to `crc32c::crc32c(&bytes[start..end])`;
    /// `None` if the range is out of bounds or reversed.
    pub fn crc(&self, start: usize, end: usize) -> Option<u32> {
        if start > end {
            return None;
        }
        let whole = self.prefix(end)?;
        let head = self.prefix(start)?;
        Some(whole ^ Self::shift(head, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn every_range_of_a_small_buffer_matches_crc32c() {
        let data = bytes(200, 1);
        let ranges = RangeCrc::new(&data);
        for start in 0..=data.len() {
            for end in start..=data.len() {
                assert_eq!(
                    ranges.crc(start, end),
                    Some(crc32c::crc32c(&data[start..end])),
                    "{start}..{end}"
                );
            }
        }
        assert_eq!(ranges.crc(5, 4), None);
        assert_eq!(ranges.crc(0, data.len() + 1), None);
    }

    #[test]
    fn long_ranges_match_crc32c() {
        let data = bytes(3 << 19, 2);
        let ranges = RangeCrc::new(&data);
        for (start, end) in [
            (0, data.len()),
            (1, data.len() - 1),
            (8, 1 << 20),
            (777, (1 << 20) + 3),
            (data.len(), data.len()),
        ] {
            assert_eq!(
                ranges.crc(start, end),
                Some(crc32c::crc32c(&data[start..end])),
                "{start}..{end}"
            );
        }
    }

    #[test]
    fn shift_agrees_with_crc32c_combine() {
        for (crc, len) in [(0xDEAD_BEEF, 1), (1, 64), (0x1234_5678, 1_000_003), (7, 0)] {
            assert_eq!(
                RangeCrc::shift(crc, len),
                crc32c::crc32c_combine(crc, 0, len)
            );
        }
    }
}
