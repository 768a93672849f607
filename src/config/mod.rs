//! Configuration: TOML as the operator wrote it ([`raw`]), then validated and
//! resolved into [`Config`], which the rest of the daemon trusts.
//!
//! Every problem is collected before any is reported; each names the file, the
//! key and the reason. A bad configuration exits with code 64 (EX_USAGE).
//! Relative paths are resolved against the directory of the config file.

mod raw;
mod token;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::catalog::{check_campaign_budget, check_campaign_name, check_object_id};
use crate::core::event::{RefundPolicy, Rollover};
use crate::core::merchant::{
    MAX_INDUSTRIES, MAX_PLATFORMS, check_industry_name, check_platform_name,
};
use crate::core::{CampaignSpec, CountyCode, TrancheSpec, UnixMillis};
use crate::wire_time::{check_accepted_time, parse_rfc3339};

pub use token::{AdminToken, CodeSecret};

/// Exit code for a configuration the daemon refuses (sysexits EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// Hard ceiling for request bodies; the configured limit may only be lower.
pub const MAX_BODY_BYTES_CEILING: usize = 8 * 1024;
pub const MAX_CONNECTIONS_CEILING: usize = 100_000;
pub const MAX_INFLIGHT_CLAIMS_CEILING: usize = 1_000_000;
pub const MAX_COUNTIES: usize = 256;
pub use crate::wal::{MAX_SEGMENT_SIZE_BYTES, MIN_SEGMENT_SIZE_BYTES, WalWriter};
pub const MAX_BATCH_RECORDS_CEILING: usize = crate::wal::MAX_BATCH_RECORDS;
pub const MAX_BATCH_WINDOW_US: u64 = 100_000;
pub const MAX_CHECKPOINT_EVERY_RECORDS: u64 = 1_000_000_000;
const DEFAULT_SETTLE_CHECK_INTERVAL_MS: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct Config {
    pub source_path: PathBuf,
    pub server: ServerConfig,
    pub admin_token: AdminToken,
    pub storage: StorageConfig,
    pub regions: RegionSource,
    pub counties: Vec<CountyConfig>,
    pub campaigns: Vec<CampaignSpec>,
    pub tranches: Vec<TrancheSpec>,
    pub lifecycle: LifecycleConfig,
    pub merchants: MerchantsConfig,
}

#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    pub code_secret: CodeSecret,
    pub settle_check_interval: Duration,
}

/// The industries and platforms merchant imports may name.
#[derive(Clone, Debug)]
pub struct MerchantsConfig {
    pub industries: Vec<String>,
    pub platforms: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub public_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// A body that has not fully arrived this long after its headers is answered 408 and
    /// its connection closed, so a client cannot hold a connection slot by never finishing.
    pub body_read_timeout: Duration,
    pub max_inflight_claims: usize,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_size_bytes: u64,
    pub batch_window: Duration,
    pub max_batch_records: usize,
    pub checkpoint_every_records: u64,
    pub checkpoint_check_interval: Duration,
    pub writer: WalWriter,
    /// See [`crate::core::catalog::DEFAULT_PRESIZE_BUDGET_VOUCHERS`].
    pub presize_budget_vouchers: u64,
}

#[derive(Clone, Debug)]
pub enum RegionSource {
    /// Official boundaries: a GeoJSON FeatureCollection.
    GeoJson { path: PathBuf },
    /// Approximate: the nearest county seat within `max_distance_m`.
    NearestSeat { max_distance_m: f64 },
}

#[derive(Clone, Debug)]
pub struct CountyConfig {
    pub code: CountyCode,
    pub name: String,
    /// Seat of government, GCJ-02 `[lng, lat]`; required in nearest-seat mode.
    pub seat: Option<[f64; 2]>,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
    }
}

