//! WGS-84 ⇄ GCJ-02 datum conversion.
//!
//! Chinese map services (and our boundary file) use GCJ-02, an obfuscated
//! datum that lies a few hundred metres off the WGS-84 coordinates a phone's
//! GPS reports. Looking raw GPS up against GCJ-02 boundaries would put people
//! near a border into the wrong county, so WGS-84 input is converted first.
//!
//! The forward transform is the standard public one (Krasovsky ellipsoid and
//! the well-known `transformLat`/`transformLng` polynomials). It has no closed
//! inverse; [`gcj02_to_wgs84`] inverts it by fixed-point iteration.

use std::f64::consts::PI;

/// Semi-major axis of the Krasovsky 1940 ellipsoid, in metres.
const KRASOVSKY_A: f64 = 6_378_245.0;
/// First eccentricity squared of the Krasovsky 1940 ellipsoid.
#[allow(clippy::excessive_precision)]
const KRASOVSKY_EE: f64 = 0.006_693_421_622_965_943_23;

/// Rough bounding box of China outside which the transform is the identity.
const CHINA_LNG_MIN: f64 = 72.004;
const CHINA_LNG_MAX: f64 = 137.8347;
const CHINA_LAT_MIN: f64 = 0.8293;
const CHINA_LAT_MAX: f64 = 55.8271;

/// Iteration cap of the inverse; it converges to 1e-12 degrees in a handful.
const INVERSE_MAX_ITERATIONS: usize = 30;
/// Stop the inverse once the forward image is this close (degrees).
const INVERSE_TOLERANCE_DEG: f64 = 1e-12;

fn out_of_china(lng: f64, lat: f64) -> bool {
    !(CHINA_LNG_MIN..=CHINA_LNG_MAX).contains(&lng)
        || !(CHINA_LAT_MIN..=CHINA_LAT_MAX).contains(&lat)
}

fn transform_lat(x: f64, y: f64) -> f64 {
    let mut ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * x.abs().sqrt();
    ret += (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    ret += (20.0 * (y * PI).sin() + 40.0 * (y / 3.0 * PI).sin()) * 2.0 / 3.0;
    ret += (160.0 * (y / 12.0 * PI).sin() + 320.0 * (y * PI / 30.0).sin()) * 2.0 / 3.0;
    ret
}

fn transform_lng(x: f64, y: f64) -> f64 {
    let mut ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * x.abs().sqrt();
    ret += (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    ret += (20.0 * (x * PI).sin() + 40.0 * (x / 3.0 * PI).sin()) * 2.0 / 3.0;
    ret += (150.0 * (x / 12.0 * PI).sin() + 300.0 * (x / 30.0 * PI).sin()) * 2.0 / 3.0;
    ret
}

/// Converts a WGS-84 `(lng, lat)` in degrees to GCJ-02.
///
/// Points outside China's rough bounding box, and non-finite input, are
/// returned unchanged.
pub fn wgs84_to_gcj02(lng: f64, lat: f64) -> (f64, f64) {
    if !lng.is_finite() || !lat.is_finite() || out_of_china(lng, lat) {
        return (lng, lat);
    }
    let mut dlat = transform_lat(lng - 105.0, lat - 35.0);
    let mut dlng = transform_lng(lng - 105.0, lat - 35.0);
    let radlat = lat / 180.0 * PI;
    let sin_lat = radlat.sin();
    let magic = 1.0 - KRASOVSKY_EE * sin_lat * sin_lat;
    let sqrt_magic = magic.sqrt();
    dlat = (dlat * 180.0) / ((KRASOVSKY_A * (1.0 - KRASOVSKY_EE)) / (magic * sqrt_magic) * PI);
    dlng = (dlng * 180.0) / (KRASOVSKY_A / sqrt_magic * radlat.cos() * PI);
    (lng + dlng, lat + dlat)
}

/// Converts a GCJ-02 `(lng, lat)` back to WGS-84 by fixed-point iteration.
///
/// Accurate to well under 1e-9 degrees inside China; points outside the box
/// (and non-finite input) are returned unchanged, mirroring the forward map.
pub fn gcj02_to_wgs84(lng: f64, lat: f64) -> (f64, f64) {
    if !lng.is_finite() || !lat.is_finite() || out_of_china(lng, lat) {
        return (lng, lat);
    }
    let (mut w_lng, mut w_lat) = (lng, lat);
    for _ in 0..INVERSE_MAX_ITERATIONS {
        let (g_lng, g_lat) = wgs84_to_gcj02(w_lng, w_lat);
        let (e_lng, e_lat) = (g_lng - lng, g_lat - lat);
        w_lng -= e_lng;
        w_lat -= e_lat;
        if e_lng.abs() < INVERSE_TOLERANCE_DEG && e_lat.abs() < INVERSE_TOLERANCE_DEG {
            break;
        }
    }
    (w_lng, w_lat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::test_support::{SplitMix64, test_seed};

    #[test]
    fn known_vector_beijing() {
        // Published example output of the common open-source implementations.
        let (lng, lat) = wgs84_to_gcj02(116.404, 39.915);
        assert!((lng - 116.410_244_499_169_38).abs() < 1e-9, "lng {lng}");
        assert!((lat - 39.916_404_281_501_64).abs() < 1e-9, "lat {lat}");
    }

    #[test]
    fn outside_china_is_identity() {
        for (lng, lat) in [
            (0.0, 0.0),
            (-122.4, 37.8),
            (139.7, 35.7),
            (100.0, 60.0),
            (72.0, 30.0),
        ] {
            assert_eq!(wgs84_to_gcj02(lng, lat), (lng, lat));
            assert_eq!(gcj02_to_wgs84(lng, lat), (lng, lat));
        }
        let (n, _) = wgs84_to_gcj02(f64::NAN, 30.0);
        assert!(n.is_nan());
    }

    #[test]
    fn offset_in_hubei_is_a_few_hundred_metres() {
        let (lng, lat) = (111.3, 30.7);
        let (g_lng, g_lat) = wgs84_to_gcj02(lng, lat);
        let dx = (g_lng - lng) * 111_320.0 * lat.to_radians().cos();
        let dy = (g_lat - lat) * 110_540.0;
        let d = dx.hypot(dy);
        assert!((100.0..1_000.0).contains(&d), "offset {d} m");
    }

    #[test]
    fn inverse_round_trips_within_1e_6_degrees() {
        let seed = test_seed(0x6C0_2A11);
        let mut rng = SplitMix64::new(seed);
        let mut worst: f64 = 0.0;
        for _ in 0..20_000 {
            let lng = rng.range(73.0, 135.0);
            let lat = rng.range(3.0, 53.0);
            let (g_lng, g_lat) = wgs84_to_gcj02(lng, lat);
            let (w_lng, w_lat) = gcj02_to_wgs84(g_lng, g_lat);
            worst = worst.max((w_lng - lng).abs()).max((w_lat - lat).abs());
        }
        assert!(
            worst < 1e-6,
            "seed {seed:#x}: worst round-trip error {worst}"
        );
    }
}
