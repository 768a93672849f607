//! Lookup latency of the county grid index on the real Yichang boundaries.
//!
//! Every voucher request is located, so `locate` sits on the hot path. The
//! index is built from the boundary file (by path: `VOUCHERD_YICHANG_GEOJSON`,
//! else `../shared/data/yichang-420500.geojson`); 10,000 seeded points inside
//! the city's bounding box (half uniform, half within 50 m of a boundary
//! vertex) are looked up one per iteration, GCJ-02 directly and WGS-84 via
//! `wgs84_to_gcj02` first.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use voucherd::geo::gcj02::{gcj02_to_wgs84, wgs84_to_gcj02};
use voucherd::geo::{PolygonIndex, parse_feature_collection};

const POINTS: usize = 10_000;
const SEED: u64 = 0x0420_0500_BE4C;

fn boundary_path() -> PathBuf {
    std::env::var_os("VOUCHERD_YICHANG_GEOJSON").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/data/yichang-420500.geojson"
            ))
        },
        PathBuf::from,
    )
}

/// SplitMix64, uniform f64 in `[lo, hi)`.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        voucherd::core::rng::splitmix_next(&mut self.0)
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The index and three point sets: uniform, near-border, half of each.
struct Setup {
    index: PolygonIndex,
    uniform: Vec<[f64; 2]>,
    near_border: Vec<[f64; 2]>,
    mixed: Vec<[f64; 2]>,
}

fn setup() -> Setup {
    let path = boundary_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} (set VOUCHERD_YICHANG_GEOJSON): {e}",
            path.display()
        )
    });
    let shapes = parse_feature_collection(&bytes).expect("boundary file parses");
    let index = PolygonIndex::build(&shapes).expect("boundary file indexes");
    let vertices: Vec<[f64; 2]> = shapes
        .iter()
        .flat_map(|s| s.polygons.iter().flatten().flatten().copied())
        .collect();
    let [x0, y0, x1, y1] = index.bbox();
    let mut rng = Rng(SEED);
    let uniform: Vec<[f64; 2]> = (0..POINTS)
        .map(|_| [rng.range(x0, x1), rng.range(y0, y1)])
        .collect();
    let near_border: Vec<[f64; 2]> = (0..POINTS)
        .map(|_| {
            let v = vertices[(rng.next_u64() % vertices.len() as u64) as usize];
            let (mx, my) = (111_320.0 * v[1].to_radians().cos(), 110_574.0);
            [
                v[0] + rng.range(-50.0, 50.0) / mx,
                v[1] + rng.range(-50.0, 50.0) / my,
            ]
        })
        .collect();
    let mixed: Vec<[f64; 2]> = uniform[..POINTS / 2]
        .iter()
        .chain(&near_border[..POINTS / 2])
        .copied()
        .collect();
    Setup {
        index,
        uniform,
        near_border,
        mixed,
    }
}

fn bench_lookup(c: &mut Criterion) {
    let Setup {
        index,
        uniform,
        near_border,
        mixed,
    } = setup();
    let (nx, ny) = index.grid_dims();
    let hits = mixed
        .iter()
        .filter(|p| index.locate(p[0], p[1]).is_some())
        .count();
    eprintln!(
        "grid {nx}x{ny}, {} mixed cells; {hits}/{} sample points inside a county",
        index.mixed_cells(),
        mixed.len()
    );

    let mut group = c.benchmark_group("locate");
    for (name, points) in [
        ("mixed", &mixed),
        ("uniform_bbox", &uniform),
        ("near_border_50m", &near_border),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let p = points[i];
                i = (i + 1) % points.len();
                index.locate(black_box(p[0]), black_box(p[1]))
            })
        });
    }
    group.finish();

    let wgs: Vec<[f64; 2]> = mixed
        .iter()
        .map(|p| {
            let (x, y) = gcj02_to_wgs84(p[0], p[1]);
            [x, y]
        })
        .collect();
    let mut i = 0;
    c.bench_function("wgs84_to_gcj02+locate/mixed", |b| {
        b.iter(|| {
            let p = wgs[i];
            i = (i + 1) % wgs.len();
            let (x, y) = wgs84_to_gcj02(black_box(p[0]), black_box(p[1]));
            index.locate(x, y)
        })
    });
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
