//! Setting up a run through voucherd's admin API (`PUT /admin/v1/campaigns/{id}`,
//! `PUT /admin/v1/tranches/{id}`) and reading the tranche view afterwards.

use std::net::SocketAddr;
use std::path::Path;

use voucherd::core::UnixMillis;
use voucherd::wire_time::format_beijing;

use crate::http;

/// How long the tranche stays open after t0, and how long its vouchers live.
const TRANCHE_OPEN_MS: i64 = 2 * 3600 * 1000;
const VOUCHER_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
pub const THRESHOLD_FEN: u64 = 10_000;

/// The admin bearer token: from a file if given, else from an environment variable.
pub fn read_token(env_var: &str, file: Option<&Path>) -> Result<String, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
        return Ok(text.trim().to_owned());
    }
    std::env::var(env_var).map_err(|_| {
        format!("no admin token: set {env_var} or pass --admin-token-file (needed to create the campaign and tranche)")
    })
}

/// A campaign and tranche the tool creates for its run.
#[derive(Clone, Debug)]
pub struct TrancheDefinition {
    pub campaign_id: String,
    pub tranche_id: String,
    pub opens_at: UnixMillis,
    pub face_value_fen: u64,
    /// `(adcode, quota)`.
    pub quotas: Vec<(u32, u64)>,
}

impl TrancheDefinition {
    pub fn total_quota(&self) -> u64 {
        self.quotas.iter().map(|(_, q)| q).sum()
    }
}

/// Creates the campaign (budget = quota × face value) and the tranche.
pub async fn define(admin: SocketAddr, token: &str, def: &TrancheDefinition) -> Result<(), String> {
    let host = admin.to_string();
    let campaign = serde_json::json!({
        "name": format!("loadtest {}", def.campaign_id),
        "budget_fen": def.total_quota() * def.face_value_fen,
    });
    put(
        admin,
        &http::request(
            "PUT",
            &format!("/admin/v1/campaigns/{}", def.campaign_id),
            &host,
            Some(token),
            campaign.to_string().as_bytes(),
        ),
        "campaign",
    )
    .await?;
    let quotas: serde_json::Map<String, serde_json::Value> = def
        .quotas
        .iter()
        .map(|(code, q)| (code.to_string(), serde_json::Value::from(*q)))
        .collect();
    let tranche = serde_json::json!({
        "campaign_id": def.campaign_id,
        "opens_at": format_beijing(def.opens_at),
        "closes_at": format_beijing(def.opens_at.plus_ms(TRANCHE_OPEN_MS)),
        "expires_at": format_beijing(def.opens_at.plus_ms(TRANCHE_OPEN_MS + VOUCHER_LIFETIME_MS)),
        "face_value_fen": def.face_value_fen,
        "threshold_fen": THRESHOLD_FEN,
        "quotas": quotas,
    });
    put(
        admin,
        &http::request(
            "PUT",
            &format!("/admin/v1/tranches/{}", def.tranche_id),
            &host,
            Some(token),
            tranche.to_string().as_bytes(),
        ),
        "tranche",
    )
    .await
}

async fn put(addr: SocketAddr, request: &[u8], what: &str) -> Result<(), String> {
    let (status, body) = http::once(addr, request)
        .await
        .map_err(|e| format!("creating the {what} at {addr}: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "creating the {what}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// `GET /v1/tranches/{id}` on the public listener.
pub async fn tranche_view(
    public: SocketAddr,
    tranche_id: &str,
) -> Result<serde_json::Value, String> {
    let request = http::request(
        "GET",
        &format!("/v1/tranches/{tranche_id}"),
        &public.to_string(),
        None,
        b"",
    );
    let (status, body) = http::once(public, &request)
        .await
        .map_err(|e| format!("reading tranche {tranche_id}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "reading tranche {tranche_id}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("tranche view is not JSON: {e}"))
}

/// Waits until `GET /readyz` answers 200, or the deadline passes.
pub async fn wait_ready(public: SocketAddr, deadline: std::time::Duration) -> Result<(), String> {
    let request = http::request("GET", "/readyz", &public.to_string(), None, b"");
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok((200, _)) = http::once(public, &request).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(format!("{public} not ready after {deadline:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Splits `total` over `weights` (largest remainders), so the parts add up exactly.
pub fn split_quota(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    assert!(sum > 0, "weights must not all be zero");
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|w| (u128::from(total) * u128::from(*w) / u128::from(sum)) as u64)
        .collect();
    let mut short = total - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse((u128::from(total) * u128::from(weights[i])) % u128::from(sum))
    });
    for i in order.into_iter().cycle() {
        if short == 0 {
            break;
        }
        parts[i] += 1;
        short -= 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_split_adds_up() {
        assert_eq!(split_quota(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_quota(100_000, &[1; 13]).iter().sum::<u64>(), 100_000);
        assert_eq!(split_quota(7, &[0, 5]), vec![0, 7]);
    }
}