/// All problems found in a config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a config file. `now` resolves relative times
/// such as `now+5s`; `env` looks up environment variables.
pub fn load(
    path: &Path,
    now: UnixMillis,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let one = |key: &str, reason: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            key: key.to_owned(),
            reason,
        }])
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| one("(file)", format!("cannot read: {e}")))?;
    let raw: raw::RawConfig =
        toml::from_str(&text).map_err(|e| one(&toml_key(&e), toml_reason(&e)))?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    let mut v = Validator {
        file: path.to_owned(),
        base,
        now,
        errors: Vec::new(),
    };
    let config = v.config(raw, env);
    match config {
        Some(config) if v.errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(v.errors)),
    }
}

fn toml_key(error: &toml::de::Error) -> String {
    // The toml error's message names the offending key; its span gives a position.
    error
        .span()
        .map(|s| format!("(byte {})", s.start))
        .unwrap_or_else(|| "(document)".to_owned())
}

fn toml_reason(error: &toml::de::Error) -> String {
    error.message().trim().to_owned()
}

struct Validator {
    file: PathBuf,
    base: PathBuf,
    now: UnixMillis,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn fail(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    fn config(
        &mut self,
        raw: raw::RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Config> {
        let server = self.server(raw.server);
        let storage = self.storage(raw.storage);
        let admin_token = match token::resolve(&raw.admin, &self.base, env) {
            Ok(t) => Some(t),
            Err((key, reason)) => {
                self.fail(key, reason);
                None
            }
        };
        let regions = self.regions(raw.regions);
        let counties = self.counties(raw.counties, regions.as_ref());
        let campaigns = self.campaigns(raw.campaigns);
        let tranches = self.tranches(raw.tranches, &counties, &campaigns);
        let lifecycle = storage
            .as_ref()
            .and_then(|s| self.lifecycle(&raw.lifecycle, &s.data_dir, env));
        let merchants = self.merchants(raw.merchants);
        Some(Config {
            source_path: self.file.clone(),
            server: server?,
            admin_token: admin_token?,
            storage: storage?,
            regions: regions?,
            counties,
            campaigns,
            tranches,
            lifecycle: lifecycle?,
            merchants,
        })
    }

    fn lifecycle(
        &mut self,
        raw: &raw::RawLifecycle,
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<LifecycleConfig> {
        let interval_ms = raw
            .settle_check_interval_ms
            .unwrap_or(DEFAULT_SETTLE_CHECK_INTERVAL_MS);
        self.range(
            "lifecycle.settle_check_interval_ms",
            interval_ms,
            10,
            3_600_000,
        );
        match token::resolve_code_secret(raw, &self.base, data_dir, env) {
            Ok(code_secret) => Some(LifecycleConfig {
                code_secret,
                settle_check_interval: Duration::from_millis(interval_ms),
            }),
            Err((key, reason)) => {
                self.fail(key, reason);
                None
            }
        }
    }

    fn merchants(&mut self, raw: raw::RawMerchants) -> MerchantsConfig {
        self.term_list(
            "merchants.industries",
            &raw.industries,
            MAX_INDUSTRIES,
            check_industry_name,
        );
        self.term_list(
            "merchants.platforms",
            &raw.platforms,
            MAX_PLATFORMS,
            check_platform_name,
        );
        MerchantsConfig {
            industries: raw.industries,
            platforms: raw.platforms,
        }
    }

    /// A non-empty list of unique terms, each passing `check`.
    fn term_list(
        &mut self,
        key: &str,
        terms: &[String],
        max: usize,
        check: fn(&str) -> Result<(), String>,
    ) {
        if terms.is_empty() || terms.len() > max {
            self.fail(key, format!("must list 1 to {max} entries"));
        }
        for (i, term) in terms.iter().enumerate() {
            if let Err(reason) = check(term) {
                self.fail(format!("{key}[{i}]"), reason);
            }
            if terms[..i].contains(term) {
                self.fail(format!("{key}[{i}]"), format!("{term:?} is listed twice"));
            }
        }
    }

    fn server(&mut self, raw: raw::RawServer) -> Option<ServerConfig> {
        let public_listen = self.socket("server.public_listen", &raw.public_listen);
        let admin_listen = self.socket("server.admin_listen", &raw.admin_listen);
        if let (Some(p), Some(a)) = (public_listen, admin_listen)
            && p == a
            && p.port() != 0
        {
            self.fail(
                "server.admin_listen",
                "must differ from server.public_listen",
            );
        }
        self.range(
            "server.max_connections",
            raw.max_connections,
            1,
            MAX_CONNECTIONS_CEILING,
        );
        self.range(
            "server.max_inflight_claims",
            raw.max_inflight_claims,
            1,
            MAX_INFLIGHT_CLAIMS_CEILING,
        );
        self.range(
            "server.max_body_bytes",
            raw.max_body_bytes,
            512,
            MAX_BODY_BYTES_CEILING,
        );
        self.range(
            "server.header_read_timeout_ms",
            raw.header_read_timeout_ms,
            10,
            120_000,
        );
        self.range(
            "server.body_read_timeout_ms",
            raw.body_read_timeout_ms,
            10,
            600_000,
        );
        self.range("server.drain_timeout_ms", raw.drain_timeout_ms, 0, 600_000);
        Some(ServerConfig {
            public_listen: public_listen?,
            admin_listen: admin_listen?,
            max_connections: raw.max_connections,
            header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(raw.body_read_timeout_ms),
            max_inflight_claims: raw.max_inflight_claims,
            max_body_bytes: raw.max_body_bytes,
            drain_timeout: Duration::from_millis(raw.drain_timeout_ms),
        })
    }

    fn storage(&mut self, raw: raw::RawStorage) -> Option<StorageConfig> {
        if raw.data_dir.trim().is_empty() {
            self.fail("storage.data_dir", "must not be empty");
            return None;
        }
        if raw.segment_size_bytes < MIN_SEGMENT_SIZE_BYTES
            || raw.segment_size_bytes > MAX_SEGMENT_SIZE_BYTES
            || !raw.segment_size_bytes.is_multiple_of(4096)
        {
            self.fail(
                "storage.segment_size_bytes",
                format!("must be a multiple of 4096 between {MIN_SEGMENT_SIZE_BYTES} and {MAX_SEGMENT_SIZE_BYTES}"),
            );
        }
        self.range(
            "storage.batch_window_us",
            raw.batch_window_us,
            0,
            MAX_BATCH_WINDOW_US,
        );
        self.range(
            "storage.max_batch_records",
            raw.max_batch_records,
            1,
            MAX_BATCH_RECORDS_CEILING,
        );
        self.range(
            "storage.checkpoint_every_records",
            raw.checkpoint_every_records,
            0,
            MAX_CHECKPOINT_EVERY_RECORDS,
        );
        self.range(
            "storage.checkpoint_check_interval_ms",
            raw.checkpoint_check_interval_ms,
            10,
            3_600_000,
        );
        self.range(
            "storage.presize_budget_vouchers",
            raw.presize_budget_vouchers,
            0,
            crate::core::catalog::MAX_PRESIZE_BUDGET_VOUCHERS,
        );
        Some(StorageConfig {
            data_dir: self.path(&raw.data_dir),
            segment_size_bytes: raw.segment_size_bytes,
            batch_window: Duration::from_micros(raw.batch_window_us),
            max_batch_records: raw.max_batch_records,
            checkpoint_every_records: raw.checkpoint_every_records,
            checkpoint_check_interval: Duration::from_millis(raw.checkpoint_check_interval_ms),
            writer: match raw.writer {
                raw::RawWalWriter::Mmap => WalWriter::Mmap,
                raw::RawWalWriter::IoUring => WalWriter::IoUring,
                raw::RawWalWriter::Auto => WalWriter::Auto,
            },
            presize_budget_vouchers: raw.presize_budget_vouchers,
        })
    }

    fn regions(&mut self, raw: raw::RawRegions) -> Option<RegionSource> {
        match raw.source {
            raw::RegionKind::Geojson => {
                if raw.max_seat_distance_km.is_some() {
                    self.fail(
                        "regions.max_seat_distance_km",
                        "only applies to source = \"nearest_seat\"",
                    );
                }
                let Some(path) = raw.geojson_path else {
                    self.fail("regions.geojson_path", "required when source = \"geojson\"");
                    return None;
                };
                let path = self.path(&path);
                if !path.is_file() {
                    self.fail(
                        "regions.geojson_path",
                        format!("no such file: {}", path.display()),
                    );
                }
                Some(RegionSource::GeoJson { path })
            }
            raw::RegionKind::NearestSeat => {
                if raw.geojson_path.is_some() {
                    self.fail(
                        "regions.geojson_path",
                        "only applies to source = \"geojson\"",
                    );
                }
                let km = raw.max_seat_distance_km.unwrap_or(50.0);
                if !(km.is_finite() && km > 0.0 && km <= 1_000.0) {
                    self.fail("regions.max_seat_distance_km", "must be between 0 and 1000");
                    return None;
                }
                Some(RegionSource::NearestSeat {
                    max_distance_m: km * 1_000.0,
                })
            }
        }
    }

    fn counties(
        &mut self,
        raw: Vec<raw::RawCounty>,
        regions: Option<&RegionSource>,
    ) -> Vec<CountyConfig> {
        if raw.is_empty() {
            self.fail("counties", "at least one county is required");
        }
        if raw.len() > MAX_COUNTIES {
            self.fail("counties", format!("at most {MAX_COUNTIES} counties"));
        }
        let needs_seat = matches!(regions, Some(RegionSource::NearestSeat { .. }));
        let mut out: Vec<CountyConfig> = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("counties[{i}]");
            if !(100_000..=999_999).contains(&c.adcode) {
                self.fail(
                    format!("{key}.adcode"),
                    "must be a 6-digit administrative division code",
                );
            }
            if out.iter().any(|o| o.code.0 == c.adcode) {
                self.fail(
                    format!("{key}.adcode"),
                    format!("{} is listed twice", c.adcode),
                );
            }
            if c.name.trim().is_empty() {
                self.fail(format!("{key}.name"), "must not be empty");
            }
            match c.seat {
                Some([lng, lat])
                    if !(lng.is_finite()
                        && lat.is_finite()
                        && lng.abs() <= 180.0
                        && lat.abs() <= 90.0) =>
                {
                    self.fail(format!("{key}.seat"), "must be [lng, lat] in degrees");
                }
                None if needs_seat => self.fail(
                    format!("{key}.seat"),
                    "required when regions.source = \"nearest_seat\"",
                ),
                _ => {}
            }
            out.push(CountyConfig {
                code: CountyCode(c.adcode),
                name: c.name,
                seat: c.seat,
            });
        }
        out
    }

    fn campaigns(&mut self, raw: Vec<raw::RawCampaign>) -> Vec<CampaignSpec> {
        let mut out: Vec<CampaignSpec> = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("campaigns[{i}]");
            if let Err(reason) = check_object_id(&c.id) {
                self.fail(format!("{key}.id"), reason);
            }
            if out.iter().any(|o| o.campaign_id == c.id) {
                self.fail(format!("{key}.id"), format!("{} is listed twice", c.id));
            }
            if let Err(reason) = check_campaign_name(&c.name) {
                self.fail(format!("{key}.name"), reason);
            }
            if let Err(reason) = check_campaign_budget(c.budget_fen) {
                self.fail(format!("{key}.budget_fen"), reason);
            }
            out.push(CampaignSpec {
                campaign_id: c.id,
                name: c.name,
                budget_fen: c.budget_fen,
                refund_policy: match c.refund_policy {
                    raw::RawRefundPolicy::RestoreIfValid => RefundPolicy::RestoreIfValid,
                    raw::RawRefundPolicy::Prorata => RefundPolicy::Prorata,
                    raw::RawRefundPolicy::NoRestore => RefundPolicy::NoRestore,
                },
                rollover: match c.rollover {
                    raw::RawRollover::None => Rollover::None,
                    raw::RawRollover::NextTranche => Rollover::NextTranche,
                },
            });
        }
        out
    }

    fn tranches(
        &mut self,
        raw: Vec<raw::RawTranche>,
        counties: &[CountyConfig],
        campaigns: &[CampaignSpec],
    ) -> Vec<TrancheSpec> {
        let mut out: Vec<TrancheSpec> = Vec::new();
        for (i, t) in raw.into_iter().enumerate() {
            let key = format!("tranches[{i}]");
            if let Err(reason) = check_object_id(&t.id) {
                self.fail(format!("{key}.id"), reason);
            }
            if out.iter().any(|o| o.tranche_id == t.id) {
                self.fail(format!("{key}.id"), format!("{} is listed twice", t.id));
            }
            if !campaigns.iter().any(|c| c.campaign_id == t.campaign_id) {
                self.fail(
                    format!("{key}.campaign_id"),
                    format!("no campaign {:?} in [[campaigns]]", t.campaign_id),
                );
            }
            let opens_at = self.time(&format!("{key}.opens_at"), &t.opens_at);
            let closes_at = self.time(&format!("{key}.closes_at"), &t.closes_at);
            let expires_at = self.time(&format!("{key}.expires_at"), &t.expires_at);
            let mut quotas = Vec::new();
            for (code, quota) in &t.quotas {
                match code.parse::<u32>() {
                    Ok(c) if counties.iter().any(|k| k.code.0 == c) => {
                        quotas.push((CountyCode(c), *quota))
                    }
                    _ => self.fail(
                        format!("{key}.quotas.{code}"),
                        "not a county listed in [[counties]]",
                    ),
                }
            }
            quotas.sort_by_key(|(c, _)| *c);
            let (Some(opens_at), Some(closes_at), Some(expires_at)) =
                (opens_at, closes_at, expires_at)
            else {
                continue;
            };
            let spec = TrancheSpec {
                tranche_id: t.id,
                campaign_id: t.campaign_id,
                opens_at,
                closes_at,
                expires_at,
                face_value_fen: t.face_value_fen,
                threshold_fen: t.threshold_fen,
                quotas,
                redeem_anywhere_in_city: t.redeem_anywhere_in_city,
                industries: sorted_unique(t.industries),
            };
            if let Err(errors) = spec.validate() {
                for e in errors {
                    self.fail(format!("{key}.{}", e.field), e.reason);
                }
            }
            out.push(spec);
        }
        out
    }

    /// An RFC 3339 time, or `now`, or `now+<n><s|m|h|d>` relative to start-up.
    fn time(&mut self, key: &str, text: &str) -> Option<UnixMillis> {
        match parse_config_time(text, self.now) {
            Ok(t) => Some(t),
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    fn socket(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    key,
                    format!("{text:?} is not an address:port such as 127.0.0.1:8080"),
                );
                None
            }
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.fail(key, format!("{value} is outside {min}..={max}"));
        }
    }
}

