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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub public_listen: String,
    pub admin_listen: String,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
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
    /// WAL writer: "mmap", "io_uring" or "auto" (the default: the faster safe writer).
    #[serde(default)]
    pub writer: RawWalWriter,
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
}
