//! After a run: the tranche's own view (`GET /v1/tranches/{id}`) against
//! what the tool saw. A violation is a broken money invariant:
//! - over-issue: a county issued more than its quota;
//! - an identity answered `201` twice, or one voucher ID given twice;
//! - issued + remaining ≠ quota for a county (the tool counts the `201`s it
//!   received; if some requests got no answer, those may hold vouchers the tool
//!   never saw, so the equality is only checked as "not more than");
//! - the view's quotas differ from what the tool defined.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

/// One `201` the tool received.
#[derive(Clone, Debug)]
pub struct Win {
    pub identity: u32,
    pub voucher_id: String,
    pub county: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CountyCheck {
    pub county: String,
    pub quota: u64,
    pub remaining: i64,
    /// `201`s the tool received for this county.
    pub issued_seen: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub counties: Vec<CountyCheck>,
}

/// Checks a tranche view against the `201`s received. `defined` is the
/// per-county quota the tool asked for, when it created the tranche;
/// `unanswered` counts requests that never got an answer.
pub fn verify(
    view: &Value,
    wins: &[Win],
    defined: Option<&[(u32, u64)]>,
    unanswered: u64,
) -> Verification {
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let mut seen_by_county: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_identity: HashMap<u32, u32> = HashMap::new();
    let mut voucher_ids: HashSet<&str> = HashSet::new();
    for w in wins {
        *seen_by_county.entry(w.county.as_str()).or_default() += 1;
        let n = by_identity.entry(w.identity).or_default();
        *n += 1;
        if *n == 2 {
            violations.push(format!(
                "identity {} received a second 201 (voucher {})",
                w.identity, w.voucher_id
            ));
        }
        if !voucher_ids.insert(w.voucher_id.as_str()) {
            violations.push(format!("voucher {} was issued twice", w.voucher_id));
        }
    }

    let mut counties = Vec::new();
    let Some(list) = view["counties"].as_array() else {
        violations.push("the tranche view has no counties".into());
        return finish(violations, notes, counties);
    };
    let mut quota_sum = 0u64;
    let mut remaining_sum = 0i64;
    for c in list {
        let county = c["county"].as_str().unwrap_or("?").to_owned();
        let quota = c["quota"].as_u64().unwrap_or(0);
        let remaining = c["remaining"].as_i64().unwrap_or(-1);
        let issued_seen = seen_by_county.remove(county.as_str()).unwrap_or(0);
        quota_sum += quota;
        remaining_sum += remaining;
        if remaining < 0 || remaining as u64 > quota {
            violations.push(format!(
                "county {county}: remaining {remaining} is outside 0..={quota}"
            ));
        }
        if issued_seen > quota {
            violations.push(format!(
                "county {county}: over-issue, {issued_seen} vouchers issued against a quota of {quota}"
            ));
        }
        let issued_by_server = quota as i64 - remaining;
        if (issued_seen as i64) > issued_by_server {
            violations.push(format!(
                "county {county}: {issued_seen} 201s received but the server counts {issued_by_server} issued"
            ));
        } else if (issued_seen as i64) < issued_by_server {
            if unanswered == 0 {
                violations.push(format!(
                    "county {county}: issued {issued_seen} + remaining {remaining} != quota {quota}: vouchers issued without a 201"
                ));
            } else {
                notes.push(format!(
                    "county {county}: {} vouchers issued that the tool never saw acknowledged ({unanswered} requests had no answer)",
                    issued_by_server - issued_seen as i64
                ));
            }
        }
        if let Some(defined) = defined {
            match defined.iter().find(|(code, _)| code.to_string() == county) {
                Some((_, want)) if *want != quota => violations.push(format!(
                    "county {county}: quota {quota} in the view, {want} defined"
                )),
                None => violations.push(format!("county {county} was not defined by the tool")),
                Some(_) => {}
            }
        }
        counties.push(CountyCheck {
            county,
            quota,
            remaining,
            issued_seen,
        });
    }
    for (county, n) in seen_by_county {
        violations.push(format!(
            "{n} vouchers issued in county {county}, which the tranche does not have"
        ));
    }
    if view["quota"].as_u64() != Some(quota_sum) {
        violations.push(format!(
            "tranche quota {} is not the sum of its counties' {quota_sum}",
            view["quota"]
        ));
    }
    if view["remaining"].as_i64() != Some(remaining_sum) {
        violations.push(format!(
            "tranche remaining {} is not the sum of its counties' {remaining_sum}",
            view["remaining"]
        ));
    }
    if let Some(defined) = defined
        && defined.len() != counties.len()
    {
        violations.push(format!(
            "{} counties defined, {} in the view",
            defined.len(),
            counties.len()
        ));
    }
    finish(violations, notes, counties)
}

fn finish(violations: Vec<String>, notes: Vec<String>, counties: Vec<CountyCheck>) -> Verification {
    Verification {
        ok: violations.is_empty(),
        violations,
        notes,
        counties,
    }
}