/// Industries as a tranche keeps them: sorted, duplicates removed.
pub fn sorted_unique(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items.dedup();
    items
}

/// Longest relative offset accepted in a config time: ten years.
const MAX_RELATIVE_TIME_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

/// A config time. Like the admin API's, it must fall in the accepted years
/// ([`check_accepted_time`]), relative times included.
fn parse_config_time(text: &str, now: UnixMillis) -> Result<UnixMillis, String> {
    let Some(rest) = text.strip_prefix("now") else {
        return parse_rfc3339(text);
    };
    let at = parse_relative_time(text, rest, now)?;
    check_accepted_time(at)
        .map_err(|reason| format!("{text:?} from the clock's time: {reason}"))?;
    Ok(at)
}

/// `rest` is what follows `now` in `text`.
fn parse_relative_time(text: &str, rest: &str, now: UnixMillis) -> Result<UnixMillis, String> {
    if rest.is_empty() {
        return Ok(now);
    }
    let bad = || format!("{text:?}: relative times look like now+30s, now+10m, now+2h or now+7d");
    let rest = rest.strip_prefix('+').ok_or_else(bad)?;
    // ASCII digits, then the unit. Split where the digits end, not before the last byte
    // (which is not a char boundary when the unit is, say, 秒, and panicked), and never
    // hand a sign to `i64::from_str` (which took `now+-5s` and `now++5s`).
    let digits_end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    let (digits, unit) = rest.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let count: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let offset = count
        .checked_mul(unit_ms)
        .filter(|o| *o <= MAX_RELATIVE_TIME_MS)
        .ok_or_else(bad)?;
    Ok(now.plus_ms(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock at start-up in these tests: 2026-05-29T04:26:40+08:00.
    const NOW: UnixMillis = UnixMillis(1_780_000_000_000);

    #[test]
    fn relative_times() {
        let now = NOW;
        assert_eq!(parse_config_time("now", now), Ok(now));
        assert_eq!(parse_config_time("now+5s", now), Ok(NOW.plus_ms(5_000)));
        assert_eq!(parse_config_time("now+2h", now), Ok(NOW.plus_ms(7_200_000)));
        assert!(parse_config_time("now-5s", now).is_err());
        assert!(parse_config_time("now+5", now).is_err());
        assert!(parse_config_time("now+s", now).is_err());
        assert!(parse_config_time("now+99999999d", now).is_err());
        assert!(parse_config_time("2026-12-01T10:00:00+08:00", now).is_ok());
    }

    /// Splitting the unit off as the last byte panicked inside a multi-byte character.
    #[test]
    fn relative_times_with_a_non_ascii_unit_are_errors_not_panics() {
        let now = NOW;
        for text in ["now+5秒", "now+秒", "now+5天", "now+é", "now+5sé", "now+٥s"] {
            let err = parse_config_time(text, now).unwrap_err();
            assert!(err.contains("now+30s"), "{text}: {err}");
        }
    }

    /// `i64::from_str` accepts a sign, so `now+-5s` was five seconds ago.
    #[test]
    fn relative_times_are_digits_only() {
        let now = NOW;
        for text in [
            "now+-5s", "now++5s", "now+ 5s", "now+5 s", "now+5ss", "now+-0s",
        ] {
            assert!(parse_config_time(text, now).is_err(), "{text} accepted");
        }
        assert_eq!(parse_config_time("now+0s", now), Ok(now));
        assert_eq!(
            parse_config_time("now+007m", now),
            Ok(NOW.plus_ms(7 * 60_000))
        );
        // Ten years is the bound; digits past i64 are an error, not a wrap.
        assert!(parse_config_time("now+3660d", now).is_ok());
        assert!(parse_config_time("now+3661d", now).is_err());
        assert!(parse_config_time("now+99999999999999999999s", now).is_err());
    }

    /// A relative time is held to the same years as an RFC 3339 one: from a clock in 2095,
    /// now+3650d is past 2099; from a clock left at 1970, `now` is before 2000.
    #[test]
    fn relative_times_outside_the_accepted_years_are_refused() {
        let late = UnixMillis(3_944_649_600_000); // 2095-01-01T00:00:00+08:00
        assert!(parse_config_time("now+365d", late).is_ok());
        let err = parse_config_time("now+3650d", late).unwrap_err();
        assert!(err.contains("2000 to 2099"), "{err}");
        assert!(parse_config_time("now", UnixMillis(0)).is_err());
        assert!(parse_config_time("now+1h", UnixMillis(0)).is_err());
        let err = parse_config_time("9999-12-31T23:59:59Z", NOW).unwrap_err();
        assert!(err.contains("2000 to 2099"), "{err}");
    }
}
