//! Redemption idempotency: each (merchant, order) pair redeems at most once.
//!
//! A merchant's point-of-sale retries a redemption after a timeout with the
//! same `order_id`; the retry must get the original answer, and the same order
//! must never take a second voucher (that would discount one purchase twice).
//! The book spans all tranches, so the daemon checks it and updates it under
//! one lock taken before the tranche's.

use std::collections::HashMap;

use super::identity::{DigestHasherBuilder, DigestKey, KeyDigest};

/// Where a (merchant, order) pair was redeemed, and with what.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OrderEntry {
    pub tranche_ordinal: u32,
    pub redemption_index: u32,
    pub voucher_random: u64,
    pub order_amount_fen: u64,
}

#[derive(Clone, Debug)]
pub struct OrderBook {
    key: DigestKey,
    entries: HashMap<KeyDigest, OrderEntry, DigestHasherBuilder>,
}

/// What an earlier redemption of the same order means for a new request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderLookup {
    New,
    /// Same voucher, same amount: answer with the earlier redemption.
    Replay(OrderEntry),
    /// Same order ID, different voucher or amount.
    Reused,
}

impl OrderBook {
    pub fn new(key: DigestKey) -> OrderBook {
        OrderBook {
            key,
            entries: HashMap::default(),
        }
    }

    pub fn lookup(
        &self,
        merchant_id: &str,
        order_id: &str,
        tranche_ordinal: u32,
        voucher_random: u64,
        order_amount_fen: u64,
    ) -> OrderLookup {
        match self
            .entries
            .get(&self.key.order_digest(merchant_id, order_id))
        {
            None => OrderLookup::New,
            Some(e)
                if e.tranche_ordinal == tranche_ordinal
                    && e.voucher_random == voucher_random
                    && e.order_amount_fen == order_amount_fen =>
            {
                OrderLookup::Replay(*e)
            }
            Some(_) => OrderLookup::Reused,
        }
    }

    pub fn record(&mut self, merchant_id: &str, order_id: &str, entry: OrderEntry) {
        let previous = self
            .entries
            .insert(self.key.order_digest(merchant_id, order_id), entry);
        assert!(
            previous.is_none(),
            "order {order_id} of {merchant_id} redeemed twice"
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
