//! The catalog: campaigns, and the tranches that belong to them.
//!
//! Tranches are numbered densely (their ordinal) in the order they were first
//! defined; the ordinal is part of every voucher ID. The catalog is generic over
//! how a tranche is held so the daemon can keep each tranche behind its own lock
//! while the core stays free of locking.

use std::collections::{BTreeMap, HashMap};

use super::event::CampaignSpec;

pub const MAX_CAMPAIGNS: usize = 1_000;
pub const MAX_TRANCHES: usize = 10_000;
/// Vouchers that all tranches together have their arrays made for when they are defined
/// ([`super::tranche::TrancheSpec::presized_vouchers`]), unless the config says otherwise
/// (`storage.presize_budget_vouchers`): eight tranches at the per-tranche cap, 1.5 GiB
/// of indexes written at definition. Past it, a new tranche starts small and
/// its arrays grow as its claims arrive, as a tranche past its presized size does. Without
/// it, the 10,000 tranches allowed could ask for 192 MiB each, 1.9 TB, from an admin's
/// definitions or from a forged data directory, before anything else was checked. Sizes
/// only, never answers.
pub const DEFAULT_PRESIZE_BUDGET_VOUCHERS: u64 = 8 * super::tranche::PRESIZED_VOUCHERS_MAX;
/// The largest presize budget a config may set: 64 tranches at the cap, about 14 GiB.
pub const MAX_PRESIZE_BUDGET_VOUCHERS: u64 = 64 * super::tranche::PRESIZED_VOUCHERS_MAX;

/// A campaign as the catalog holds it.
pub type Campaign = CampaignSpec;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CatalogError {
    UnknownCampaign,
    TooManyCampaigns,
    TooManyTranches,
}

#[derive(Debug)]
pub struct Catalog<T> {
    campaigns: BTreeMap<String, Campaign>,
    ordinal_by_id: HashMap<String, u32>,
    tranches: Vec<T>,
    /// Vouchers all tranches may be presized for ([`DEFAULT_PRESIZE_BUDGET_VOUCHERS`]).
    presize_budget_vouchers: u64,
    /// Vouchers the tranches so far were presized for; at most `presize_budget_vouchers`.
    presized_vouchers: u64,
}

impl<T> Default for Catalog<T> {
    fn default() -> Self {
        Catalog::with_presize_budget(DEFAULT_PRESIZE_BUDGET_VOUCHERS)
    }
}

impl<T> Catalog<T> {
    /// An empty catalog whose tranches are presized for `budget_vouchers` at most, together.
    pub fn with_presize_budget(budget_vouchers: u64) -> Catalog<T> {
        Catalog {
            campaigns: BTreeMap::new(),
            ordinal_by_id: HashMap::new(),
            tranches: Vec::new(),
            presize_budget_vouchers: budget_vouchers,
            presized_vouchers: 0,
        }
    }
}

impl<T> Catalog<T> {
    pub fn campaign(&self, campaign_id: &str) -> Option<&Campaign> {
        self.campaigns.get(campaign_id)
    }

    pub fn campaigns(&self) -> impl Iterator<Item = &Campaign> {
        self.campaigns.values()
    }

    /// Whether defining `spec` is allowed; `Ok(false)` when nothing would change.
    pub fn decide_campaign(&self, spec: &CampaignSpec) -> Result<bool, CatalogError> {
        match self.campaigns.get(&spec.campaign_id) {
            Some(existing) => Ok(existing != spec),
            None if self.campaigns.len() >= MAX_CAMPAIGNS => Err(CatalogError::TooManyCampaigns),
            None => Ok(true),
        }
    }

    pub fn apply_campaign(&mut self, spec: &CampaignSpec) {
        self.campaigns
            .insert(spec.campaign_id.clone(), spec.clone());
    }

    pub fn tranche(&self, tranche_id: &str) -> Option<&T> {
        let ordinal = *self.ordinal_by_id.get(tranche_id)?;
        Some(&self.tranches[ordinal as usize])
    }

    pub fn tranche_by_ordinal(&self, ordinal: u32) -> Option<&T> {
        self.tranches.get(ordinal as usize)
    }

