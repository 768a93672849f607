//! Exact point-in-county lookup through a prepared uniform grid.
//!
//! Every voucher request is located, so a lookup must not scan thousands of
//! boundary edges. [`PolygonIndex::build`] lays a uniform grid (at most
//! [`MAX_GRID_CELLS_PER_SIDE`] cells a side, about [`TARGET_CELL_SIZE_M`]
//! metres) over the boundaries' bounding box and classifies each cell:
//!
//! * a cell no boundary edge touches is **uniform**: wholly inside one county
//!   or outside all, decided once by a point-in-polygon test at build time,
//!   and answered in O(1);
//! * a cell some edge touches is **mixed** and keeps a short, deduplicated
//!   candidate list of counties. A candidate is tested by counting crossings
//!   of a horizontal ray with only that county's edges in the cell's grid
//!   *row* (a ray at latitude `y` can only cross edges spanning `y`).
//!
//! Containment is the even-odd rule over all rings of a county, so holes and
//! multi-polygons need no special case.
//!
//! Memory: an edge is kept once per grid row it spans, and noted once per cell
//! it touches while building, so a boundary file of long edges (a zig-zag
//! across the whole box) costs up to ~1,000 times its size. The totals are
//! bounded by [`MAX_ROW_EDGE_ENTRIES`] and [`MAX_TOUCHED_CELL_ENTRIES`]; a file
//! needing more is refused with a [`GeoError`] instead of exhausting memory. Edge/cell overlap is computed
//! conservatively (edges are padded by [`EDGE_PAD_DEG`], and rows use the
//! same monotone cell-index function as queries), so correctness never relies
//! on exact geometry: the answer for every point equals the brute-force
//! even-odd test over all counties.
//!
//! Ties: where counties overlap, the lowest adcode wins. A point exactly on a
//! border two counties share is in exactly one of them: each edge's crossing
//! x is computed from its lower-y end, so both counties see the same edge bit
//! for bit whichever way their rings run. The crossing test is the half-open
//! `(a.y > y) != (b.y > y)` rule, so every answer is a deterministic function
//! of the input coordinates.

use std::collections::HashMap;

use crate::geo::GeoError;
use crate::geo::geojson::{CountyShape, validate_polygons};

/// Upper bound on grid cells per side (memory ≤ 4 bytes × this², 4 MiB).
pub const MAX_GRID_CELLS_PER_SIDE: usize = 1024;
/// Desired cell edge length in metres; the grid is coarser if the bounding
/// box would need more than [`MAX_GRID_CELLS_PER_SIDE`] cells a side.
pub const TARGET_CELL_SIZE_M: f64 = 150.0;
/// Padding (degrees, ≈0.1 mm) added around each edge's extent when marking
/// cells, far above the rounding error of the cell-index arithmetic.
pub const EDGE_PAD_DEG: f64 = 1e-9;
/// Most counties one index can hold (candidate entries are 15-bit indices).
pub const MAX_COUNTIES: usize = 0x7FFF;
/// Most (grid row, edge) entries an index may hold: each edge is kept once per
/// row it spans (up to [`MAX_GRID_CELLS_PER_SIDE`]), so that a lookup tests only
/// its row's edges. The real Yichang file (5,221 positions) needs 16,275, about
/// 3 per edge; this is a thousand times that. An entry takes 32 bytes in the
/// index (40 while building), so the limit caps them at 512 MiB. Counted before
/// anything is allocated.
pub const MAX_ROW_EDGE_ENTRIES: usize = 16 << 20;
/// Most (grid cell, county) entries noted while building: every cell an edge
/// touches, thousands for an edge across the whole box, even a horizontal one
/// (which spans no row). The real Yichang file notes 27,930. 8 bytes each: at
/// most 128 MiB, freed after the build.
pub const MAX_TOUCHED_CELL_ENTRIES: usize = 16 << 20;

const METRES_PER_DEG_LAT: f64 = 110_574.0;
const METRES_PER_DEG_LNG_EQUATOR: f64 = 111_320.0;

/// Cell value flag: the low 31 bits are an offset into `lists`.
const MIXED: u32 = 1 << 31;
/// Candidate flag: the county wholly contains the cell, stop here.
const SURE: u16 = 1 << 15;

