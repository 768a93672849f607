//! Geographic lookup: which county-level division a coordinate falls in.
//!
//! Vouchers are split by county, so every request's location must be mapped
//! to an adcode. Boundaries are loaded from GeoJSON ([`geojson`]) into a
//! prepared grid index ([`polygon::PolygonIndex`]); without boundaries, an
//! approximate nearest-seat mode ([`seat::SeatIndex`]) can be used instead.
//! Indexes work in GCJ-02 (the datum of Chinese map data); raw GPS in WGS-84
//! is converted first ([`gcj02`]). [`RegionIndex`] puts the modes behind one
//! `locate` call.

pub mod gcj02;
pub mod geojson;
pub mod polygon;
pub mod seat;

mod error;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use error::GeoError;
pub use geojson::{CountyShape, parse_feature_collection};
pub use polygon::PolygonIndex;
pub use seat::SeatIndex;

/// The datum a coordinate is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crs {
    /// GCJ-02, as used by Chinese map services and the boundary data.
    Gcj02,
    /// WGS-84, as reported by raw GPS.
    Wgs84,
}

/// A county lookup, exact (boundaries) or approximate (nearest seat).
#[derive(Debug, Clone)]
pub enum RegionIndex {
    /// Point-in-polygon against county boundaries.
    Polygons(PolygonIndex),
    /// Nearest county seat within a distance limit.
    Seats(SeatIndex),
}

impl RegionIndex {
    /// The adcode of the county containing a GCJ-02 point, if any.
    #[inline]
    pub fn locate(&self, lng: f64, lat: f64) -> Option<u32> {
        match self {
            RegionIndex::Polygons(p) => p.locate(lng, lat),
            RegionIndex::Seats(s) => s.locate(lng, lat),
        }
    }

    /// Like [`RegionIndex::locate`], for a point in the given datum
    /// (WGS-84 is converted to GCJ-02 first).
    #[inline]
    pub fn locate_point(&self, lng: f64, lat: f64, crs: Crs) -> Option<u32> {
        match crs {
            Crs::Gcj02 => self.locate(lng, lat),
            Crs::Wgs84 => {
                let (g_lng, g_lat) = gcj02::wgs84_to_gcj02(lng, lat);
                self.locate(g_lng, g_lat)
            }
        }
    }
}
