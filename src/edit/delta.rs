//! `VoxelBox` and `MaskDelta`: a change to a label mask stored as the before and after values of
//! one box of voxels, each run-length encoded, so an undo step costs about as many bytes as the
//! edit's boundary, not the volume.
//!
//! Invariants: a delta's box lies inside the mask it was captured from; `apply` writes `after`
//! and `revert` writes `before` over exactly that box; both are exact (bit-for-bit).

use crate::volume::Volume;

/// A box of voxel indices, `min` inclusive, `max` exclusive, in the mask's (i, j, k) grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoxelBox {
    /// Lowest index on each axis.
    pub min: [usize; 3],
    /// One past the highest index on each axis.
    pub max: [usize; 3],
}

impl VoxelBox {
    /// The box of one voxel.
    pub fn voxel(idx_vox: [usize; 3]) -> Self {
        Self {
            min: idx_vox,
            max: [idx_vox[0] + 1, idx_vox[1] + 1, idx_vox[2] + 1],
        }
    }

    /// The whole grid of `dims`.
    pub fn whole(dims: [usize; 3]) -> Self {
        Self {
            min: [0; 3],
            max: dims,
        }
    }

    /// Whether the box holds no voxel.
    pub fn is_empty(&self) -> bool {
        (0..3).any(|a| self.max[a] <= self.min[a])
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            (0..3).map(|a| self.max[a] - self.min[a]).product()
        }
    }

    /// Extent along each axis.
    pub fn size(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.max[a].saturating_sub(self.min[a]))
    }

    /// The smallest box holding both (an empty box is ignored).
    pub fn union(&self, other: &VoxelBox) -> VoxelBox {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        VoxelBox {
            min: [0, 1, 2].map(|a| self.min[a].min(other.min[a])),
            max: [0, 1, 2].map(|a| self.max[a].max(other.max[a])),
        }
    }

    /// This box cut to a grid of `dims`.
    pub fn clamp_to(&self, dims: [usize; 3]) -> VoxelBox {
        VoxelBox {
            min: [0, 1, 2].map(|a| self.min[a].min(dims[a])),
            max: [0, 1, 2].map(|a| self.max[a].min(dims[a])),
        }
    }

    /// Whether the box fits a grid of `dims`.
    pub fn fits(&self, dims: [usize; 3]) -> bool {
        (0..3).all(|a| self.max[a] <= dims[a])
    }

    /// Every voxel index in the box, i fastest.
    pub fn iter(&self) -> impl Iterator<Item = [usize; 3]> + '_ {
        let b = *self;
        let empty = self.is_empty();
        (b.min[2]..if empty { b.min[2] } else { b.max[2] }).flat_map(move |k| {
            (b.min[1]..b.max[1]).flat_map(move |j| (b.min[0]..b.max[0]).map(move |i| [i, j, k]))
        })
    }
}

/// Run-length encoding of a byte sequence: (count, value) pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rle {
    runs: Vec<(u32, u8)>,
}

impl Rle {
    /// Encode.
    pub fn encode(values: impl IntoIterator<Item = u8>) -> Self {
        let mut runs: Vec<(u32, u8)> = Vec::new();
        for v in values {
            match runs.last_mut() {
                Some((n, last)) if *last == v && *n < u32::MAX => *n += 1,
                _ => runs.push((1, v)),
            }
        }
        Self { runs }
    }

    /// Decode into a callback per value, in order.
    pub fn for_each(&self, mut f: impl FnMut(u8)) {
        for (n, v) in &self.runs {
            for _ in 0..*n {
                f(*v);
            }
        }
    }

    /// Number of values encoded.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|(n, _)| *n as usize).sum()
    }

    /// Whether it encodes nothing.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<(u32, u8)>()
    }

    /// The runs, (count, value).
    pub fn runs(&self) -> &[(u32, u8)] {
        &self.runs
    }

    /// From runs (e.g. read back from a journal).
    pub fn from_runs(runs: Vec<(u32, u8)>) -> Self {
        Self { runs }
    }
}

/// A change to a mask over one box: its values before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskDelta {
    /// Where.
    pub region: VoxelBox,
    /// Values before, i fastest.
    pub before: Rle,
    /// Values after, i fastest.
    pub after: Rle,
}

/// Read the values of a box (i fastest).
pub fn read_box(mask: &Volume<u8>, region: &VoxelBox) -> Vec<u8> {
    let mut out = Vec::with_capacity(region.len());
    if region.is_empty() || !region.fits(mask.dims3()) {
        return out;
    }
    let w = region.max[0] - region.min[0];
    for k in region.min[2]..region.max[2] {
        for j in region.min[1]..region.max[1] {
            let at = mask.linear_index(region.min[0], j, k, 0);
            out.extend_from_slice(&mask.data()[at..at + w]);
        }
    }
    out
}

fn write_box(mask: &mut Volume<u8>, region: &VoxelBox, values: &Rle) {
    if region.is_empty() || !region.fits(mask.dims3()) || values.len() != region.len() {
        return;
    }
    let dims = mask.dims3();
    let data = mask.data_mut();
    let mut it = region.iter();
    values.for_each(|v| {
        if let Some([i, j, k]) = it.next() {
            data[i + dims[0] * (j + dims[1] * k)] = v;
        }
    });
}

impl MaskDelta {
    /// The delta from `before` (the box's values before the edit) to the mask's current values.
    /// `None` when nothing changed.
    pub fn capture(mask: &Volume<u8>, region: VoxelBox, before: &[u8]) -> Option<Self> {
        let after = read_box(mask, &region);
        if after.len() != before.len() || after == before {
            return None;
        }
        Some(Self {
            region,
            before: Rle::encode(before.iter().copied()),
            after: Rle::encode(after),
        })
    }

    /// Write the after values.
    pub fn apply(&self, mask: &mut Volume<u8>) {
        write_box(mask, &self.region, &self.after);
    }

    /// Write the before values.
    pub fn revert(&self, mask: &mut Volume<u8>) {
        write_box(mask, &self.region, &self.before);
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.before.bytes() + self.after.bytes()
    }
}
