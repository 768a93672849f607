//! The simulated people: an identity each, and a GPS point inside a county
//! taken from the voucherd config's regions (sampled inside the county's
//! boundary polygons, or near its seat in nearest-seat mode), checked with
//! voucherd's own index so every point locates to the intended county.

use std::net::SocketAddr;
use std::path::Path;

use voucherd::config::{self, RegionSource};
use voucherd::core::UnixMillis;
use voucherd::geo::{self, PolygonIndex, SeatIndex};

use crate::SplitMix;

/// Rejection sampling gives up after this many misses for one point.
const MAX_SAMPLE_ATTEMPTS: u32 = 100_000;
/// In nearest-seat mode, points are drawn within this distance of the seat.
const SEAT_SAMPLE_RADIUS_KM: f64 = 5.0;
const KM_PER_DEGREE: f64 = 111.0;

/// One configured county and the box its points are drawn from.
#[derive(Clone, Debug)]
pub struct County {
    pub code: u32,
    pub name: String,
    /// `[min_lng, min_lat, max_lng, max_lat]`, GCJ-02.
    bbox: [f64; 4],
}

enum Locator {
    Polygons(PolygonIndex),
    Seats(SeatIndex),
}

/// The counties of a voucherd config, with a point sampler.
pub struct Area {
    pub counties: Vec<County>,
    locator: Locator,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Area {
    /// Reads a voucherd config (the same file the daemon runs with).
    pub fn from_config(path: &Path) -> Result<Area, String> {
        Area::from_config_with_env(path, &|key| std::env::var(key).ok())
    }

    /// [`Area::from_config`] with the environment the config's secrets resolve against.
    pub fn from_config_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Area, String> {
        let now = UnixMillis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_millis() as i64,
        );
        let config = config::load(path, now, env).map_err(|e| e.to_string())?;
        let (counties, locator) = match &config.regions {
            RegionSource::GeoJson { path } => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let shapes = geo::parse_feature_collection(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let configured: Vec<_> = shapes
                    .into_iter()
                    .filter(|s| config.counties.iter().any(|c| c.code.0 == s.adcode))
                    .collect();
                let counties = configured
                    .iter()
                    .map(|shape| County {
                        code: shape.adcode,
                        name: shape.name.clone(),
                        bbox: bbox(shape.polygons.iter().flatten().flatten()),
                    })
                    .collect();
                let index = PolygonIndex::build(&configured).map_err(|e| e.to_string())?;
                (counties, Locator::Polygons(index))
            }
            RegionSource::NearestSeat { max_distance_m } => {
                let seats: Vec<(u32, [f64; 2])> = config
                    .counties
                    .iter()
                    .filter_map(|c| c.seat.map(|s| (c.code.0, s)))
                    .collect();
                let radius_deg =
                    (max_distance_m / 1000.0).min(SEAT_SAMPLE_RADIUS_KM) / KM_PER_DEGREE;
                let counties = config
                    .counties
                    .iter()
                    .filter_map(|c| {
                        let [lng, lat] = c.seat?;
                        Some(County {
                            code: c.code.0,
                            name: c.name.clone(),
                            bbox: [
                                lng - radius_deg,
                                lat - radius_deg,
                                lng + radius_deg,
                                lat + radius_deg,
                            ],
                        })
                    })
                    .collect();
                let index = SeatIndex::new(seats, *max_distance_m).map_err(|e| e.to_string())?;
                (counties, Locator::Seats(index))
            }
        };
        let mut counties: Vec<County> = counties;
        counties.sort_by_key(|c| c.code);
        if counties.is_empty() {
            return Err(format!("{}: no counties configured", path.display()));
        }
        Ok(Area {
            counties,
            locator,
            public_addr: config.server.public_listen,
            admin_addr: config.server.admin_listen,
        })
    }

    pub fn locate(&self, lng: f64, lat: f64) -> Option<u32> {
        match &self.locator {
            Locator::Polygons(p) => p.locate(lng, lat),
            Locator::Seats(s) => s.locate(lng, lat),
        }
    }

