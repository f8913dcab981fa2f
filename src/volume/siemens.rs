//! Siemens private data in DICOM: the CSA header (`SIEMENS CSA HEADER`, (0029,xx10); SV10 and
//! the older CSA1 layout, as nibabel's `csareader` reads them) and mosaic images — one file
//! holding a volume's slices as tiles of one large image (EPI and diffusion series), with the
//! number of slices and the slice normal in the CSA header. The tiles are cut out and each gets
//! its own position: Image Position (Patient) names the mosaic's corner, so it moves by half
//! the mosaic's extra size along the row and column directions (as nibabel's `MosaicWrapper`
//! and dcm2niix correct it), then one slice spacing along the normal per tile.
//!
//! Invariants: the CSA bytes are untrusted — counts and lengths are checked against the bytes
//! there before anything is read or allocated, and a bad header is an error, not a panic.

use glam::DVec3;
use std::collections::BTreeMap;

/// The most tags or items a CSA header may claim (nibabel's limit).
const MAX_CSA_ITEMS: u32 = 1000;

/// A reader over little-endian bytes that refuses to run past the end.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let end =
            end.ok_or_else(|| format!("CSA header ends at byte {} (needs {n} more)", self.at))?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        self.u32().map(|v| v as i32)
    }
}

/// Text up to the first NUL.
fn nul_text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

/// The tags of a CSA header: name → its items as text (the values a tag holds).
pub fn parse_csa(bytes: &[u8]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut r = Bytes { data: bytes, at: 0 };
    let csa2 = bytes.starts_with(b"SV10");
    if csa2 {
        r.take(8)?;
    }
    let n_tags = r.u32()?;
    r.u32()?;
    if !(1..=MAX_CSA_ITEMS).contains(&n_tags) {
        return Err(format!("CSA header claims {n_tags} tags"));
    }
    let mut out = BTreeMap::new();
    let mut tag1_items = 0i64;
    for tag_no in 0..n_tags {
        let name = nul_text(r.take(64)?);
        let vm = r.i32()?;
        r.take(4)?; // VR
        r.i32()?; // syngo data type
        let n_items = r.i32()?;
        r.i32()?;
        if !(0..=MAX_CSA_ITEMS as i32).contains(&n_items) {
            return Err(format!("CSA tag {name} claims {n_items} items"));
        }
        if tag_no == 1 {
            tag1_items = i64::from(n_items);
        }
        let wanted = if vm == 0 { n_items } else { vm };
        let mut items = Vec::new();
        for item_no in 0..n_items {
            let x = [r.i32()?, r.i32()?, r.i32()?, r.i32()?];
            let len = if csa2 {
                i64::from(x[1])
            } else {
                i64::from(x[0]) - tag1_items
            };
            let len = usize::try_from(len).map_err(|_| format!("CSA item of {len} bytes"))?;
            let item = r.take(len)?;
            if item_no < wanted && len > 0 {
                items.push(nul_text(item));
            }
            r.take((4 - len % 4) % 4).ok();
        }
        out.insert(name, items);
    }
    Ok(out)
}

/// The first item of `name` as a number.
pub fn csa_number(tags: &BTreeMap<String, Vec<String>>, name: &str) -> Option<f64> {
    tags.get(name)?
        .first()?
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
}

/// The first three items of `name` as a vector.
pub fn csa_vector(tags: &BTreeMap<String, Vec<String>>, name: &str) -> Option<DVec3> {
    let items = tags.get(name)?;
    let v: Vec<f64> = items
        .iter()
        .take(3)
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 3 && v.iter().all(|x| x.is_finite())).then(|| DVec3::new(v[0], v[1], v[2]))
}

/// A mosaic's layout: `images` tiles of `rows × columns` in a square of `per_side` a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mosaic {
    /// Slices in the mosaic.
    pub images: usize,
    /// Tiles along each side of the mosaic.
    pub per_side: usize,
    /// Rows of one tile.
    pub rows: usize,
    /// Columns of one tile.
    pub columns: usize,
}

impl Mosaic {
    /// The layout of `images` slices in a `rows × columns` mosaic image.
    pub fn new(images: usize, rows: usize, columns: usize) -> Result<Self, String> {
        let per_side = (1..=images.max(1)).find(|s| s * s >= images).unwrap_or(1);
        let (tile_rows, tile_columns) = (rows / per_side, columns / per_side);
        // Siemens writes a mosaic as whole tiles: a size the grid does not divide means the
        // count is wrong, and the tiles would be cut across slice borders.
        if images < 1
            || tile_rows == 0
            || tile_columns == 0
            || !rows.is_multiple_of(per_side)
            || !columns.is_multiple_of(per_side)
        {
            return Err(format!(
                "a mosaic of {images} images ({per_side} a side) cannot be cut from {rows} × \
                 {columns} pixels"
            ));
        }
        Ok(Self {
            images,
            per_side,
            rows: tile_rows,
            columns: tile_columns,
        })
    }

    /// Tile `k`'s pixels (row by row) out of the mosaic's `values` (`columns` wide).
    pub fn tile(&self, values: &[f32], columns: usize, k: usize) -> Vec<f32> {
        let (tr, tc) = (k / self.per_side, k % self.per_side);
        let mut out = Vec::with_capacity(self.rows * self.columns);
        for r in 0..self.rows {
            let start = (tr * self.rows + r) * columns + tc * self.columns;
            out.extend_from_slice(&values[start..start + self.columns]);
        }
        out
    }

    /// The first tile's Image Position (LPS mm) from the mosaic's: moved by half the mosaic's
    /// extra size along the column direction (rows) and the row direction (columns), in
    /// fractional tiles as nibabel and dcm2niix do. `orientation`: row direction, column
    /// direction; `spacing`: between rows, between columns; `size`: the mosaic's rows, columns.
    pub fn first_position(
        &self,
        position: DVec3,
        orientation: [DVec3; 2],
        spacing: [f64; 2],
        size: [usize; 2],
    ) -> DVec3 {
        let per_side = self.per_side as f64;
        let [rows, columns] = size.map(|s| s as f64);
        let down = (rows - rows / per_side) / 2.0;
        let across = (columns - columns / per_side) / 2.0;
        position + orientation[1] * spacing[0] * down + orientation[0] * spacing[1] * across
    }
}
