//! The config file as the operator wrote it. Unknown keys are errors; every
//! optional key has a documented default here.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub admin: RawAdmin,
    pub storage: RawStorage,
    pub regions: RawRegions,
    pub counties: Vec<RawCounty>,
    #[serde(default)]
    pub campaigns: Vec<RawCampaign>,
    #[serde(default)]
    pub tranches: Vec<RawTranche>,
    #[serde(default)]
    pub lifecycle: RawLifecycle,
    #[serde(default)]
    pub merchants: RawMerchants,
}

/// Redemption codes and settlement timing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// Environment variable holding the secret that signs redemption codes.
    pub code_secret_env: Option<String>,
    /// File holding that secret (first line). Default: `<data_dir>/redemption-code.secret`, created if missing.
    pub code_secret_file: Option<String>,
    /// Create `code_secret_file` with a random secret (mode 0600) if it is missing.
    pub create_code_secret_file: Option<bool>,
    /// How often to settle tranches whose window or validity has ended.
    pub settle_check_interval_ms: Option<u64>,
}

/// What merchant imports may contain. Both lists keep their order for display.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMerchants {
    pub industries: Vec<String>,
    pub platforms: Vec<String>,
}

impl Default for RawMerchants {
    fn default() -> Self {
        RawMerchants {
            industries: ["餐饮", "零售", "商超", "家电", "汽车", "文旅", "其他"]
                .map(String::from)
                .to_vec(),
            platforms: ["alipay", "wechat", "unionpay", "meituan"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub public_listen: String,
    pub admin_listen: String,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    /// How long a request's body may take to arrive once its headers have.
    pub body_read_timeout_ms: u64,
    pub max_inflight_claims: usize,
    pub max_body_bytes: usize,
    pub drain_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            public_listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            max_inflight_claims: 16_384,
            max_body_bytes: 8 * 1024,
            drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Name of an environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// A file holding the bearer token (first line).
    pub token_file: Option<String>,
    /// Create `token_file` with a random token (mode 0600) if it is missing.
    #[serde(default)]
    pub create_token_file: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub data_dir: String,
    #[serde(default = "default_segment_size_bytes")]
    pub segment_size_bytes: u64,
    #[serde(default)]
    pub batch_window_us: u64,
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Write a snapshot once this many WAL records follow the last one (0: only at shutdown).
    #[serde(default = "default_checkpoint_every_records")]
    pub checkpoint_every_records: u64,
    /// How often to check whether a snapshot is due.
    #[serde(default = "default_checkpoint_check_interval_ms")]
    pub checkpoint_check_interval_ms: u64,
    /// WAL writer: "mmap", "io_uring" or "auto" (the default: the faster safe writer).
    #[serde(default)]
    pub writer: RawWalWriter,
    /// Vouchers all tranches together have their in-memory indexes made for when they are
    /// defined (each up to 1,048,576, its quota); later tranches grow theirs as claims arrive.
    #[serde(default = "default_presize_budget_vouchers")]
    pub presize_budget_vouchers: u64,
}

fn default_presize_budget_vouchers() -> u64 {
    crate::core::catalog::DEFAULT_PRESIZE_BUDGET_VOUCHERS
}

fn default_checkpoint_every_records() -> u64 {
    1_000_000
}
fn default_checkpoint_check_interval_ms() -> u64 {
    5_000
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawWalWriter {
    Mmap,
    IoUring,
    #[default]
    Auto,
}

fn default_segment_size_bytes() -> u64 {
    64 << 20
}
fn default_max_batch_records() -> usize {
    4_096
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    Geojson,
    NearestSeat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegions {
    pub source: RegionKind,
    pub geojson_path: Option<String>,
    pub max_seat_distance_km: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCounty {
    pub adcode: u32,
    pub name: String,
    pub seat: Option<[f64; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCampaign {
    pub id: String,
    pub name: String,
    pub budget_fen: u64,
    /// restore_if_valid (default), prorata or no_restore.
    #[serde(default)]
    pub refund_policy: RawRefundPolicy,
    /// none (default) or next_tranche.
    #[serde(default)]
    pub rollover: RawRollover,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RawRefundPolicy {
    #[default]
    RestoreIfValid,
    Prorata,
    NoRestore,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RawRollover {
    #[default]
    None,
    NextTranche,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTranche {
    pub id: String,
    pub campaign_id: String,
    pub opens_at: String,
    pub closes_at: String,
    pub expires_at: String,
    pub face_value_fen: u64,
    #[serde(default)]
    pub threshold_fen: u64,
    pub quotas: BTreeMap<String, u32>,
    #[serde(default)]
    pub redeem_anywhere_in_city: bool,
    /// Industries where vouchers may be redeemed; empty or absent means all.
    #[serde(default)]
    pub industries: Vec<String>,
}