/// One non-horizontal edge, prepared for the crossing test.
#[derive(Debug, Clone, Copy)]
struct Edge {
    ax: f64,
    ay: f64,
    by: f64,
    /// `(bx - ax) / (by - ay)`.
    dxdy: f64,
}

impl Edge {
    /// Whether a ray from `(x, y)` towards +x crosses this edge.
    #[inline]
    fn crosses(&self, x: f64, y: f64) -> bool {
        (self.ay > y) != (self.by > y) && x < self.ax + (y - self.ay) * self.dxdy
    }
}

/// A prepared index answering "which county contains this GCJ-02 point".
#[derive(Debug, Clone)]
pub struct PolygonIndex {
    grid: Grid,
    /// Upper corner of the bounding box (the lower one is the grid origin).
    x1: f64,
    y1: f64,
    /// Sorted by adcode; county indices below refer to this order.
    adcodes: Vec<u32>,
    names: Vec<String>,
    /// One value per cell, row-major: 0 = outside, `k + 1` = uniformly in
    /// county `k`, `MIXED | off` = candidates at `lists[off + 1..][..lists[off]]`.
    cells: Vec<u32>,
    /// Length-prefixed candidate lists, deduplicated.
    lists: Vec<u16>,
    /// Edges grouped by (row, county).
    edges: Vec<Edge>,
    /// `edges[row_offsets[r * n + k]..row_offsets[r * n + k + 1]]` are county
    /// `k`'s edges whose y-extent meets row `r`.
    row_offsets: Vec<u32>,
}

/// Grid geometry shared by the builder and the queries.
#[derive(Debug, Clone, Copy)]
struct Grid {
    x0: f64,
    y0: f64,
    cw: f64,
    ch: f64,
    inv_cw: f64,
    inv_ch: f64,
    nx: usize,
    ny: usize,
}

impl Grid {
    /// Column of `x`, clamped to the grid; monotone in `x`.
    #[inline]
    fn col(&self, x: f64) -> usize {
        // `as` saturates: negatives (and NaN) become 0.
        (((x - self.x0) * self.inv_cw) as usize).min(self.nx - 1)
    }

    /// Row of `y`, clamped to the grid; monotone in `y`.
    #[inline]
    fn row(&self, y: f64) -> usize {
        (((y - self.y0) * self.inv_ch) as usize).min(self.ny - 1)
    }
}

impl PolygonIndex {
    /// Builds the index. Fails on an empty list, a county without polygons,
    /// short rings, non-finite coordinates or duplicate adcodes (a county's
    /// parts are polygons of one shape; merging two shapes' rings would cancel
    /// their overlap under the even-odd rule).
    /// Boundaries needing more than [`MAX_ROW_EDGE_ENTRIES`] or
    /// [`MAX_TOUCHED_CELL_ENTRIES`] grid entries are refused.
    pub fn build(shapes: &[CountyShape]) -> Result<PolygonIndex, GeoError> {
        Self::build_with_limits(shapes, MAX_ROW_EDGE_ENTRIES, MAX_TOUCHED_CELL_ENTRIES)
    }

