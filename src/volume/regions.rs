//! Connected regions of a 3D grid: the 6-connected components of the voxels where a predicate
//! holds (or of equal key, such as a label), as linear indices (i fastest), found breadth-first.
//!
//! Invariants: every member voxel lies in exactly one region; a region's voxels are in the
//! order the search reached them, its first voxel the lowest index of the region; working
//! memory is one flag per voxel of the grid plus the regions themselves.

use std::collections::VecDeque;

/// The 6-neighbours of voxel `idx` on a `dims` grid, as linear indices.
pub fn neighbours6(idx: usize, dims: [usize; 3]) -> impl Iterator<Item = usize> {
    let [nx, ny, nz] = dims;
    let (i, j, k) = (idx % nx, (idx / nx) % ny, idx / (nx * ny));
    let plane = nx * ny;
    [
        (i > 0).then(|| idx - 1),
        (i + 1 < nx).then(|| idx + 1),
        (j > 0).then(|| idx - nx),
        (j + 1 < ny).then(|| idx + nx),
        (k > 0).then(|| idx - plane),
        (k + 1 < nz).then(|| idx + plane),
    ]
    .into_iter()
    .flatten()
}

/// The 6-connected regions of the voxels of a `dims` grid where `member` holds.
pub fn connected_regions(dims: [usize; 3], member: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    connected_regions_by(dims, |i| member(i).then_some(0))
        .into_iter()
        .map(|(_, region)| region)
        .collect()
}

/// The 6-connected regions of the voxels of a `dims` grid that have a key (`key` is `Some`),
/// neighbours joining only when their keys are equal (e.g. one region per object of each
/// label), each with its key.
pub fn connected_regions_by(
    dims: [usize; 3],
    key: impl Fn(usize) -> Option<u8>,
) -> Vec<(u8, Vec<usize>)> {
    let n = dims[0] * dims[1] * dims[2];
    let mut seen = vec![false; n];
    let mut out = Vec::new();
    for start in 0..n {
        let Some(k) = key(start).filter(|_| !seen[start]) else {
            continue;
        };
        seen[start] = true;
        let mut region = Vec::new();
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            region.push(v);
            for w in neighbours6(v, dims) {
                if !seen[w] && key(w) == Some(k) {
                    seen[w] = true;
                    queue.push_back(w);
                }
            }
        }
        out.push((k, region));
    }
    out
}

/// The largest region (most voxels; the first found among equals), empty when none.
pub fn largest_region(dims: [usize; 3], member: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for r in connected_regions(dims, member) {
        if r.len() > best.len() {
            best = r;
        }
    }
    best
}
