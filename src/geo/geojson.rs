//! Parsing county boundaries from a GeoJSON `FeatureCollection`.
//!
//! The boundary file is third-party data handed to a deployment, so it is
//! read defensively through `serde_json::Value` (no derive types) and every
//! defect becomes a [`GeoError`] naming the feature index and/or adcode.
//!
//! Accepted shape: each feature has `properties.adcode` (a number, or a string
//! of digits, in `100000..=999999`), `properties.name` (a non-empty string)
//! and a `Polygon` or `MultiPolygon` geometry whose rings hold at least four
//! finite `[lng, lat, ...]` positions (extra dimensions are ignored). The first
//! ring of each polygon is its outer ring, the rest are holes.
//!
//! Each adcode appears in one feature only; a repeat is
//! [`GeoError::RepeatedAdcode`]. Repeats are not merged: containment is the
//! even-odd rule over all rings of a county, so a feature listed twice would
//! cancel itself and its county would silently vanish (the same for any
//! overlap between two features of one county). A county of several parts is
//! one `MultiPolygon` feature. Output order is the order of the features.

use std::collections::HashMap;

use serde_json::Value;

use crate::geo::GeoError;

/// One county-level division: its code, name and boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct CountyShape {
    /// GB/T 2260 six-digit code, e.g. 420502.
    pub adcode: u32,
    /// Display name, e.g. 西陵区.
    pub name: String,
    /// Polygons → rings (first outer, rest holes) → `[lng, lat]` positions.
    pub polygons: Vec<Vec<Vec<[f64; 2]>>>,
}

/// Smallest position count of a valid (closed) GeoJSON ring.
pub const MIN_RING_POSITIONS: usize = 4;

const ADCODE_MIN: u64 = 100_000;
const ADCODE_MAX: u64 = 999_999;

/// Parses a GeoJSON `FeatureCollection` of county boundaries.
pub fn parse_feature_collection(bytes: &[u8]) -> Result<Vec<CountyShape>, GeoError> {
    let root: Value = serde_json::from_slice(bytes)?;
    let root_type = root.get("type").and_then(Value::as_str);
    if root_type != Some("FeatureCollection") {
        let found = match root_type {
            Some(t) => t.to_owned(),
            None => format!("a JSON {} without a string `type`", json_kind(&root)),
        };
        return Err(GeoError::NotFeatureCollection { found });
    }
    let features = root
        .get("features")
        .and_then(Value::as_array)
        .ok_or(GeoError::MissingFeatures)?;

    let mut shapes: Vec<CountyShape> = Vec::with_capacity(features.len());
    // adcode -> index of the feature that has it
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (index, feature) in features.iter().enumerate() {
        let shape = parse_feature(index, feature)?;
        if let Some(&first_feature) = seen.get(&shape.adcode) {
            return Err(GeoError::RepeatedAdcode {
                adcode: shape.adcode,
                first_feature,
                feature: index,
            });
        }
        seen.insert(shape.adcode, index);
        shapes.push(shape);
    }
    Ok(shapes)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn parse_feature(feature: usize, value: &Value) -> Result<CountyShape, GeoError> {
    let invalid = |reason: String| GeoError::InvalidFeature { feature, reason };
    let obj = value
        .as_object()
        .ok_or_else(|| invalid(format!("expected an object, found {}", json_kind(value))))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("Feature") => {}
        Some(other) => return Err(invalid(format!("type is {other:?}, expected \"Feature\""))),
        None => return Err(invalid("missing string `type`".to_owned())),
    }
    let props = obj
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("missing `properties` object".to_owned()))?;

    let adcode = parse_adcode(feature, props.get("adcode"))?;
    let name = match props.get("name") {
        None | Some(Value::Null) => return Err(GeoError::MissingName { feature, adcode }),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(GeoError::InvalidName {
                feature,
                adcode,
                reason: "empty string".to_owned(),
            });
        }
        Some(other) => {
            return Err(GeoError::InvalidName {
                feature,
                adcode,
                reason: format!("expected a string, found {}", json_kind(other)),
            });
        }
    };

    let geometry = match obj.get("geometry") {
        None | Some(Value::Null) => return Err(GeoError::MissingGeometry { feature, adcode }),
        Some(g) => g,
    };
    let kind = geometry.get("type").and_then(Value::as_str).unwrap_or("");
    let malformed = |reason: String| GeoError::MalformedCoordinates {
        feature,
        adcode,
        reason,
    };
    let coords = || {
        geometry
            .get("coordinates")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("missing `coordinates` array".to_owned()))
    };
    let raw_polygons: Vec<&Value> = match kind {
        "Polygon" => vec![geometry.get("coordinates").unwrap_or(&Value::Null)],
        "MultiPolygon" => coords()?.iter().collect(),
        other => {
            return Err(GeoError::UnsupportedGeometry {
                feature,
                adcode,
                kind: if other.is_empty() {
                    "<missing>".to_owned()
                } else {
                    other.to_owned()
                },
            });
        }
    };
    if raw_polygons.is_empty() {
        return Err(malformed("MultiPolygon has no polygons".to_owned()));
    }

    let mut polygons = Vec::with_capacity(raw_polygons.len());
    for (p, raw_polygon) in raw_polygons.into_iter().enumerate() {
        let raw_rings = raw_polygon
            .as_array()
            .ok_or_else(|| malformed(format!("polygon {p} is not an array of rings")))?;
        if raw_rings.is_empty() {
            return Err(malformed(format!("polygon {p} has no rings")));
        }
        let mut rings = Vec::with_capacity(raw_rings.len());
        for (r, raw_ring) in raw_rings.iter().enumerate() {
            let raw_positions = raw_ring
                .as_array()
                .ok_or_else(|| malformed(format!("polygon {p} ring {r} is not an array")))?;
            let mut ring = Vec::with_capacity(raw_positions.len());
            for (i, raw_pos) in raw_positions.iter().enumerate() {
                let pos = raw_pos.as_array().filter(|a| a.len() >= 2).ok_or_else(|| {
                    malformed(format!(
                        "polygon {p} ring {r} position {i} is not an array of >= 2 numbers"
                    ))
                })?;
                let (Some(lng), Some(lat)) = (pos[0].as_f64(), pos[1].as_f64()) else {
                    return Err(malformed(format!(
                        "polygon {p} ring {r} position {i} has a non-numeric coordinate"
                    )));
                };
                ring.push([lng, lat]);
            }
            rings.push(ring);
        }
        polygons.push(rings);
    }
    validate_polygons(adcode, &polygons)?;
    Ok(CountyShape {
        adcode,
        name,
        polygons,
    })
}

