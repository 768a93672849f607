//! Identity keys and their digests.
//!
//! A claimant is identified by a platform `user_id` plus optional hashes of a
//! national ID number and a phone number, and an optional device ID. Two claims
//! come from "the same person" when ANY key matches, which is how Chinese
//! voucher platforms define it, so every key is indexed separately.
//!
//! The dedupe sets store 128-bit keyed SipHash digests instead of the strings:
//! four lookups per claim stay cheap and the sets stay small. The key is random
//! per process (the WAL keeps the raw strings and replay recomputes digests), so
//! nobody outside the process can construct a colliding key on purpose. The
//! tranche indexes keep 96 bits of each digest (`digest_index.rs`): an accidental
//! collision among even 10^8 keys has probability about 10^-13.

use std::hash::{BuildHasher, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

/// The keys that identify one claimant. Raw ID or phone numbers never reach
/// this type: the API layer accepts only hashes for those.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IdentityKeys<'a> {
    pub user_id: &'a str,
    pub id_hash: Option<&'a str>,
    pub phone_hash: Option<&'a str>,
    pub device_id: Option<&'a str>,
}

/// Which namespace a key lives in; part of the digest input so that a
/// `device_id` equal to someone's `user_id` is a different key.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
enum KeyKind {
    User = 1,
    IdHash = 2,
    PhoneHash = 3,
    Device = 4,
    Request = 5,
    Order = 6,
}

/// The kinds of identity key a revocation can name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IdentityKeyKind {
    UserId,
    IdHash,
    PhoneHash,
    DeviceId,
}

/// A 128-bit keyed digest of one identity key or request ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub u128);

/// Identity digests for one claim: the user key plus up to three optional keys.
pub const MAX_KEYS_PER_IDENTITY: usize = 4;

/// The secret SipHash key for digests. Chosen at random by the daemon at start.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DigestKey {
    k0: u64,
    k1: u64,
}

impl DigestKey {
    pub fn new(k0: u64, k1: u64) -> DigestKey {
        DigestKey { k0, k1 }
    }

    fn digest(&self, kind: KeyKind, value: &str) -> KeyDigest {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write_u8(kind as u8);
        hasher.write(value.as_bytes());
        KeyDigest(hasher.finish128().as_u128())
    }

    /// Digests of every key present in `keys`, user key first.
    pub fn identity_digests(&self, keys: &IdentityKeys<'_>) -> IdentityDigests {
        let mut out = IdentityDigests {
            digests: [KeyDigest(0); MAX_KEYS_PER_IDENTITY],
            len: 0,
        };
        out.push(self.digest(KeyKind::User, keys.user_id));
        if let Some(v) = keys.id_hash {
            out.push(self.digest(KeyKind::IdHash, v));
        }
        if let Some(v) = keys.phone_hash {
            out.push(self.digest(KeyKind::PhoneHash, v));
        }
        if let Some(v) = keys.device_id {
            out.push(self.digest(KeyKind::Device, v));
        }
        out
    }

    pub fn request_digest(&self, request_id: &str) -> KeyDigest {
        self.digest(KeyKind::Request, request_id)
    }

    /// Digest of a (merchant, order) pair; the length prefix keeps
    /// ("ab", "c") and ("a", "bc") apart.
    pub fn order_digest(&self, merchant_id: &str, order_id: &str) -> KeyDigest {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write_u8(KeyKind::Order as u8);
        hasher.write_u64(merchant_id.len() as u64);
        hasher.write(merchant_id.as_bytes());
        hasher.write(order_id.as_bytes());
        KeyDigest(hasher.finish128().as_u128())
    }

    /// Digest of one raw identity key of a given kind, for revocation by identity.
    pub fn key_digest(&self, kind: IdentityKeyKind, value: &str) -> KeyDigest {
        let kind = match kind {
            IdentityKeyKind::UserId => KeyKind::User,
            IdentityKeyKind::IdHash => KeyKind::IdHash,
            IdentityKeyKind::PhoneHash => KeyKind::PhoneHash,
            IdentityKeyKind::DeviceId => KeyKind::Device,
        };
        self.digest(kind, value)
    }
}

/// A fixed-capacity list of identity digests (no allocation on the claim path).
#[derive(Copy, Clone, Debug)]
pub struct IdentityDigests {
    digests: [KeyDigest; MAX_KEYS_PER_IDENTITY],
    len: usize,
}

impl IdentityDigests {
    fn push(&mut self, digest: KeyDigest) {
        assert!(self.len < MAX_KEYS_PER_IDENTITY, "too many identity keys");
        self.digests[self.len] = digest;
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[KeyDigest] {
        &self.digests[..self.len]
    }
}

/// Digests are already uniformly distributed keyed hashes, so the hash maps
/// that store them use the low 64 bits directly instead of hashing again.
#[derive(Copy, Clone, Debug, Default)]
pub struct DigestHasherBuilder;

impl BuildHasher for DigestHasherBuilder {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHasherBuilder`].
#[derive(Copy, Clone, Debug, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys; fold bytes in so the hasher stays
        // correct (if slow) for any key type.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 ^= value as u64;
    }
    fn write_u64(&mut self, value: u64) {
        // Voucher randoms are CSPRNG output, already uniform.
        self.0 ^= value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_separate_equal_strings() {
        let key = DigestKey::new(1, 2);
        let keys = IdentityKeys {
            user_id: "abc",
            id_hash: None,
            phone_hash: None,
            device_id: Some("abc"),
        };
        let d = key.identity_digests(&keys);
        assert_eq!(d.as_slice().len(), 2);
        assert_ne!(d.as_slice()[0], d.as_slice()[1]);
    }

    #[test]
    fn digest_depends_on_key() {
        let a = DigestKey::new(1, 2).request_digest("r");
        let b = DigestKey::new(3, 4).request_digest("r");
        assert_ne!(a, b);
    }
}
