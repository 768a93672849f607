//! Tests against the real Yichang boundary file, read by path at run time.
//!
//! They check the grid index against a brute-force even-odd oracle where it
//! is hardest (shared borders, near vertices, random points), that every
//! county is reachable, that outside points miss, and that WGS-84 input is
//! converted. No coordinates from the third-party file appear in this source.

use std::collections::HashMap;

use crate::geo::gcj02::{gcj02_to_wgs84, wgs84_to_gcj02};
use crate::geo::polygon::MAX_ROW_EDGE_ENTRIES;
use crate::geo::test_support::{SplitMix64, feature_point, metres_per_degree, real, test_seed};
use crate::geo::{CountyShape, Crs, PolygonIndex, RegionIndex, SeatIndex};

/// A point that the oracle puts in `shape`: the file's `center` (the seat),
/// else its `centroid`, else the deepest point of a scan over the county.
fn interior_point(shape: &CountyShape) -> [f64; 2] {
    let data = real();
    for key in ["center", "centroid"] {
        if let Some(p) = feature_point(&data.raw, shape.adcode, key)
            && data.oracle.locate(p[0], p[1]) == Some(shape.adcode)
        {
            return p;
        }
    }
    // Fallback: a grid point whose neighbours ~300 m away are all inside too.
    let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    for p in shape.polygons.iter().flatten().flatten() {
        b = [
            b[0].min(p[0]),
            b[1].min(p[1]),
            b[2].max(p[0]),
            b[3].max(p[1]),
        ];
    }
    let step = 0.003;
    let inside = |x: f64, y: f64| data.oracle.locate(x, y) == Some(shape.adcode);
    let mut fallback = None;
    let mut y = b[1];
    while y <= b[3] {
        let mut x = b[0];
        while x <= b[2] {
            if inside(x, y) {
                fallback.get_or_insert([x, y]);
                if [(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
                    .iter()
                    .all(|(dx, dy)| inside(x + dx * step, y + dy * step))
                {
                    println!("adcode {}: using a scanned interior point", shape.adcode);
                    return [x, y];
                }
            }
            x += step;
        }
        y += step;
    }
    fallback.unwrap_or_else(|| panic!("adcode {}: no interior point found", shape.adcode))
}

#[test]
fn real_file_has_13_counties() {
    let data = real();
    assert_eq!(data.shapes.len(), 13);
    let listed: Vec<(u32, &str)> = data.index.counties().collect();
    assert_eq!(listed.len(), 13);
    assert!(
        listed.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted by adcode"
    );
    for (adcode, name) in listed {
        assert_eq!(adcode / 100, 4205, "{adcode} is in Yichang (4205xx)");
        assert!(!name.is_empty());
        assert_eq!(data.index.name(adcode), Some(name));
    }
    let (nx, ny) = data.index.grid_dims();
    println!(
        "grid {nx}x{ny}, {} mixed cells ({:.1}%), {} row-edge entries",
        data.index.mixed_cells(),
        100.0 * data.index.mixed_cells() as f64 / (nx * ny) as f64,
        data.index.row_edge_entries()
    );
    // The limit is documented as about a thousand times what this file needs.
    assert!(data.index.row_edge_entries() * 500 < MAX_ROW_EDGE_ENTRIES);
}

#[test]
fn every_county_interior_point_resolves_to_itself() {
    let data = real();
    for shape in &data.shapes {
        let [x, y] = interior_point(shape);
        assert_eq!(
            data.index.locate(x, y),
            Some(shape.adcode),
            "{} ({}) at interior point",
            shape.name,
            shape.adcode
        );
    }
}

#[test]
fn points_outside_the_city_are_none() {
    let data = real();
    let idx = &data.index;
    for (what, x, y) in [
        ("Wuhan", 114.30, 30.59),
        ("Beijing", 116.40, 39.90),
        ("null island", 0.0, 0.0),
        ("antimeridian", 180.0, -90.0),
    ] {
        assert_eq!(idx.locate(x, y), None, "{what}");
    }
    let [x0, y0, x1, y1] = idx.bbox();
    for (x, y) in [(x0, y0), (x0, y1), (x1, y0), (x1, y1)] {
        assert_eq!(idx.locate(x, y), None, "bbox corner ({x}, {y})");
        assert_eq!(data.oracle.locate(x, y), None);
        for (dx, dy) in [(-1e-7, 0.0), (1e-7, 0.0), (0.0, -1e-7), (0.0, 1e-7)] {
            assert_eq!(
                idx.locate(x + dx, y + dy),
                data.oracle.locate(x + dx, y + dy),
                "near corner ({x}, {y})"
            );
        }
    }
    for (x, y) in [(f64::NAN, 30.7), (111.3, f64::NAN), (f64::INFINITY, 30.7)] {
        assert_eq!(idx.locate(x, y), None);
    }
}

/// Edges (as exact `[lng, lat]` end pairs, lower bit pattern first) that two counties of the
/// real file share, with the two adcodes.
fn shared_edges() -> Vec<([f64; 2], [f64; 2], [u32; 2])> {
    let data = real();
    type Key = ([u64; 2], [u64; 2]);
    let mut owners: HashMap<Key, Vec<u32>> = HashMap::new();
    let bits = |p: [f64; 2]| [p[0].to_bits(), p[1].to_bits()];
    for shape in &data.shapes {
        for ring in shape.polygons.iter().flatten() {
            for w in ring.windows(2) {
                let (a, b) = (bits(w[0]), bits(w[1]));
                if a == b {
                    continue;
                }
                let key = if a < b { (a, b) } else { (b, a) };
                let v = owners.entry(key).or_default();
                if !v.contains(&shape.adcode) {
                    v.push(shape.adcode);
                }
            }
        }
    }
    let point = |p: [u64; 2]| [f64::from_bits(p[0]), f64::from_bits(p[1])];
    let mut shared: Vec<_> = owners
        .into_iter()
        .filter(|(_, v)| v.len() == 2)
        .map(|((a, b), v)| (point(a), point(b), [v[0], v[1]]))
        .collect();
    // HashMap order is random: sort so that a failure names the same edge every run.
    shared.sort_by(|p, q| p.partial_cmp(q).expect("finite coordinates"));
    shared
}

#[test]
fn shared_border_points_match_brute_force() {
    let data = real();
    let shared = shared_edges();
    assert!(shared.len() >= 100, "only {} shared edges", shared.len());
    let mut pairs: Vec<(u32, u32)> = shared
        .iter()
        .map(|(_, _, v)| (v[0].min(v[1]), v[0].max(v[1])))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    assert!(pairs.len() >= 12, "only {} bordering pairs", pairs.len());

    let (mut checked, mut long_edges, mut split_cleanly) = (0usize, 0usize, 0usize);
    for &(a, b, counties) in &shared {
        let mid = [(a[0] + b[0]) * 0.5, (a[1] + b[1]) * 0.5];
        let (mx, my) = metres_per_degree(mid[1]);
        let (ex, ey) = ((b[0] - a[0]) * mx, (b[1] - a[1]) * my);
        let len = ex.hypot(ey);
        // Unit normal in metres, back to degrees per metre.
        let (nx, ny) = (-ey / len / mx, ex / len / my);
        let mut at = |d: f64| {
            let (x, y) = (mid[0] + nx * d, mid[1] + ny * d);
            let got = data.index.locate(x, y);
            assert_eq!(
                got,
                data.oracle.locate(x, y),
                "edge {a:?}-{b:?} offset {d} m"
            );
            checked += 1;
            got
        };
        at(0.0);
        for d in [0.5, 2.0, 5.0, 20.0] {
            at(-d);
            at(d);
        }
        if len >= 30.0 {
            long_edges += 1;
            let (l, r) = (at(-3.0), at(3.0));
            if l != r
                && [l, r]
                    .iter()
                    .all(|c| c.is_some_and(|c| counties.contains(&c)))
            {
                split_cleanly += 1;
            }
        }
    }
    println!(
        "{} shared edges, {checked} points, {split_cleanly}/{long_edges} split cleanly",
        shared.len()
    );
    // The two sides of a shared edge belong to its two counties.
    assert!(
        split_cleanly * 10 >= long_edges * 9,
        "{split_cleanly}/{long_edges}"
    );
}

/// Points exactly on a border two counties share are in a county. Each county used to
/// compute the crossing x of the shared edge from its own ring's direction (a→b in one,
/// b→a in the other), which rounds differently, so a point between the two results (what a
/// map SDK's 6-decimal coordinate can be) was in neither: `outside_area` between two
/// counties, while its neighbours 1e-6° away were inside.
#[test]
fn points_exactly_on_shared_borders_are_in_one_county() {
    /// Points per shared edge, spread over its latitude range.
    const SAMPLES_PER_EDGE: usize = 16;
    let data = real();
    let (mut checked, mut directions_differ) = (0usize, 0usize);
    for (a, b, counties) in shared_edges() {
        if a[1] == b[1] {
            continue; // horizontal: no crossing is computed from it
        }
        for i in 1..SAMPLES_PER_EDGE {
            let y = a[1] + (b[1] - a[1]) * (i as f64 / SAMPLES_PER_EDGE as f64);
            // The crossing x as each direction of the edge computes it.
            let x_ab = a[0] + (y - a[1]) * ((b[0] - a[0]) / (b[1] - a[1]));
            let x_ba = b[0] + (y - b[1]) * ((a[0] - b[0]) / (a[1] - b[1]));
            if x_ab != x_ba {
                directions_differ += 1;
            }
            for x in [x_ab, x_ba, x_ab.min(x_ba).next_up()] {
                let got = data.index.locate(x, y);
                assert_eq!(got, data.oracle.locate(x, y), "({x}, {y})");
                let inside: Vec<u32> = data.oracle.containing(x, y).collect();
                assert!(
                    inside.len() == 1 && counties.contains(&inside[0]),
                    "({x}, {y}) on the border of {counties:?} is in {inside:?}"
                );
                checked += 1;
            }
        }
    }
    println!("{checked} points on shared borders, {directions_differ} where a→b and b→a differ");
    assert!(directions_differ > 0, "the sample exercises no rounding");
}

#[test]
fn randomized_points_match_brute_force() {
    let data = real();
    let seed = test_seed(0x0420_0500_5EED);
    let mut rng = SplitMix64::new(seed);
    let [x0, y0, x1, y1] = data.index.bbox();
    let (mx, my) = (0.02 * (x1 - x0), 0.02 * (y1 - y0));
    let vertices: Vec<[f64; 2]> = data
        .shapes
        .iter()
        .flat_map(|s| s.polygons.iter().flatten().flatten().copied())
        .collect();
    let mut points: Vec<[f64; 2]> = Vec::with_capacity(260_000);
    for _ in 0..200_000 {
        points.push([rng.range(x0 - mx, x1 + mx), rng.range(y0 - my, y1 + my)]);
    }
    for _ in 0..50_000 {
        let v = vertices[rng.below(vertices.len())];
        let (dx, dy) = metres_per_degree(v[1]);
        points.push([
            v[0] + rng.range(-20.0, 20.0) / dx,
            v[1] + rng.range(-20.0, 20.0) / dy,
        ]);
    }
    points.extend_from_slice(&vertices);
    let mut hits: HashMap<Option<u32>, usize> = HashMap::new();
    for &[x, y] in &points {
        let got = data.index.locate(x, y);
        assert_eq!(
            got,
            data.oracle.locate(x, y),
            "seed {seed:#x}: point ({x}, {y})"
        );
        *hits.entry(got).or_default() += 1;
    }
    println!("{} points, outcomes {hits:?}", points.len());
    assert_eq!(hits.len(), 14, "all 13 counties and 'outside' were hit");
}

#[test]
fn wgs84_input_is_converted_before_lookup() {
    let data = real();
    let region = RegionIndex::Polygons(data.index.clone());
    let mut differs = 0;
    for shape in &data.shapes {
        let [g_lng, g_lat] = interior_point(shape);
        let (w_lng, w_lat) = gcj02_to_wgs84(g_lng, g_lat);
        let (back_lng, back_lat) = wgs84_to_gcj02(w_lng, w_lat);
        assert!((back_lng - g_lng).abs() < 1e-6 && (back_lat - g_lat).abs() < 1e-6);
        assert_eq!(
            region.locate_point(w_lng, w_lat, Crs::Wgs84),
            Some(shape.adcode),
            "{}",
            shape.name
        );
        assert_eq!(
            region.locate_point(g_lng, g_lat, Crs::Gcj02),
            Some(shape.adcode)
        );
        // Raw WGS-84 read as GCJ-02 is a few hundred metres off: it may or
        // may not land in the same county, so it is only counted.
        if region.locate(w_lng, w_lat) != Some(shape.adcode) {
            differs += 1;
        }
    }
    println!("{differs}/13 interior points change county when WGS-84 is not converted");
}

#[test]
fn region_index_seat_mode_on_real_seats() {
    let data = real();
    let seats: Vec<(u32, [f64; 2])> = data
        .shapes
        .iter()
        .map(|s| {
            let c =
                feature_point(&data.raw, s.adcode, "center").expect("every feature has a center");
            (s.adcode, c)
        })
        .collect();
    let region = RegionIndex::Seats(SeatIndex::new(seats.clone(), 60_000.0).expect("valid seats"));
    for &(adcode, [x, y]) in &seats {
        assert_eq!(region.locate(x, y), Some(adcode));
        let (w_lng, w_lat) = gcj02_to_wgs84(x, y);
        assert_eq!(region.locate_point(w_lng, w_lat, Crs::Wgs84), Some(adcode));
    }
    assert_eq!(
        region.locate(114.30, 30.59),
        None,
        "Wuhan is beyond 60 km of every seat"
    );
    // The exact index agrees with the seat mode on the seats themselves
    // when the seat lies inside its own county.
    let poly = RegionIndex::Polygons(PolygonIndex::build(&data.shapes).expect("builds"));
    for &(adcode, [x, y]) in &seats {
        if data.oracle.locate(x, y) == Some(adcode) {
            assert_eq!(poly.locate(x, y), Some(adcode));
        }
    }
}
