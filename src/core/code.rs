//! Dynamic redemption codes: what a claimant's app shows and a merchant scans.
//!
//! A code is `c` + the voucher ID's 20 characters + 8 characters of
//! HMAC-SHA256(secret, voucher ID ‖ time step), base32. A step is
//! [`CODE_STEP_MS`] long and a code is accepted in its own step and the next
//! one, so it stays valid for 30 to 60 seconds. Verification needs only the
//! secret and the clock: no state is kept per code. A code used once cannot be
//! used again, because the voucher remembers the last step it was redeemed with.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::time::UnixMillis;
use super::voucher::{VOUCHER_ID_BODY_CHARS, VoucherId};

pub const CODE_STEP_MS: i64 = 30_000;
/// Steps a code stays valid for: its own and the next.
pub const CODE_VALID_STEPS: u64 = 2;
const CODE_PREFIX: char = 'c';
const MAC_CHARS: usize = 8;
const MAC_BITS: u32 = 40;
pub const CODE_CHARS: usize = 1 + VOUCHER_ID_BODY_CHARS + MAC_CHARS;
pub const MIN_CODE_SECRET_BYTES: usize = 32;
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// Not shaped like a code at all.
    Malformed,
    /// The MAC does not match any step still accepted: forged, or expired.
    InvalidOrExpired,
}

/// A code for `id` at `now`, and the instant it stops being accepted.
pub fn issue(secret: &[u8], id: VoucherId, now: UnixMillis) -> (String, UnixMillis) {
    let step = step_of(now);
    let mut code = String::with_capacity(CODE_CHARS);
    code.push(CODE_PREFIX);
    code.push_str(&id.encode()[1..]);
    code.push_str(&mac_text(secret, id, step));
    let expires = UnixMillis((step as i64 + CODE_VALID_STEPS as i64) * CODE_STEP_MS);
    (code, expires)
}

/// Checks a code at `now`; returns the voucher and the step it was issued in.
pub fn verify(secret: &[u8], code: &str, now: UnixMillis) -> Result<(VoucherId, u64), CodeError> {
    if code.len() != CODE_CHARS || !code.starts_with(CODE_PREFIX) || !code.is_ascii() {
        return Err(CodeError::Malformed);
    }
    let id = VoucherId::parse(&format!("v{}", &code[1..1 + VOUCHER_ID_BODY_CHARS]))
        .ok_or(CodeError::Malformed)?;
    let presented = &code[1 + VOUCHER_ID_BODY_CHARS..];
    let now_step = step_of(now);
    for back in 0..CODE_VALID_STEPS {
        let Some(step) = now_step.checked_sub(back) else {
            break;
        };
        if constant_time_eq(mac_text(secret, id, step).as_bytes(), presented.as_bytes()) {
            return Ok((id, step));
        }
    }
    Err(CodeError::InvalidOrExpired)
}

fn step_of(now: UnixMillis) -> u64 {
    (now.0.max(0) / CODE_STEP_MS) as u64
}

fn mac_text(secret: &[u8], id: VoucherId, step: u64) -> String {
    // HMAC accepts keys of any length; construction cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&id.tranche_ordinal.to_be_bytes());
    mac.update(&id.random.to_be_bytes());
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let mut bits = 0u64;
    for byte in &digest[..5] {
        bits = (bits << 8) | u64::from(*byte);
    }
    (0..MAC_CHARS)
        .rev()
        .map(|i| {
            BASE32[((bits >> (i as u32 * (MAC_BITS / MAC_CHARS as u32))) & 0x1f) as usize] as char
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

    #[test]
    fn codes_verify_within_their_window_only() {
        let id = VoucherId {
            tranche_ordinal: 3,
            random: 0xdead_beef,
        };
        let t0 = UnixMillis(1_800_000_000_000);
        let (code, expires) = issue(SECRET, id, t0);
        assert_eq!(code.len(), CODE_CHARS);
        assert_eq!(
            verify(SECRET, &code, t0),
            Ok((id, (t0.0 / CODE_STEP_MS) as u64))
        );
        assert!(
            verify(SECRET, &code, UnixMillis(expires.0 - 1)).is_ok(),
            "valid until expiry"
        );
        assert_eq!(
            verify(SECRET, &code, expires),
            Err(CodeError::InvalidOrExpired)
        );
        assert!(
            expires.0 - t0.0 >= CODE_STEP_MS && expires.0 - t0.0 <= 2 * CODE_STEP_MS,
            "30 to 60 s"
        );
        assert_eq!(
            verify(b"another-secret-another-secret-12345", &code, t0),
            Err(CodeError::InvalidOrExpired)
        );
        let mut forged = code.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify(SECRET, std::str::from_utf8(&forged).expect("ascii"), t0),
            Err(CodeError::InvalidOrExpired)
        );
        assert_eq!(verify(SECRET, "c123", t0), Err(CodeError::Malformed));
        assert_eq!(
            verify(SECRET, &code.replace('c', "x"), t0),
            Err(CodeError::Malformed)
        );
    }
}
