//! Approximate lookup: the nearest county seat within a distance limit.
//!
//! A fallback for deployments that have no boundary file, only the seat of
//! government of each county. It is wrong near borders by design (a county's
//! territory is not its seat's Voronoi cell), which is why it is a separate
//! mode of [`crate::geo::RegionIndex`] rather than a silent fallback.
//!
//! Distance is great-circle (haversine on the mean Earth radius). Ties go to
//! the lowest adcode; a seat exactly `max_distance_m` away still counts.

use crate::geo::GeoError;

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Nearest-seat index over a (small) list of county seats.
#[derive(Debug, Clone)]
pub struct SeatIndex {
    /// `(adcode, lng, lat)` sorted by adcode, so a strict `<` scan keeps the
    /// lowest adcode on ties.
    seats: Vec<(u32, f64, f64)>,
    max_distance_m: f64,
}

impl SeatIndex {
    /// Builds the index from `(adcode, [lng, lat])` seats in GCJ-02.
    ///
    /// Rejects an empty list, non-finite coordinates, a non-positive or
    /// non-finite distance and duplicate adcodes.
    pub fn new(seats: Vec<(u32, [f64; 2])>, max_distance_m: f64) -> Result<Self, GeoError> {
        if seats.is_empty() {
            return Err(GeoError::NoSeats);
        }
        if !(max_distance_m.is_finite() && max_distance_m > 0.0) {
            return Err(GeoError::InvalidMaxDistance {
                value: max_distance_m,
            });
        }
        let mut sorted: Vec<(u32, f64, f64)> = Vec::with_capacity(seats.len());
        for (adcode, [lng, lat]) in seats {
            if !lng.is_finite() || !lat.is_finite() {
                return Err(GeoError::NonFiniteSeat { adcode });
            }
            sorted.push((adcode, lng, lat));
        }
        sorted.sort_by_key(|s| s.0);
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(GeoError::DuplicateAdcode { adcode: w[0].0 });
        }
        Ok(SeatIndex {
            seats: sorted,
            max_distance_m,
        })
    }

    /// The adcode of the nearest seat, or `None` if it is farther than the
    /// limit (or the input is not finite).
    pub fn locate(&self, lng: f64, lat: f64) -> Option<u32> {
        if !lng.is_finite() || !lat.is_finite() {
            return None;
        }
        let mut best: Option<(f64, u32)> = None;
        for &(adcode, s_lng, s_lat) in &self.seats {
            let d = haversine_m(lng, lat, s_lng, s_lat);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, adcode));
            }
        }
        best.filter(|&(d, _)| d <= self.max_distance_m)
            .map(|(_, adcode)| adcode)
    }

    /// The distance limit in metres.
    pub fn max_distance_m(&self) -> f64 {
        self.max_distance_m
    }

    /// The seats' adcodes, ascending.
    pub fn adcodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.seats.iter().map(|s| s.0)
    }
}

/// Great-circle distance in metres between two `(lng, lat)` points in degrees.
pub fn haversine_m(lng1: f64, lat1: f64, lng2: f64, lat2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let h = (dp * 0.5).sin().powi(2) + p1.cos() * p2.cos() * (dl * 0.5).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(max: f64) -> SeatIndex {
        SeatIndex::new(
            vec![
                (100003, [111.5, 30.5]),
                (100001, [110.5, 30.5]),
                (100002, [111.0, 31.0]),
            ],
            max,
        )
        .expect("valid seats")
    }

    #[test]
    fn haversine_is_sane() {
        // One degree of latitude is ~111.2 km on the mean sphere.
        let d = haversine_m(111.0, 30.0, 111.0, 31.0);
        assert!((d - 111_195.0).abs() < 5.0, "{d}");
        assert_eq!(haversine_m(111.0, 30.0, 111.0, 30.0), 0.0);
    }

    #[test]
    fn nearest_seat_wins() {
        let idx = index(100_000.0);
        assert_eq!(idx.locate(110.55, 30.45), Some(100001));
        assert_eq!(idx.locate(111.45, 30.55), Some(100003));
        assert_eq!(idx.locate(111.0, 30.95), Some(100002));
        assert_eq!(idx.locate(111.5, 30.5), Some(100003), "exactly at a seat");
        assert_eq!(idx.locate(f64::NAN, 30.5), None);
        assert_eq!(idx.adcodes().collect::<Vec<_>>(), [100001, 100002, 100003]);
    }

    #[test]
    fn max_distance_is_enforced_inclusively() {
        let d = haversine_m(110.5, 30.5, 110.5, 30.4);
        let idx = index(d);
        assert_eq!(
            idx.locate(110.5, 30.4),
            Some(100001),
            "exactly at the limit"
        );
        assert_eq!(idx.locate(110.5, 30.39), None, "just beyond");
        assert_eq!(index(1_000.0).locate(114.30, 30.59), None, "Wuhan");
        assert_eq!(idx.max_distance_m(), d);
    }

    #[test]
    fn ties_go_to_lowest_adcode() {
        // 111.0 is exactly half-way (in binary too) between 110.5 and 111.5
        // on the same parallel.
        let idx = index(100_000.0);
        assert_eq!(idx.locate(111.0, 30.5), Some(100001));
        let reversed = SeatIndex::new(
            vec![(100009, [111.5, 30.5]), (100004, [110.5, 30.5])],
            100_000.0,
        )
        .expect("valid seats");
        assert_eq!(reversed.locate(111.0, 30.5), Some(100004));
        assert_eq!(reversed.locate(111.0, 30.2), Some(100004));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            SeatIndex::new(vec![], 1.0),
            Err(GeoError::NoSeats)
        ));
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                SeatIndex::new(vec![(100001, [111.0, 30.0])], bad),
                Err(GeoError::InvalidMaxDistance { .. })
            ));
        }
        assert!(matches!(
            SeatIndex::new(vec![(100001, [111.0, f64::NAN])], 1.0),
            Err(GeoError::NonFiniteSeat { adcode: 100001 })
        ));
        assert!(matches!(
            SeatIndex::new(vec![(100001, [111.0, 30.0]), (100001, [112.0, 30.0])], 1.0),
            Err(GeoError::DuplicateAdcode { adcode: 100001 })
        ));
    }
}