    pub fn tranches(&self) -> &[T] {
        &self.tranches
    }

    /// The ordinal a new tranche would get, if one may be added to `campaign_id`.
    pub fn decide_new_tranche(&self, campaign_id: &str) -> Result<u32, CatalogError> {
        self.check_campaign(campaign_id)?;
        if self.tranches.len() >= MAX_TRANCHES {
            return Err(CatalogError::TooManyTranches);
        }
        Ok(u32::try_from(self.tranches.len()).expect("MAX_TRANCHES fits u32"))
    }

    pub fn check_campaign(&self, campaign_id: &str) -> Result<(), CatalogError> {
        if self.campaigns.contains_key(campaign_id) {
            Ok(())
        } else {
            Err(CatalogError::UnknownCampaign)
        }
    }

    /// What is left of the presize budget: the `allowance` for the next tranche's
    /// [`super::tranche::TrancheSpec::presized_vouchers`].
    pub fn presize_allowance(&self) -> u64 {
        self.presize_budget_vouchers - self.presized_vouchers
    }

    /// The presize budget (vouchers, over all tranches).
    pub fn presize_budget_vouchers(&self) -> u64 {
        self.presize_budget_vouchers
    }

    /// Adds a tranche under the next ordinal, which must be `ordinal`, made with arrays for
    /// `presized_vouchers` (at most [`Self::presize_allowance`]).
    pub fn apply_new_tranche(
        &mut self,
        ordinal: u32,
        tranche_id: &str,
        tranche: T,
        presized_vouchers: u64,
    ) {
        assert!(
            presized_vouchers <= self.presize_allowance(),
            "tranche {tranche_id} presized past the catalog's budget"
        );
        assert_eq!(
            ordinal as usize,
            self.tranches.len(),
            "tranche ordinals are dense"
        );
        let previous = self.ordinal_by_id.insert(tranche_id.to_owned(), ordinal);
        assert!(
            previous.is_none(),
            "tranche {tranche_id} defined twice as new"
        );
        self.tranches.push(tranche);
        self.presized_vouchers += presized_vouchers;
    }
}

/// Longest campaign or tranche ID accepted.
pub const MAX_OBJECT_ID_BYTES: usize = 64;
/// Longest campaign name accepted.
pub const MAX_CAMPAIGN_NAME_BYTES: usize = 200;
/// Largest campaign budget accepted: ten billion yuan. One limit for the admin
/// API and the config, so that neither takes a campaign the other refuses.
pub const MAX_CAMPAIGN_BUDGET_FEN: u64 = 1_000_000_000_000;

/// Campaign and tranche IDs: 1 to 64 of `A-Z a-z 0-9 _ - .`, so they are safe
/// in URLs, file names and metric labels without escaping.
pub fn check_object_id(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_OBJECT_ID_BYTES {
        return Err(format!("must be 1 to {MAX_OBJECT_ID_BYTES} characters"));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("may contain only A-Z, a-z, 0-9, '_', '-' and '.'".into());
    }
    Ok(())
}

/// A campaign budget: at most [`MAX_CAMPAIGN_BUDGET_FEN`].
pub fn check_campaign_budget(budget_fen: u64) -> Result<(), String> {
    if budget_fen > MAX_CAMPAIGN_BUDGET_FEN {
        return Err(format!("must be at most {MAX_CAMPAIGN_BUDGET_FEN}"));
    }
    Ok(())
}

pub fn check_campaign_name(text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > MAX_CAMPAIGN_NAME_BYTES {
        return Err(format!(
            "must be 1 to {MAX_CAMPAIGN_NAME_BYTES} bytes and not blank"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_budgets_up_to_the_limit_are_accepted() {
        assert_eq!(check_campaign_budget(0), Ok(()));
        assert_eq!(check_campaign_budget(MAX_CAMPAIGN_BUDGET_FEN), Ok(()));
        let err = check_campaign_budget(MAX_CAMPAIGN_BUDGET_FEN + 1).unwrap_err();
        assert!(err.contains("1000000000000"), "{err}");
        assert!(check_campaign_budget(u64::MAX).is_err());
    }
}
