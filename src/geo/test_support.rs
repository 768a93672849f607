//! Test helpers: the real boundary file, a seeded RNG and a brute-force oracle.
//!
//! The Yichang boundary file is third-party data, so tests read it by path
//! (`VOUCHERD_YICHANG_GEOJSON`, else `../shared/data/yichang-420500.geojson`
//! next to the crate) and never embed anything derived from it. The oracle is
//! the plain even-odd test over every ring of every county, against which the
//! grid index must agree bit for bit.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

use crate::geo::{CountyShape, PolygonIndex, parse_feature_collection};

/// Env var overriding the boundary file path.
pub const GEOJSON_ENV: &str = "VOUCHERD_YICHANG_GEOJSON";
/// Env var overriding randomized tests' seeds (decimal or `0x` hex).
pub const SEED_ENV: &str = "VOUCHERD_GEO_SEED";

/// Path of the real boundary file.
pub fn boundary_path() -> PathBuf {
    std::env::var_os(GEOJSON_ENV).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/data/yichang-420500.geojson"
            ))
        },
        PathBuf::from,
    )
}

fn read_boundary_file() -> Vec<u8> {
    let path = boundary_path();
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read boundary file {} (set {GEOJSON_ENV}): {e}",
            path.display()
        )
    })
}

/// The real file's shapes, its raw JSON, and an index over it, built once.
pub struct RealData {
    pub shapes: Vec<CountyShape>,
    pub raw: Value,
    pub index: PolygonIndex,
    pub oracle: BruteForce,
}

/// Loads (once per test binary) the real boundary data.
pub fn real() -> &'static RealData {
    static REAL: OnceLock<RealData> = OnceLock::new();
    REAL.get_or_init(|| {
        let bytes = read_boundary_file();
        let shapes = parse_feature_collection(&bytes).expect("real boundary file parses");
        let raw: Value = serde_json::from_slice(&bytes).expect("real boundary file is JSON");
        let index = PolygonIndex::build(&shapes).expect("real boundary file indexes");
        let oracle = BruteForce::new(&shapes);
        RealData {
            shapes,
            raw,
            index,
            oracle,
        }
    })
}

/// A `[lng, lat]` property (`center`, `centroid`) of the feature with `adcode`.
pub fn feature_point(raw: &Value, adcode: u32, key: &str) -> Option<[f64; 2]> {
    let features = raw.get("features")?.as_array()?;
    let feature = features.iter().find(|f| {
        f.pointer("/properties/adcode")
            .and_then(|a| {
                a.as_u64()
                    .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
            })
            .is_some_and(|a| a == u64::from(adcode))
    })?;
    let p = feature.get("properties")?.get(key)?.as_array()?;
    Some([p.first()?.as_f64()?, p.get(1)?.as_f64()?])
}

/// The seed for a randomized test: `VOUCHERD_GEO_SEED` or `default`. Printed
/// so that a failure can be replayed.
pub fn test_seed(default: u64) -> u64 {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or(default);
    println!("seed = {seed:#x} (override with {SEED_ENV})");
    seed
}

/// SplitMix64: tiny, seedable, good enough for test points.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::core::rng::splitmix_next(&mut self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Metres per degree of longitude and latitude near `lat`.
pub fn metres_per_degree(lat: f64) -> (f64, f64) {
    (111_320.0 * lat.to_radians().cos(), 110_574.0)
}

/// Even-odd crossing of the +x ray from `(x, y)` with edge `a→b`, with the
/// same arithmetic as the index (slope computed first, from the lower-y end,
/// so that both counties sharing an edge compute the same crossing).
fn crosses(a: [f64; 2], b: [f64; 2], x: f64, y: f64) -> bool {
    let (a, b) = if b[1] < a[1] { (b, a) } else { (a, b) };
    (a[1] > y) != (b[1] > y) && x < a[0] + (y - a[1]) * ((b[0] - a[0]) / (b[1] - a[1]))
}

fn ring_contains(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut inside = false;
    for (i, &a) in ring.iter().enumerate() {
        let b = ring[(i + 1) % ring.len()];
        inside ^= crosses(a, b, x, y);
    }
    inside
}

fn shape_contains(shape: &CountyShape, x: f64, y: f64) -> bool {
    shape
        .polygons
        .iter()
        .flatten()
        .fold(false, |inside, ring| inside ^ ring_contains(ring, x, y))
}

/// Brute force: the lowest adcode whose rings (even-odd) contain the point.
pub fn brute_force_locate(shapes: &[CountyShape], x: f64, y: f64) -> Option<u32> {
    shapes
        .iter()
        .filter(|s| shape_contains(s, x, y))
        .map(|s| s.adcode)
        .min()
}

/// A ring with its `[min_x, min_y, max_x, max_y]`.
type BoxedRing = (Vec<[f64; 2]>, [f64; 4]);

/// The same oracle with per-ring bounding boxes to skip rings quickly.
pub struct BruteForce {
    /// `(adcode, rings)` per county.
    counties: Vec<(u32, Vec<BoxedRing>)>,
}

impl BruteForce {
    pub fn new(shapes: &[CountyShape]) -> Self {
        let counties = shapes
            .iter()
            .map(|s| {
                let rings = s
                    .polygons
                    .iter()
                    .flatten()
                    .map(|ring| {
                        let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
                        for p in ring {
                            b = [
                                b[0].min(p[0]),
                                b[1].min(p[1]),
                                b[2].max(p[0]),
                                b[3].max(p[1]),
                            ];
                        }
                        (ring.clone(), b)
                    })
                    .collect();
                (s.adcode, rings)
            })
            .collect();
        BruteForce { counties }
    }

    pub fn locate(&self, x: f64, y: f64) -> Option<u32> {
        self.containing(x, y).min()
    }

    /// Every county whose rings (even-odd) contain the point.
    pub fn containing(&self, x: f64, y: f64) -> impl Iterator<Item = u32> {
        self.counties.iter().filter_map(move |(adcode, rings)| {
            let mut inside = false;
            for (ring, b) in rings {
                // Skips are exact: no edge spans y outside [min_y, max_y),
                // and no crossing lies (beyond rounding) right of max_x.
                if y < b[1] || y >= b[3] || x > b[2] + 1e-9 {
                    continue;
                }
                inside ^= ring_contains(ring, x, y);
            }
            inside.then_some(*adcode)
        })
    }
}