    /// [`PolygonIndex::build`] with other entry limits, so that tests of the
    /// limits stay small.
    pub(crate) fn build_with_limits(
        shapes: &[CountyShape],
        max_row_edge_entries: usize,
        max_touched_cell_entries: usize,
    ) -> Result<PolygonIndex, GeoError> {
        if shapes.is_empty() {
            return Err(GeoError::NoShapes);
        }
        if shapes.len() > MAX_COUNTIES {
            return Err(GeoError::TooManyCounties {
                count: shapes.len(),
                max: MAX_COUNTIES,
            });
        }
        let mut order: Vec<&CountyShape> = shapes.iter().collect();
        order.sort_by_key(|s| s.adcode);
        for pair in order.windows(2) {
            if pair[0].adcode == pair[1].adcode {
                return Err(GeoError::DuplicateAdcode {
                    adcode: pair[0].adcode,
                });
            }
        }
        for s in &order {
            validate_polygons(s.adcode, &s.polygons)?;
        }

        // Bounding boxes: overall and per county.
        let mut county_bbox = Vec::with_capacity(order.len());
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for s in &order {
            let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
            for p in s.polygons.iter().flatten().flatten() {
                b = [
                    b[0].min(p[0]),
                    b[1].min(p[1]),
                    b[2].max(p[0]),
                    b[3].max(p[1]),
                ];
            }
            x0 = x0.min(b[0]);
            y0 = y0.min(b[1]);
            x1 = x1.max(b[2]);
            y1 = y1.max(b[3]);
            county_bbox.push(b);
        }

        let grid = grid_for_bbox(x0, y0, x1, y1);
        let n = order.len();

        // The row-edge table's size, checked before it is allocated.
        let mut row_edge_entries = 0usize;
        for s in &order {
            for (a, b) in edges(s).filter(|(a, b)| a[1] != b[1]) {
                let (r_lo, r_hi) = rows_spanned(&grid, a, b);
                row_edge_entries += r_hi - r_lo + 1;
            }
        }
        if row_edge_entries > max_row_edge_entries {
            return Err(GeoError::TooManyRowEdgeEntries {
                entries: row_edge_entries,
                max: max_row_edge_entries,
            });
        }

        // Pass 1: per edge, the rows it spans and the cells it touches.
        let mut row_edges: Vec<(u32, u16, Edge)> = Vec::with_capacity(row_edge_entries);
        let mut touched: Vec<(u32, u16)> = Vec::new();
        for (k, s) in order.iter().enumerate() {
            let k16 = k as u16; // k < MAX_COUNTIES
            for (a, b) in edges(s) {
                mark_edge(&grid, a, b, k16, &mut touched, &mut row_edges);
                if touched.len() > max_touched_cell_entries {
                    return Err(GeoError::TooManyTouchedCellEntries {
                        max: max_touched_cell_entries,
                    });
                }
            }
        }

        // Row/county edge table.
        row_edges.sort_by_key(|&(r, k, _)| (r, k)); // stable: keeps ring order
        let mut row_offsets = vec![0u32; grid.ny * n + 1];
        for &(r, k, _) in &row_edges {
            row_offsets[r as usize * n + k as usize + 1] += 1;
        }
        for i in 1..row_offsets.len() {
            row_offsets[i] += row_offsets[i - 1];
        }
        let edges: Vec<Edge> = row_edges.into_iter().map(|(_, _, e)| e).collect();

        let mut index = PolygonIndex {
            grid,
            x1,
            y1,
            adcodes: order.iter().map(|s| s.adcode).collect(),
            names: order.iter().map(|s| s.name.clone()).collect(),
            cells: vec![0; grid.nx * grid.ny],
            lists: Vec::new(),
            edges,
            row_offsets,
        };

        // Pass 2: classify cells row by row.
        touched.sort_unstable();
        touched.dedup();
        let mut list_ids: HashMap<Vec<u16>, u32> = HashMap::new();
        let mut t = 0; // cursor into `touched`
        let mut cand: Vec<u16> = Vec::new();
        for r in 0..grid.ny {
            let cy = grid.y0 + (r as f64 + 0.5) * grid.ch;
            // Value of the previous cell if it was uniform: adjacent untouched
            // cells form one connected untouched region, so they agree.
            let mut run: Option<u32> = None;
            for c in 0..grid.nx {
                let cell = r * grid.nx + c;
                let cx = grid.x0 + (c as f64 + 0.5) * grid.cw;
                let t_start = t;
                while t < touched.len() && touched[t].0 as usize == cell {
                    t += 1;
                }
                let touching = &touched[t_start..t];
                if touching.is_empty() {
                    let v = match run {
                        Some(v) => v,
                        None => (0..n)
                            .find(|&k| {
                                in_bbox(&county_bbox[k], cx, cy) && index.row_contains(r, k, cx, cy)
                            })
                            .map_or(0, |k| k as u32 + 1),
                    };
                    run = Some(v);
                    index.cells[cell] = v;
                    continue;
                }
                run = None;
                // Candidates in adcode order: touching counties must be tested;
                // the first untouched county containing the centre contains
                // the whole cell, so it ends the list.
                cand.clear();
                let mut ti = 0;
                for (k, bbox) in county_bbox.iter().enumerate() {
                    if ti < touching.len() && touching[ti].1 as usize == k {
                        cand.push(k as u16);
                        ti += 1;
                    } else if in_bbox(bbox, cx, cy) && index.row_contains(r, k, cx, cy) {
                        cand.push(k as u16 | SURE);
                        break;
                    }
                }
                index.cells[cell] = if cand[0] & SURE != 0 {
                    u32::from(cand[0] & !SURE) + 1
                } else {
                    let lists = &mut index.lists;
                    let off = *list_ids.entry(cand.clone()).or_insert_with(|| {
                        let off = lists.len() as u32;
                        lists.push(cand.len() as u16);
                        lists.extend_from_slice(&cand);
                        off
                    });
                    MIXED | off
                };
            }
        }
        Ok(index)
    }

