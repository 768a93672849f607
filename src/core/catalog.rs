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
}

impl<T> Default for Catalog<T> {
    fn default() -> Self {
        Catalog {
            campaigns: BTreeMap::new(),
            ordinal_by_id: HashMap::new(),
            tranches: Vec::new(),
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

    /// Adds a tranche under the next ordinal, which must be `ordinal`.
    pub fn apply_new_tranche(&mut self, ordinal: u32, tranche_id: &str, tranche: T) {
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
    }
}

/// Longest campaign or tranche ID accepted.
pub const MAX_OBJECT_ID_BYTES: usize = 64;
/// Longest campaign name accepted.
pub const MAX_CAMPAIGN_NAME_BYTES: usize = 200;

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
