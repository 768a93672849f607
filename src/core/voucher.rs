//! Vouchers and their public identifiers.
//!
//! A voucher ID is `v` followed by 20 Crockford base32 characters encoding
//! 96 bits: the tranche's ordinal (32 bits) and a 64-bit random component.
//! The random part makes IDs unguessable (not enumerable); the ordinal lets a
//! lookup go straight to the right tranche without a global index. Uniqueness
//! inside a tranche is checked against the tranche's own voucher map.

use super::event::VoucherClaimed;
use super::time::UnixMillis;
use super::tranche::CountyCode;

const VOUCHER_ID_PREFIX: char = 'v';
const VOUCHER_ID_BITS: u32 = 96;
const BASE32_BITS_PER_CHAR: u32 = 5;
/// Characters after the prefix: ceil(96 / 5).
pub const VOUCHER_ID_BODY_CHARS: usize = 20;
const CROCKFORD_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct VoucherId {
    pub tranche_ordinal: u32,
    pub random: u64,
}

impl VoucherId {
    pub fn encode(self) -> String {
        encode_public_id(VOUCHER_ID_PREFIX, self.tranche_ordinal, self.random)
    }

    /// Parses an encoded ID; `None` for anything that is not exactly one.
    pub fn parse(text: &str) -> Option<VoucherId> {
        let (tranche_ordinal, random) = parse_public_id(VOUCHER_ID_PREFIX, text)?;
        Some(VoucherId {
            tranche_ordinal,
            random,
        })
    }
}

const REDEMPTION_ID_PREFIX: char = 'r';

/// A redemption's public ID: `r` + 20 base32 characters, like a voucher ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedemptionId {
    pub tranche_ordinal: u32,
    pub random: u64,
}

impl RedemptionId {
    pub fn encode(self) -> String {
        encode_public_id(REDEMPTION_ID_PREFIX, self.tranche_ordinal, self.random)
    }

    pub fn parse(text: &str) -> Option<RedemptionId> {
        let (tranche_ordinal, random) = parse_public_id(REDEMPTION_ID_PREFIX, text)?;
        Some(RedemptionId {
            tranche_ordinal,
            random,
        })
    }
}

fn encode_public_id(prefix: char, tranche_ordinal: u32, random: u64) -> String {
    let value = (u128::from(tranche_ordinal) << 64) | u128::from(random);
    let mut out = String::with_capacity(1 + VOUCHER_ID_BODY_CHARS);
    out.push(prefix);
    // 20 chars hold 100 bits; the top 4 are always zero.
    for i in (0..VOUCHER_ID_BODY_CHARS as u32).rev() {
        let index = ((value >> (i * BASE32_BITS_PER_CHAR)) & 0x1f) as usize;
        out.push(CROCKFORD_ALPHABET[index] as char);
    }
    out
}

fn parse_public_id(prefix: char, text: &str) -> Option<(u32, u64)> {
    let body = text.strip_prefix(prefix)?;
    if body.len() != VOUCHER_ID_BODY_CHARS {
        return None;
    }
    let mut value: u128 = 0;
    for byte in body.bytes() {
        let digit = CROCKFORD_ALPHABET.iter().position(|&c| c == byte)? as u128;
        value = (value << BASE32_BITS_PER_CHAR) | digit;
    }
    if value >> VOUCHER_ID_BITS != 0 {
        return None;
    }
    Some(((value >> 64) as u32, value as u64))
}

/// One issued voucher, as held in memory by its tranche. Its ID's random part, its county
/// and its claim time are the claim's: they are read from there rather than kept twice
/// (a restart rebuilds millions of these; see BENCHMARKS.md, "Restart").
#[derive(Clone, Debug, PartialEq)]
pub struct Voucher {
    tranche_ordinal: u32,
    /// The event that issued it: identity keys, request, location. A checkpoint copies
    /// only the open tail of the voucher log (`AppendLog::share`), so no `Arc` is needed.
    pub claim: VoucherClaimed,
    /// WAL sequence number of the record that issued it. An answer that shows
    /// this voucher waits until the WAL is durable up to here.
    pub seq: u64,
}

impl Voucher {
    /// The voucher `claim` issued in the tranche with this ordinal, by WAL record `seq`.
    pub fn new(tranche_ordinal: u32, claim: VoucherClaimed, seq: u64) -> Voucher {
        Voucher {
            tranche_ordinal,
            claim,
            seq,
        }
    }

    pub fn id(&self) -> VoucherId {
        VoucherId {
            tranche_ordinal: self.tranche_ordinal,
            random: self.claim.voucher_random,
        }
    }

    pub fn county(&self) -> CountyCode {
        self.claim.county
    }

    pub fn claimed_at(&self) -> UnixMillis {
        self.claim.claimed_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart rebuilds one of these per claim (with its claim inline): keep them small.
    #[test]
    fn a_voucher_with_its_claim_takes_96_bytes() {
        assert_eq!(std::mem::size_of::<VoucherClaimed>(), 80);
        assert_eq!(std::mem::size_of::<Voucher>(), 96);
    }

    #[test]
    fn round_trip() {
        for (ordinal, random) in [
            (0, 0),
            (1, 42),
            (u32::MAX, u64::MAX),
            (7, 0x8000_0000_0000_0001),
        ] {
            let id = VoucherId {
                tranche_ordinal: ordinal,
                random,
            };
            let text = id.encode();
            assert_eq!(text.len(), 1 + VOUCHER_ID_BODY_CHARS);
            assert_eq!(VoucherId::parse(&text), Some(id), "{text}");
        }
    }

    #[test]
    fn rejects_malformed() {
        let good = VoucherId {
            tranche_ordinal: 3,
            random: 99,
        }
        .encode();
        assert!(VoucherId::parse(&good[1..]).is_none());
        assert!(VoucherId::parse(&good[..good.len() - 1]).is_none());
        assert!(VoucherId::parse(&good.to_uppercase()).is_none());
        assert!(
            VoucherId::parse("vzzzzzzzzzzzzzzzzzzzz").is_none(),
            "over 96 bits"
        );
        assert!(
            VoucherId::parse("vi0000000000000000000").is_none(),
            "not in alphabet"
        );
        assert!(VoucherId::parse("").is_none());
    }
}