    /// The county (adcode) containing the GCJ-02 point, if any.
    ///
    /// Non-finite input and points outside the boundaries' bounding box are
    /// `None` without touching the grid.
    #[inline]
    pub fn locate(&self, lng: f64, lat: f64) -> Option<u32> {
        // Written so that NaN fails every comparison.
        let g = &self.grid;
        if !(lng >= g.x0 && lng <= self.x1 && lat >= g.y0 && lat <= self.y1) {
            return None;
        }
        let r = g.row(lat);
        let v = self.cells[r * g.nx + g.col(lng)];
        if v & MIXED == 0 {
            return v.checked_sub(1).map(|k| self.adcodes[k as usize]);
        }
        let off = (v & !MIXED) as usize;
        let len = usize::from(self.lists[off]);
        for &entry in &self.lists[off + 1..off + 1 + len] {
            let k = usize::from(entry & !SURE);
            if entry & SURE != 0 || self.row_contains(r, k, lng, lat) {
                return Some(self.adcodes[k]);
            }
        }
        None
    }

    /// Even-odd test of county `k` using only its edges in row `r`.
    #[inline]
    fn row_contains(&self, r: usize, k: usize, x: f64, y: f64) -> bool {
        let i = r * self.adcodes.len() + k;
        let (lo, hi) = (
            self.row_offsets[i] as usize,
            self.row_offsets[i + 1] as usize,
        );
        self.edges[lo..hi]
            .iter()
            .fold(false, |inside, e| inside ^ e.crosses(x, y))
    }

    /// `(adcode, name)` of every indexed county, by ascending adcode.
    pub fn counties(&self) -> impl Iterator<Item = (u32, &str)> {
        self.adcodes
            .iter()
            .zip(&self.names)
            .map(|(&a, n)| (a, n.as_str()))
    }

    /// The name of the county with this adcode, if indexed.
    pub fn name(&self, adcode: u32) -> Option<&str> {
        self.adcodes
            .binary_search(&adcode)
            .ok()
            .map(|k| self.names[k].as_str())
    }

    /// Bounding box of all boundaries: `[min_lng, min_lat, max_lng, max_lat]`.
    pub fn bbox(&self) -> [f64; 4] {
        [self.grid.x0, self.grid.y0, self.x1, self.y1]
    }

    /// Grid size as `(columns, rows)`.
    pub fn grid_dims(&self) -> (usize, usize) {
        (self.grid.nx, self.grid.ny)
    }

    /// How many (row, edge) entries the index holds (see [`MAX_ROW_EDGE_ENTRIES`]).
    pub fn row_edge_entries(&self) -> usize {
        self.edges.len()
    }

    /// How many cells need a candidate test (the rest answer in O(1)).
    pub fn mixed_cells(&self) -> usize {
        self.cells.iter().filter(|&&v| v & MIXED != 0).count()
    }
}

/// A county's edges `a→b`, each ring closed implicitly, zero-length edges skipped.
fn edges(shape: &CountyShape) -> impl Iterator<Item = ([f64; 2], [f64; 2])> + '_ {
    shape.polygons.iter().flatten().flat_map(|ring| {
        (0..ring.len())
            .map(|i| (ring[i], ring[(i + 1) % ring.len()]))
            .filter(|(a, b)| a != b)
    })
}

/// The first and last grid rows an edge is kept in (padded, like the cells).
fn rows_spanned(grid: &Grid, a: [f64; 2], b: [f64; 2]) -> (usize, usize) {
    (
        grid.row(a[1].min(b[1]) - EDGE_PAD_DEG),
        grid.row(a[1].max(b[1]) + EDGE_PAD_DEG),
    )
}

fn in_bbox(b: &[f64; 4], x: f64, y: f64) -> bool {
    x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
}