fn parse_adcode(feature: usize, value: Option<&Value>) -> Result<u32, GeoError> {
    let invalid = |reason: String| GeoError::InvalidAdcode { feature, reason };
    let code: u64 = match value {
        None | Some(Value::Null) => return Err(GeoError::MissingAdcode { feature }),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| invalid(format!("{n} is not a non-negative integer")))?,
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!("{s:?} is not a string of digits")));
            }
            t.parse::<u64>()
                .map_err(|e| invalid(format!("{s:?}: {e}")))?
        }
        Some(other) => {
            return Err(invalid(format!(
                "expected a number or numeric string, found {}",
                json_kind(other)
            )));
        }
    };
    if !(ADCODE_MIN..=ADCODE_MAX).contains(&code) {
        return Err(invalid(format!("{code} is not a 6-digit code")));
    }
    u32::try_from(code).map_err(|e| invalid(format!("{code}: {e}")))
}

/// Checks ring lengths and coordinate finiteness of one county's polygons.
///
/// Shared by the parser and [`crate::geo::polygon::PolygonIndex::build`] so
/// that hand-built [`CountyShape`]s get the same checks as parsed ones.
pub(crate) fn validate_polygons(
    adcode: u32,
    polygons: &[Vec<Vec<[f64; 2]>>],
) -> Result<(), GeoError> {
    if polygons.is_empty() {
        return Err(GeoError::EmptyShape { adcode });
    }
    for (polygon, rings) in polygons.iter().enumerate() {
        if rings.is_empty() {
            return Err(GeoError::EmptyShape { adcode });
        }
        for (ring, positions) in rings.iter().enumerate() {
            if positions.len() < MIN_RING_POSITIONS {
                return Err(GeoError::RingTooShort {
                    adcode,
                    polygon,
                    ring,
                    positions: positions.len(),
                });
            }
            if let Some(position) = positions
                .iter()
                .position(|p| !p[0].is_finite() || !p[1].is_finite())
            {
                return Err(GeoError::NonFiniteCoordinate {
                    adcode,
                    polygon,
                    ring,
                    position,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: &str = "[[[0,0],[4,0],[4,4],[0,4],[0,0]],[[1,1],[1,3],[3,3],[3,1],[1,1]]]";

    fn feature(props: &str, geometry: &str) -> String {
        format!(r#"{{"type":"Feature","properties":{props},"geometry":{geometry}}}"#)
    }

    fn collection(features: &[String]) -> Vec<u8> {
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        )
        .into_bytes()
    }

    fn polygon_feature(props: &str) -> String {
        feature(
            props,
            &format!(r#"{{"type":"Polygon","coordinates":{SQUARE}}}"#),
        )
    }

    #[test]
    fn parses_polygon_and_multipolygon_with_string_or_number_adcode() {
        let bytes = collection(&[
            polygon_feature(r#"{"adcode":"110101","name":"A","center":[1,1]}"#),
            feature(
                r#"{"adcode":110102,"name":"B"}"#,
                r#"{"type":"MultiPolygon","coordinates":[[[[5,0],[6,0],[6,1],[5,0]]],[[[7,0],[8,0],[8,1,12.5],[7,0]]]]}"#,
            ),
        ]);
        let shapes = parse_feature_collection(&bytes).expect("valid fixture");
        assert_eq!(shapes.len(), 2);
        assert_eq!((shapes[0].adcode, shapes[0].name.as_str()), (110101, "A"));
        assert_eq!(shapes[0].polygons.len(), 1);
        assert_eq!(shapes[0].polygons[0].len(), 2, "outer ring + hole");
        assert_eq!(shapes[0].polygons[0][1][1], [1.0, 3.0]);
        assert_eq!((shapes[1].adcode, shapes[1].polygons.len()), (110102, 2));
        assert_eq!(shapes[1].polygons[1][0][2], [8.0, 1.0], "altitude dropped");
    }

    #[test]
    fn rejects_invalid_json() {
        let err = parse_feature_collection(b"{not json").unwrap_err();
        assert!(matches!(err, GeoError::Json(_)), "{err:?}");
        // Out-of-range numbers never become infinities.
        let bytes = collection(&[feature(
            r#"{"adcode":110101,"name":"A"}"#,
            r#"{"type":"Polygon","coordinates":[[[0,0],[1e400,0],[1,1],[0,0]]]}"#,
        )]);
        assert!(parse_feature_collection(&bytes).is_err());
    }

    #[test]
    fn rejects_bad_top_level_type() {
        let err = parse_feature_collection(br#"{"type":"Feature","features":[]}"#).unwrap_err();
        assert!(
            matches!(&err, GeoError::NotFeatureCollection { found } if found == "Feature"),
            "{err:?}"
        );
        let err = parse_feature_collection(b"[1,2]").unwrap_err();
        assert!(
            matches!(err, GeoError::NotFeatureCollection { .. }),
            "{err:?}"
        );
        let err = parse_feature_collection(br#"{"type":"FeatureCollection"}"#).unwrap_err();
        assert!(matches!(err, GeoError::MissingFeatures), "{err:?}");
    }

    #[test]
    fn rejects_bad_feature_objects() {
        let err = parse_feature_collection(&collection(&["42".to_owned()])).unwrap_err();
        assert!(
            matches!(err, GeoError::InvalidFeature { feature: 0, .. }),
            "{err:?}"
        );
        let f = r#"{"type":"Feature","geometry":null}"#.to_owned();
        let err = parse_feature_collection(&collection(&[f])).unwrap_err();
        assert!(
            matches!(err, GeoError::InvalidFeature { feature: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_missing_or_bad_adcode() {
        let ok = polygon_feature(r#"{"adcode":110101,"name":"A"}"#);
        let err = parse_feature_collection(&collection(&[
            ok.clone(),
            polygon_feature(r#"{"name":"B"}"#),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, GeoError::MissingAdcode { feature: 1 }),
            "{err:?}"
        );

        for bad in [
            r#""42a001""#,
            r#""""#,
            "12345",
            "1234567",
            "-420500",
            "420500.5",
            "true",
            "[420500]",
        ] {
            let props = format!(r#"{{"adcode":{bad},"name":"B"}}"#);
            let err = parse_feature_collection(&collection(&[ok.clone(), polygon_feature(&props)]))
                .unwrap_err();
            assert!(
                matches!(err, GeoError::InvalidAdcode { feature: 1, .. }),
                "adcode {bad}: {err:?}"
            );
        }
    }

    #[test]
    fn rejects_missing_or_bad_name() {
        let err = parse_feature_collection(&collection(&[polygon_feature(r#"{"adcode":110101}"#)]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                GeoError::MissingName {
                    feature: 0,
                    adcode: 110101
                }
            ),
            "{err:?}"
        );
        for bad in ["3", r#""  ""#, "{}"] {
            let props = format!(r#"{{"adcode":110101,"name":{bad}}}"#);
            let err =
                parse_feature_collection(&collection(&[polygon_feature(&props)])).unwrap_err();
            assert!(
                matches!(
                    err,
                    GeoError::InvalidName {
                        feature: 0,
                        adcode: 110101,
                        ..
                    }
                ),
                "name {bad}: {err:?}"
            );
        }
    }

    #[test]
    fn rejects_unsupported_or_missing_geometry() {
        let props = r#"{"adcode":110101,"name":"A"}"#;
        let err = parse_feature_collection(&collection(&[feature(
            props,
            r#"{"type":"LineString","coordinates":[[0,0],[1,1]]}"#,
        )]))
        .unwrap_err();
        assert!(
            matches!(&err, GeoError::UnsupportedGeometry { feature: 0, adcode: 110101, kind } if kind == "LineString"),
            "{err:?}"
        );
        let err = parse_feature_collection(&collection(&[feature(props, "null")])).unwrap_err();
        assert!(
            matches!(
                err,
                GeoError::MissingGeometry {
                    feature: 0,
                    adcode: 110101
                }
            ),
            "{err:?}"
        );
        let err = parse_feature_collection(&collection(&[feature(
            props,
            r#"{"type":"MultiPolygon","coordinates":[]}"#,
        )]))
        .unwrap_err();
        assert!(
            matches!(err, GeoError::MalformedCoordinates { feature: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_rings() {
        let props = r#"{"adcode":110101,"name":"A"}"#;
        let short = feature(
            props,
            r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
        );
        let err = parse_feature_collection(&collection(&[short])).unwrap_err();
        assert!(
            matches!(
                err,
                GeoError::RingTooShort {
                    adcode: 110101,
                    polygon: 0,
                    ring: 0,
                    positions: 3
                }
            ),
            "{err:?}"
        );
        let hole_short = feature(
            props,
            r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[5,5],[6,5],[6,6],[5,5]],[]]]}"#,
        );
        let err = parse_feature_collection(&collection(&[hole_short])).unwrap_err();
        assert!(
            matches!(
                err,
                GeoError::RingTooShort {
                    polygon: 1,
                    ring: 1,
                    positions: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        for bad in [
            r#"[[[0,0],[1,0],["x",1],[0,0]]]"#,
            r#"[[[0,0],[1,0],[1],[0,0]]]"#,
            r#"[[0,0],[1,0],[1,1],[0,0]]"#,
            r#"[]"#,
            r#""nope""#,
        ] {
            let f = feature(
                props,
                &format!(r#"{{"type":"Polygon","coordinates":{bad}}}"#),
            );
            let err = parse_feature_collection(&collection(&[f])).unwrap_err();
            assert!(
                matches!(
                    err,
                    GeoError::MalformedCoordinates {
                        feature: 0,
                        adcode: 110101,
                        ..
                    }
                ),
                "coordinates {bad}: {err:?}"
            );
        }
    }

    #[test]
    fn validation_rejects_non_finite_coordinates() {
        // JSON cannot carry NaN, but hand-built shapes can: same check.
        let ring = vec![[0.0, 0.0], [1.0, 0.0], [f64::NAN, 1.0], [0.0, 0.0]];
        let err = validate_polygons(110101, &[vec![ring]]).unwrap_err();
        assert!(
            matches!(
                err,
                GeoError::NonFiniteCoordinate {
                    adcode: 110101,
                    polygon: 0,
                    ring: 0,
                    position: 2
                }
            ),
            "{err:?}"
        );
    }

    /// A feature listed twice used to be merged into its own county, whose rings then
    /// cancelled under the even-odd rule: the county was in the index but contained no point.
    #[test]
    fn rejects_a_feature_listed_twice() {
        let f = polygon_feature(r#"{"adcode":110101,"name":"A"}"#);
        let bytes = collection(&[
            f.clone(),
            polygon_feature(r#"{"adcode":110102,"name":"B"}"#),
            f,
        ]);
        let err = parse_feature_collection(&bytes).unwrap_err();
        assert_repeated(&err, 2);
        assert!(err.to_string().contains("110101"), "{err}");
    }

    /// `err` refuses adcode 110101, first given by feature 0, again at `feature`.
    fn assert_repeated(err: &GeoError, feature: usize) {
        assert!(
            matches!(
                err,
                GeoError::RepeatedAdcode {
                    adcode: 110101,
                    first_feature: 0,
                    feature: f,
                } if *f == feature
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_repeated_adcodes_with_other_parts_or_names() {
        // Another part of the same county belongs in one MultiPolygon feature.
        let other_part = feature(
            r#"{"adcode":"110101","name":"A"}"#,
            r#"{"type":"Polygon","coordinates":[[[10,10],[11,10],[11,11],[10,10]]]}"#,
        );
        let renamed = polygon_feature(r#"{"adcode":110101,"name":"Z"}"#);
        for repeat in [other_part, renamed] {
            let bytes = collection(&[polygon_feature(r#"{"adcode":110101,"name":"A"}"#), repeat]);
            assert_repeated(&parse_feature_collection(&bytes).unwrap_err(), 1);
        }
    }
}
