//! The one error type of the `geo` module.
//!
//! Boundary files and seat lists come from outside the daemon, so every way
//! they can be wrong is a typed variant naming the feature index and/or the
//! adcode involved, instead of a panic or a stringly error.

/// Everything that can go wrong while loading boundaries or building an index.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The bytes are not valid JSON.
    #[error("boundary file is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The top-level object is not a GeoJSON `FeatureCollection`.
    #[error("expected a GeoJSON FeatureCollection, found {found}")]
    NotFeatureCollection {
        /// What was found instead (the `type` value, or a JSON kind).
        found: String,
    },

    /// `features` is missing or not an array.
    #[error("FeatureCollection has no `features` array")]
    MissingFeatures,

    /// A feature is not an object of type `Feature`, or has no `properties` object.
    #[error("feature #{feature}: {reason}")]
    InvalidFeature {
        /// Index of the feature in `features`.
        feature: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// `properties.adcode` is absent.
    #[error("feature #{feature}: missing properties.adcode")]
    MissingAdcode {
        /// Index of the feature in `features`.
        feature: usize,
    },

    /// `properties.adcode` is not a 6-digit code (number or numeric string).
    #[error("feature #{feature}: invalid properties.adcode: {reason}")]
    InvalidAdcode {
        /// Index of the feature in `features`.
        feature: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// `properties.name` is absent.
    #[error("feature #{feature} (adcode {adcode}): missing properties.name")]
    MissingName {
        /// Index of the feature in `features`.
        feature: usize,
        /// The feature's adcode.
        adcode: u32,
    },

    /// `properties.name` is not a non-empty string.
    #[error("feature #{feature} (adcode {adcode}): invalid properties.name: {reason}")]
    InvalidName {
        /// Index of the feature in `features`.
        feature: usize,
        /// The feature's adcode.
        adcode: u32,
        /// What is wrong with it.
        reason: String,
    },

    /// The feature has no geometry object.
    #[error("feature #{feature} (adcode {adcode}): missing geometry")]
    MissingGeometry {
        /// Index of the feature in `features`.
        feature: usize,
        /// The feature's adcode.
        adcode: u32,
    },

    /// The geometry is neither `Polygon` nor `MultiPolygon`.
    #[error(
        "feature #{feature} (adcode {adcode}): unsupported geometry type {kind:?} \
         (only Polygon and MultiPolygon)"
    )]
    UnsupportedGeometry {
        /// Index of the feature in `features`.
        feature: usize,
        /// The feature's adcode.
        adcode: u32,
        /// The geometry `type` found.
        kind: String,
    },

    /// `geometry.coordinates` does not have the nesting its type requires.
    #[error("feature #{feature} (adcode {adcode}): malformed coordinates: {reason}")]
    MalformedCoordinates {
        /// Index of the feature in `features`.
        feature: usize,
        /// The feature's adcode.
        adcode: u32,
        /// What is wrong with them.
        reason: String,
    },

    /// A ring has fewer than 4 positions (a closed ring needs at least a triangle).
    #[error(
        "adcode {adcode}: polygon {polygon} ring {ring} has {positions} positions, need at least 4"
    )]
    RingTooShort {
        /// The county's adcode.
        adcode: u32,
        /// Index of the polygon within the county.
        polygon: usize,
        /// Index of the ring within the polygon (0 = outer).
        ring: usize,
        /// How many positions it has.
        positions: usize,
    },

    /// A coordinate is NaN or infinite.
    #[error("adcode {adcode}: polygon {polygon} ring {ring} position {position} is not finite")]
    NonFiniteCoordinate {
        /// The county's adcode.
        adcode: u32,
        /// Index of the polygon within the county.
        polygon: usize,
        /// Index of the ring within the polygon.
        ring: usize,
        /// Index of the position within the ring.
        position: usize,
    },

    /// Two features share an adcode. They are not merged: the even-odd rule over
    /// all rings of a county would cancel wherever they overlap.
    #[error(
        "adcode {adcode}: features #{first_feature} and #{feature} both have it \
         (a county is one feature; put its parts in one MultiPolygon)"
    )]
    RepeatedAdcode {
        /// The repeated adcode.
        adcode: u32,
        /// Index of the first feature with this adcode.
        first_feature: usize,
        /// Index of the repeat.
        feature: usize,
    },

    /// An adcode appears twice in the input of an index.
    #[error("adcode {adcode} appears more than once")]
    DuplicateAdcode {
        /// The repeated adcode.
        adcode: u32,
    },

    /// There is nothing to index.
    #[error("no counties to index")]
    NoShapes,

    /// A county has no polygons at all.
    #[error("adcode {adcode}: county has no polygons")]
    EmptyShape {
        /// The county's adcode.
        adcode: u32,
    },

    /// More counties than the compact cell encoding can hold.
    #[error("{count} counties exceed the index limit of {max}")]
    TooManyCounties {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// The boundaries' edges span more grid rows in total than an index may
    /// hold (each edge is kept once per row it spans).
    #[error(
        "the boundaries need {entries} row-edge entries in the grid index, more than the \
         limit of {max}: too many edges spanning many rows (simplify the boundary file)"
    )]
    TooManyRowEdgeEntries {
        /// How many the boundaries need.
        entries: usize,
        /// The limit.
        max: usize,
    },

    /// The boundaries' edges touch more grid cells in total than a build may note.
    #[error(
        "the boundaries' edges touch more than {max} grid cells in total: too many long \
         edges (simplify the boundary file)"
    )]
    TooManyTouchedCellEntries {
        /// The limit.
        max: usize,
    },

    /// The seat list is empty.
    #[error("no county seats given")]
    NoSeats,

    /// A seat coordinate is NaN or infinite.
    #[error("adcode {adcode}: seat coordinate is not finite")]
    NonFiniteSeat {
        /// The seat's adcode.
        adcode: u32,
    },

    /// The maximum seat distance is not a positive finite number.
    #[error("maximum seat distance must be positive and finite, got {value}")]
    InvalidMaxDistance {
        /// The value given.
        value: f64,
    },
}