/// Chooses grid dimensions for a bounding box.
fn grid_for_bbox(x0: f64, y0: f64, x1: f64, y1: f64) -> Grid {
    let (w, h) = (x1 - x0, y1 - y0);
    let mid_lat = ((y0 + y1) * 0.5).to_radians();
    let m_per_deg_lng = (METRES_PER_DEG_LNG_EQUATOR * mid_lat.cos()).max(1.0);
    let cells = |extent_m: f64| {
        ((extent_m / TARGET_CELL_SIZE_M).ceil() as usize).clamp(1, MAX_GRID_CELLS_PER_SIDE)
    };
    let nx = cells(w * m_per_deg_lng);
    let ny = cells(h * METRES_PER_DEG_LAT);
    // A zero extent (all vertices on one line) gets one unit-wide cell.
    let cw = if w > 0.0 { w / nx as f64 } else { 1.0 };
    let ch = if h > 0.0 { h / ny as f64 } else { 1.0 };
    Grid {
        x0,
        y0,
        cw,
        ch,
        inv_cw: 1.0 / cw,
        inv_ch: 1.0 / ch,
        nx,
        ny,
    }
}

/// Records the rows edge `a→b` spans and (conservatively) the cells it touches.
///
/// The edge is stored with its lower-y end first, whatever the ring's direction. A border
/// shared by two counties runs a→b in one ring and b→a in the other; computed from each end,
/// the crossing x rounds differently, and a point between the two results was in neither
/// county (or in both). From the same end, both counties compute the same x bit for bit.
fn mark_edge(
    grid: &Grid,
    a: [f64; 2],
    b: [f64; 2],
    k: u16,
    touched: &mut Vec<(u32, u16)>,
    row_edges: &mut Vec<(u32, u16, Edge)>,
) {
    let (a, b) = if b[1] < a[1] { (b, a) } else { (a, b) };
    let (ymin, ymax) = (a[1].min(b[1]), a[1].max(b[1]));
    let (xmin, xmax) = (a[0].min(b[0]), a[0].max(b[0]));
    let (r_lo, r_hi) = rows_spanned(grid, a, b);
    let edge = (a[1] != b[1]).then(|| Edge {
        ax: a[0],
        ay: a[1],
        by: b[1],
        dxdy: (b[0] - a[0]) / (b[1] - a[1]),
    });
    for r in r_lo..=r_hi {
        if let Some(e) = edge {
            row_edges.push((r as u32, k, e));
        }
        // The part of the edge inside this row band (padded), as x-range.
        let band_lo = grid.y0 + r as f64 * grid.ch - EDGE_PAD_DEG;
        let band_hi = grid.y0 + (r as f64 + 1.0) * grid.ch + EDGE_PAD_DEG;
        let (seg_xmin, seg_xmax) = if a[1] == b[1] || (band_lo <= ymin && band_hi >= ymax) {
            (xmin, xmax)
        } else {
            let at = |y: f64| {
                let t = ((y - a[1]) / (b[1] - a[1])).clamp(0.0, 1.0);
                (a[0] + t * (b[0] - a[0])).clamp(xmin, xmax)
            };
            let (p, q) = (at(band_lo.max(ymin)), at(band_hi.min(ymax)));
            (p.min(q), p.max(q))
        };
        let c_lo = grid.col(seg_xmin - EDGE_PAD_DEG);
        let c_hi = grid.col(seg_xmax + EDGE_PAD_DEG);
        for c in c_lo..=c_hi {
            touched.push(((r * grid.nx + c) as u32, k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::test_support::{SplitMix64, brute_force_locate, test_seed};

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<[f64; 2]> {
        vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    }

    fn shape(adcode: u32, polygons: Vec<Vec<Vec<[f64; 2]>>>) -> CountyShape {
        CountyShape {
            adcode,
            name: format!("county-{adcode}"),
            polygons,
        }
    }

    /// 100001: a 4×4 square with a 2×2 hole; 100002: a 2×2 island filling
    /// half the hole; 100003: a disjoint 2-polygon county to the east.
    fn fixture() -> Vec<CountyShape> {
        vec![
            shape(
                100003,
                vec![
                    vec![square(5.0, 0.0, 6.0, 1.0)],
                    vec![square(5.0, 3.0, 6.0, 4.0)],
                ],
            ),
            shape(
                100001,
                vec![vec![square(0.0, 0.0, 4.0, 4.0), square(1.0, 1.0, 3.0, 3.0)]],
            ),
            shape(100002, vec![vec![square(1.0, 1.0, 2.0, 3.0)]]),
        ]
    }

    #[test]
    fn hole_and_hole_filler_locate_correctly() {
        let idx = PolygonIndex::build(&fixture()).expect("fixture builds");
        assert_eq!(idx.locate(0.5, 0.5), Some(100001));
        assert_eq!(idx.locate(3.5, 2.0), Some(100001));
        assert_eq!(idx.locate(1.5, 2.0), Some(100002), "island inside the hole");
        assert_eq!(idx.locate(2.5, 2.0), None, "unfilled part of the hole");
        assert_eq!(idx.locate(2.9, 2.9), None);
        assert_eq!(idx.locate(5.5, 0.5), Some(100003));
        assert_eq!(idx.locate(5.5, 3.5), Some(100003));
        assert_eq!(idx.locate(5.5, 2.0), None, "between the two polygons");
        assert_eq!(idx.locate(4.5, 2.0), None);
        assert_eq!(idx.locate(-0.1, 2.0), None, "outside bbox");
        assert_eq!(idx.locate(f64::NAN, 2.0), None);
        assert_eq!(idx.locate(1.0, f64::INFINITY), None);
        let counties: Vec<u32> = idx.counties().map(|(a, _)| a).collect();
        assert_eq!(counties, [100001, 100002, 100003]);
        assert_eq!(idx.name(100002), Some("county-100002"));
        assert_eq!(idx.name(999999), None);
    }

    #[test]
    fn boundary_points_are_deterministic_and_adjacent() {
        let idx = PolygonIndex::build(&fixture()).expect("fixture builds");
        // On the shared edge x = 2 between the island and the empty hole.
        let a = idx.locate(2.0, 2.0);
        assert!(a.is_none() || a == Some(100002));
        assert_eq!(a, idx.locate(2.0, 2.0));
        // Vertices and edges of the fixture match the brute force exactly.
        let shapes = fixture();
        for s in &shapes {
            for p in s.polygons.iter().flatten().flatten() {
                assert_eq!(
                    idx.locate(p[0], p[1]),
                    brute_force_locate(&shapes, p[0], p[1]),
                    "{p:?}"
                );
            }
        }
    }

    #[test]
    fn matches_brute_force_on_random_fixture_points() {
        let shapes = fixture();
        let idx = PolygonIndex::build(&shapes).expect("fixture builds");
        let seed = test_seed(0x5EED_F1C7);
        let mut rng = SplitMix64::new(seed);
        for _ in 0..50_000 {
            let (x, y) = (rng.range(-0.5, 6.5), rng.range(-0.5, 4.5));
            assert_eq!(
                idx.locate(x, y),
                brute_force_locate(&shapes, x, y),
                "seed {seed:#x} ({x}, {y})"
            );
        }
    }

    #[test]
    fn diagonal_and_unclosed_rings() {
        // A triangle given without the closing position, and a long diagonal
        // edge crossing many cells.
        let tri = vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.5]];
        let shapes = vec![shape(100001, vec![vec![tri]])];
        let idx = PolygonIndex::build(&shapes).expect("triangle builds");
        assert_eq!(idx.locate(0.2, 0.2), Some(100001));
        assert_eq!(idx.locate(0.6, 0.6), None);
        let mut rng = SplitMix64::new(7);
        for _ in 0..20_000 {
            let (x, y) = (rng.range(0.0, 1.0), rng.range(0.0, 1.0));
            assert_eq!(
                idx.locate(x, y),
                brute_force_locate(&shapes, x, y),
                "({x}, {y})"
            );
        }
    }

    #[test]
    fn overlapping_counties_resolve_to_lowest_adcode() {
        let shapes = vec![
            shape(100009, vec![vec![square(0.0, 0.0, 2.0, 2.0)]]),
            shape(100005, vec![vec![square(1.0, 1.0, 3.0, 3.0)]]),
        ];
        let idx = PolygonIndex::build(&shapes).expect("builds");
        assert_eq!(idx.locate(1.5, 1.5), Some(100005));
        assert_eq!(idx.locate(0.5, 0.5), Some(100009));
        assert_eq!(idx.locate(2.5, 2.5), Some(100005));
    }

    #[test]
    fn build_rejects_bad_shapes() {
        assert!(matches!(PolygonIndex::build(&[]), Err(GeoError::NoShapes)));
        let dup = vec![
            shape(100001, vec![vec![square(0.0, 0.0, 1.0, 1.0)]]),
            shape(100001, vec![vec![square(2.0, 0.0, 3.0, 1.0)]]),
        ];
        assert!(matches!(
            PolygonIndex::build(&dup),
            Err(GeoError::DuplicateAdcode { adcode: 100001 })
        ));
        let empty = vec![shape(100001, vec![])];
        assert!(matches!(
            PolygonIndex::build(&empty),
            Err(GeoError::EmptyShape { adcode: 100001 })
        ));
        let short = vec![shape(
            100001,
            vec![vec![vec![[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]],
        )];
        assert!(matches!(
            PolygonIndex::build(&short),
            Err(GeoError::RingTooShort {
                adcode: 100001,
                positions: 3,
                ..
            })
        ));
        let mut nan = square(0.0, 0.0, 1.0, 1.0);
        nan[1][1] = f64::NAN;
        assert!(matches!(
            PolygonIndex::build(&[shape(100001, vec![vec![nan]])]),
            Err(GeoError::NonFiniteCoordinate {
                adcode: 100001,
                position: 1,
                ..
            })
        ));
    }

    /// A ring zig-zagging across the whole box: every edge spans hundreds of rows, so a
    /// few kilobytes of GeoJSON used to cost thousands of times their size in memory.
    #[test]
    fn zigzag_boundaries_over_the_row_edge_limit_are_refused() {
        let mut ring: Vec<[f64; 2]> = (0..200)
            .map(|i| [f64::from(i) * 1e-3, if i % 2 == 0 { 0.0 } else { 1.5 }])
            .collect();
        ring.extend([[0.199, -0.5], [0.0, -0.5], [0.0, 0.0]]);
        let shapes = vec![shape(100001, vec![vec![ring]])];
        let err = PolygonIndex::build_with_limits(&shapes, 100_000, MAX_TOUCHED_CELL_ENTRIES)
            .unwrap_err();
        let GeoError::TooManyRowEdgeEntries {
            entries,
            max: 100_000,
        } = err
        else {
            panic!("{err:?}");
        };
        assert!(err.to_string().contains("100000"), "{err}");
        // Under the real limit it builds, with the entries that were counted.
        let idx = PolygonIndex::build(&shapes).expect("within MAX_ROW_EDGE_ENTRIES");
        assert_eq!(idx.row_edge_entries(), entries);
        assert!(entries > 100_000, "{entries}");
    }

    /// Horizontal edges span one row but touch a cell in every column.
    #[test]
    fn long_horizontal_edges_over_the_touched_cell_limit_are_refused() {
        // A serpentine: 50 rows 2° wide (1,024 columns), 0.01° apart.
        let mut ring = Vec::new();
        for j in 0..50 {
            let y = f64::from(j) * 0.01;
            let (from, to) = if j % 2 == 0 { (0.0, 2.0) } else { (2.0, 0.0) };
            ring.extend([[from, y], [to, y]]);
        }
        ring.push(ring[0]);
        let shapes = vec![shape(100001, vec![vec![ring]])];
        let err =
            PolygonIndex::build_with_limits(&shapes, MAX_ROW_EDGE_ENTRIES, 10_000).unwrap_err();
        assert!(
            matches!(err, GeoError::TooManyTouchedCellEntries { max: 10_000 }),
            "{err:?}"
        );
        assert!(PolygonIndex::build(&shapes).is_ok());
    }

    #[test]
    fn grid_is_bounded() {
        // A continent-sized box still gets at most MAX cells a side.
        let shapes = vec![shape(100001, vec![vec![square(70.0, 0.0, 140.0, 55.0)]])];
        let idx = PolygonIndex::build(&shapes).expect("builds");
        let (nx, ny) = idx.grid_dims();
        assert!(nx <= MAX_GRID_CELLS_PER_SIDE && ny <= MAX_GRID_CELLS_PER_SIDE);
        assert_eq!(idx.locate(100.0, 30.0), Some(100001));
        assert_eq!(
            idx.locate(140.0, 55.0),
            brute_force_locate(&shapes, 140.0, 55.0)
        );
    }
}
