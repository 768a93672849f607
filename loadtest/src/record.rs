//! What a run saw: one sample per answer, kept in per-connection vectors
//! during the run (no shared state on the hot path) and summarised after it
//! into HdrHistogram percentiles, outcome counts and a 100 ms timeline.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds up to this bound (longer ones are clamped).
pub const MAX_LATENCY_US: u64 = 120_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;
/// Width of one timeline bucket.
pub const BUCKET_MS: u64 = 100;

/// The answer to one claim, as the tool classifies it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 201: a voucher was issued.
    Claimed,
    /// 200: a retried request answered again.
    Replayed,
    /// 409: the identity already holds a voucher.
    AlreadyClaimed,
    /// 410 `sold_out`.
    SoldOut,
    /// 410 `closed`.
    Closed,
    /// 425: before the tranche opened.
    NotOpen,
    /// 503.
    Overloaded,
    /// Any other status.
    OtherStatus,
    /// The connection failed; no answer.
    TransportError,
}

impl Outcome {
    pub fn classify(status: u16, body: &[u8]) -> Outcome {
        match status {
            201 => Outcome::Claimed,
            200 => Outcome::Replayed,
            409 => Outcome::AlreadyClaimed,
            410 if contains(body, b"sold_out") => Outcome::SoldOut,
            410 => Outcome::Closed,
            425 => Outcome::NotOpen,
            503 => Outcome::Overloaded,
            _ => Outcome::OtherStatus,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Claimed => "claimed",
            Outcome::Replayed => "replayed",
            Outcome::AlreadyClaimed => "already_claimed",
            Outcome::SoldOut => "sold_out",
            Outcome::Closed => "closed",
            Outcome::NotOpen => "not_open",
            Outcome::Overloaded => "overloaded",
            Outcome::OtherStatus => "other_status",
            Outcome::TransportError => "transport_error",
        }
    }

    /// An answer the server gave (anything but a transport error).
    pub fn answered(self) -> bool {
        self != Outcome::TransportError
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The value of a JSON string field (`"key":"value"`) in an answer body,
/// without parsing the whole document.
pub fn string_field<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let start = body
        .windows(pattern.len())
        .position(|w| w == pattern.as_bytes())?
        + pattern.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

/// One answer.
#[derive(Copy, Clone, Debug)]
pub struct Sample {
    /// When the answer arrived, microseconds after the run's reference instant.
    pub answered_at_us: u64,
    /// From the request's intended send time to its answer.
    pub latency_us: u64,
    pub outcome: Outcome,
    pub bot: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, latency_us: u64) {
    h.saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
}

/// One 100 ms slice of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub start_ms: u64,
    pub answers: u64,
    pub claimed: u64,
    /// Claims issued per second during this bucket.
    pub claims_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything derived from the samples.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub latency: Percentiles,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub timeline: Vec<Bucket>,
    /// From the reference instant to the last answer.
    pub last_answer_ms: Option<f64>,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Summary {
        let mut overall = histogram();
        let mut outcomes = BTreeMap::new();
        let mut buckets: BTreeMap<u64, (u64, u64, Histogram<u64>)> = BTreeMap::new();
        let mut last = None;
        for s in samples {
            *outcomes.entry(s.outcome.as_str()).or_insert(0) += 1;
            if !s.outcome.answered() {
                continue;
            }
            record(&mut overall, s.latency_us);
            last = last.max(Some(s.answered_at_us));
            let slot = s.answered_at_us / 1000 / BUCKET_MS;
            let entry = buckets.entry(slot).or_insert_with(|| (0, 0, histogram()));
            entry.0 += 1;
            if s.outcome == Outcome::Claimed {
                entry.1 += 1;
            }
            record(&mut entry.2, s.latency_us);
        }
        let timeline = buckets
            .into_iter()
            .map(|(slot, (answers, claimed, h))| Bucket {
                start_ms: slot * BUCKET_MS,
                answers,
                claimed,
                claims_per_second: claimed as f64 * 1000.0 / BUCKET_MS as f64,
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: h.max() as f64 / 1000.0,
            })
            .collect();
        Summary {
            latency: Percentiles::of(&overall),
            outcomes,
            timeline,
            last_answer_ms: last.map(|us| us as f64 / 1000.0),
        }
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(outcome.as_str()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_samples() {
        let samples: Vec<Sample> = (0..1000u64)
            .map(|i| Sample {
                answered_at_us: i * 250,
                latency_us: 1000 + i,
                outcome: if i % 2 == 0 {
                    Outcome::Claimed
                } else {
                    Outcome::SoldOut
                },
                bot: false,
            })
            .collect();
        let s = Summary::of(&samples);
        assert_eq!(s.count(Outcome::Claimed), 500);
        assert_eq!(s.count(Outcome::SoldOut), 500);
        assert_eq!(s.latency.count, 1000);
        assert_eq!(s.timeline.len(), 3, "250 ms of answers in 100 ms buckets");
        assert_eq!(s.timeline[0].claimed, 200);
        assert_eq!(s.timeline[0].claims_per_second, 2000.0);
        assert!((s.latency.p50_ms - 1.5).abs() < 0.01);
    }

    #[test]
    fn classifies_and_extracts() {
        assert_eq!(
            Outcome::classify(410, br#"{"outcome":"sold_out"}"#),
            Outcome::SoldOut
        );
        assert_eq!(
            Outcome::classify(410, br#"{"outcome":"closed"}"#),
            Outcome::Closed
        );
        let body = br#"{"outcome":"claimed","voucher":{"id":"v0001","county":"420502"}}"#;
        assert_eq!(string_field(body, "id"), Some("v0001"));
        assert_eq!(string_field(body, "county"), Some("420502"));
        assert_eq!(string_field(body, "missing"), None);
    }
}