    /// A uniformly drawn point (GCJ-02) that voucherd locates in `county`.
    pub fn sample_point(&self, county: usize, rng: &mut SplitMix) -> Result<(f64, f64), String> {
        let c = &self.counties[county];
        let [x0, y0, x1, y1] = c.bbox;
        for _ in 0..MAX_SAMPLE_ATTEMPTS {
            let lng = x0 + (x1 - x0) * rng.next_f64();
            let lat = y0 + (y1 - y0) * rng.next_f64();
            if self.locate(lng, lat) == Some(c.code) {
                // Six decimals (~0.1 m) as a phone SDK sends; re-check after rounding.
                let (lng, lat) = (round6(lng), round6(lat));
                if self.locate(lng, lat) == Some(c.code) {
                    return Ok((lng, lat));
                }
            }
        }
        Err(format!(
            "no point found in county {} after {MAX_SAMPLE_ATTEMPTS} tries",
            c.code
        ))
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn bbox<'a>(points: impl Iterator<Item = &'a [f64; 2]>) -> [f64; 4] {
    let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    for [x, y] in points {
        b = [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)];
    }
    b
}

/// Which identity keys each claim carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Keys {
    /// `user_id` only.
    User,
    /// `user_id` and `identity.device_id`.
    UserDevice,
    /// `user_id`, `identity.phone_hash` (64 hex) and `identity.device_id`.
    All,
}

/// One simulated person.
#[derive(Clone, Debug)]
pub struct Person {
    pub index: u32,
    /// Index into [`Area::counties`].
    pub county: usize,
    pub lng: f64,
    pub lat: f64,
    pub bot: bool,
}

/// `count` people spread over the counties in proportion to `weights` (one
/// weight per county of `area`); each is a bot with probability `bot_share`.
pub fn people(
    area: &Area,
    weights: &[u64],
    count: usize,
    bot_share: f64,
    rng: &mut SplitMix,
) -> Result<Vec<Person>, String> {
    assert_eq!(weights.len(), area.counties.len());
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return Err("every county weight is zero".into());
    }
    // Cumulative weights for a seeded draw of each person's county.
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0u64;
    for w in weights {
        acc += w;
        cumulative.push(acc);
    }
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let pick = rng.next_u64() % total;
        let county = cumulative.partition_point(|&c| c <= pick);
        let (lng, lat) = area.sample_point(county, rng)?;
        let bot = rng.next_f64() < bot_share;
        out.push(Person {
            index: index as u32,
            county,
            lng,
            lat,
            bot,
        });
    }
    Ok(out)
}

/// The JSON body of one claim. `run` keeps identities of different runs apart.
pub fn claim_body(
    tranche_id: &str,
    run: &str,
    person: &Person,
    attempt: u32,
    keys: Keys,
) -> Vec<u8> {
    let i = person.index;
    let identity = match keys {
        Keys::User => String::new(),
        Keys::UserDevice => format!(r#","identity":{{"device_id":"{run}-d{i}"}}"#),
        Keys::All => {
            let mut h = SplitMix(u64::from(i) ^ 0x5eed_0000_0000_0000 ^ hash_str(run));
            let phone: String = (0..4).map(|_| format!("{:016x}", h.next_u64())).collect();
            format!(r#","identity":{{"phone_hash":"{phone}","device_id":"{run}-d{i}"}}"#)
        }
    };
    format!(
        r#"{{"tranche_id":"{tranche_id}","user_id":"{run}-u{i}"{identity},"location":{{"lng":{:.6},"lat":{:.6}}},"request_id":"{run}-u{i}-a{attempt}"}}"#,
        person.lng, person.lat
    )
    .into_bytes()
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_claims() {
        let person = Person {
            index: 7,
            county: 0,
            lng: 111.295,
            lat: 30.702,
            bot: false,
        };
        for keys in [Keys::User, Keys::UserDevice, Keys::All] {
            let body = claim_body("t1", "run", &person, 3, keys);
            let claim = voucherd::api::parse_claim(&body).expect("voucherd accepts the body");
            assert_eq!(claim.user_id, "run-u7");
            assert_eq!(claim.request_id, "run-u7-a3");
            assert_eq!(claim.phone_hash.is_some(), keys == Keys::All);
        }
    }
}
