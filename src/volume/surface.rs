//! Label surfaces: each label of a mask as a triangle mesh in world millimetres, extracted with
//! Naive Surface Nets (the `fast-surface-nets` crate) block by block — `BLOCK`³ voxels a block,
//! each meshed from a field padded with one voxel of its neighbours — so an edit re-meshes only
//! the blocks its sub-box can change. The field is the label's indicator blended half and half
//! with its [1 2 1]/4-smoothed copy: a smoother surface than the voxels' faces, yet every voxel
//! of the label lies inside it and every other voxel outside (a one-voxel lesion keeps one).
//!
//! Invariants: knows no GPU and no UI; blocks join without seams (the crate leaves the faces on
//! a block's far sides to the next block, and a label's mesh joins the vertices two blocks
//! make for one cube); positions are world mm (RAS+, through the mask's affine), normals unit
//! length and pointing out, triangles counter-clockwise seen from outside whatever the
//! affine's handedness; a block without surface holds no mesh.

use super::Affine;
use fast_surface_nets::ndshape::{ConstShape, ConstShape3u32};
use fast_surface_nets::{surface_nets, SurfaceNetsBuffer};
use glam::{DMat3, DVec3};
use std::collections::BTreeMap;

/// Voxels along each side of a block.
pub const BLOCK: usize = 16;
/// A block's field: the block and one voxel of its neighbours on each side.
type Chunk = ConstShape3u32<18, 18, 18>;
/// Voxels an edit reaches beyond itself: the smoothing's one and the padding's one.
const REACH: usize = 2;

/// A triangle mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// Vertex positions (world mm, RAS+).
    pub positions_mm: Vec<[f32; 3]>,
    /// Unit vertex normals, pointing out of the object.
    pub normals: Vec<[f32; 3]>,
    /// Three vertex indices a triangle, counter-clockwise seen from outside.
    pub indices: Vec<u32>,
}

impl Mesh {
    /// How many triangles it has.
    pub fn triangles(&self) -> usize {
        self.indices.len() / 3
    }

    /// Add `other`'s triangles.
    pub fn append(&mut self, other: &Mesh) {
        let base = self.positions_mm.len() as u32;
        self.positions_mm.extend_from_slice(&other.positions_mm);
        self.normals.extend_from_slice(&other.normals);
        self.indices.extend(other.indices.iter().map(|i| i + base));
    }

    /// The smallest and largest coordinates of its vertices (`None` when empty).
    pub fn bounds_mm(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.positions_mm.first()?;
        Some(
            self.positions_mm
                .iter()
                .fold((first, first), |(lo, hi), p| {
                    (
                        [0, 1, 2].map(|a| lo[a].min(p[a])),
                        [0, 1, 2].map(|a| hi[a].max(p[a])),
                    )
                }),
        )
    }
}

/// One block's mesh of one label, with the cube (voxel-grid cell, by its first corner) each
/// vertex stands for: a cube on a block's far side is meshed by both blocks, and its vertex
/// is one vertex of the whole surface.
#[derive(Debug, Clone)]
struct BlockMesh {
    mesh: Mesh,
    cubes: Vec<[i64; 3]>,
}

/// The surfaces of every label of one mask, kept per block.
#[derive(Debug, Clone)]
pub struct LabelSurfaces {
    dims: [usize; 3],
    affine: Affine,
    blocks: BTreeMap<(u8, [usize; 3]), BlockMesh>,
}

impl LabelSurfaces {
    /// Every label's surface of `mask` (a `dims` grid, i fastest, on `affine`).
    pub fn new(mask: &[u8], dims: [usize; 3], affine: Affine) -> Self {
        let mut surfaces = Self {
            dims,
            affine,
            blocks: BTreeMap::new(),
        };
        surfaces.update(mask, [0; 3], dims);
        surfaces
    }

    /// Re-mesh after the voxels in the box `[lo, hi)` changed in `mask` (the same grid): only
    /// the blocks the change can reach. Returns how many blocks were re-meshed.
    pub fn update(&mut self, mask: &[u8], lo: [usize; 3], hi: [usize; 3]) -> usize {
        if mask.len() != self.dims.iter().product::<usize>() {
            return 0;
        }
        let first = [0, 1, 2].map(|a| lo[a].saturating_sub(REACH) / BLOCK);
        // One block past the grid's end when its size is a multiple of `BLOCK`: a block leaves
        // the faces on its far side to the next one, and the grid's last faces need one.
        let last = [0, 1, 2].map(|a| {
            let end = (hi[a] + REACH).min(self.dims[a] + 1).max(1);
            (end - 1) / BLOCK
        });
        let mut count = 0;
        for bk in first[2]..=last[2] {
            for bj in first[1]..=last[1] {
                for bi in first[0]..=last[0] {
                    self.mesh_block(mask, [bi, bj, bk]);
                    count += 1;
                }
            }
        }
        count
    }

    /// The labels that have a surface, in increasing order.
    pub fn labels(&self) -> Vec<u8> {
        let mut labels: Vec<u8> = self.blocks.keys().map(|(l, _)| *l).collect();
        labels.dedup();
        labels
    }

    /// Label `label`'s whole surface, one vertex per cube (the blocks' shared vertices joined).
    pub fn mesh(&self, label: u8) -> Mesh {
        let mut out = Mesh::default();
        let mut vertex_of: std::collections::HashMap<[i64; 3], u32> = Default::default();
        for ((l, _), block) in &self.blocks {
            if *l != label {
                continue;
            }
            let here: Vec<u32> = block
                .cubes
                .iter()
                .enumerate()
                .map(|(v, cube)| {
                    *vertex_of.entry(*cube).or_insert_with(|| {
                        out.positions_mm.push(block.mesh.positions_mm[v]);
                        out.normals.push(block.mesh.normals[v]);
                        out.positions_mm.len() as u32 - 1
                    })
                })
                .collect();
            out.indices
                .extend(block.mesh.indices.iter().map(|i| here[*i as usize]));
        }
        out
    }

    /// Mesh block `b` for every label its field holds; drop its old meshes.
    fn mesh_block(&mut self, mask: &[u8], b: [usize; 3]) {
        self.blocks.retain(|(_, at), _| *at != b);
        let origin = b.map(|v| (v * BLOCK) as i64);
        let region = Region::around(origin, self.dims);
        let labels = super::labels_present(region.voxels().filter_map(|v| self.value(mask, v)));
        let mut buffer = SurfaceNetsBuffer::default();
        for label in labels {
            let sdf = self.field(mask, origin, label);
            surface_nets(&sdf, &Chunk {}, [0; 3], [17; 3], &mut buffer);
            if !buffer.indices.is_empty() {
                let cubes = buffer
                    .surface_points
                    .iter()
                    .map(|p| [0, 1, 2].map(|a| origin[a] - 1 + i64::from(p[a])))
                    .collect();
                let mesh = self.to_world(&buffer, origin);
                self.blocks.insert((label, b), BlockMesh { mesh, cubes });
            }
        }
    }

    /// The mask's value at voxel `v` (`None` outside the grid).
    fn value(&self, mask: &[u8], v: [i64; 3]) -> Option<u8> {
        let d = self.dims.map(|n| n as i64);
        if (0..3).any(|a| v[a] < 0 || v[a] >= d[a]) {
            return None;
        }
        let [i, j, k] = v.map(|x| x as usize);
        mask.get(i + self.dims[0] * (j + self.dims[1] * k)).copied()
    }

    /// The signed field of `label` over the chunk of the block at `origin` (negative inside):
    /// 0.5 − (indicator + smoothed indicator) / 2, sampled at voxels `origin − 1 …
    /// origin + 16`.
    fn field(&self, mask: &[u8], origin: [i64; 3], label: u8) -> Vec<f32> {
        // The indicator over the chunk and one more voxel a side (20³), then [1 2 1]/4 along
        // each axis in turn.
        const N: usize = 20;
        let at = |i: usize, j: usize, k: usize| i + N * (j + N * k);
        let mut ind = vec![0f32; N * N * N];
        for k in 0..N {
            for j in 0..N {
                for i in 0..N {
                    let v = [i, j, k].map(|x| x as i64 - 2);
                    let v = [0, 1, 2].map(|a| origin[a] + v[a]);
                    ind[at(i, j, k)] = f32::from(u8::from(self.value(mask, v) == Some(label)));
                }
            }
        }
        let mut smooth = ind.clone();
        for axis in 0..3 {
            let step = [1, N, N * N][axis];
            let before = smooth.clone();
            for (idx, out) in smooth.iter_mut().enumerate() {
                let c = [idx % N, (idx / N) % N, idx / (N * N)][axis];
                if c > 0 && c + 1 < N {
                    *out =
                        0.25 * before[idx - step] + 0.5 * before[idx] + 0.25 * before[idx + step];
                }
            }
        }
        let mut sdf = vec![1f32; Chunk::USIZE];
        for (s, out) in sdf.iter_mut().enumerate() {
            let [i, j, k] = Chunk::delinearize(s as u32).map(|x| x as usize + 1);
            *out = 0.5 - 0.5 * (ind[at(i, j, k)] + smooth[at(i, j, k)]);
        }
        sdf
    }

    /// The crate's chunk-local mesh of the block at `origin` in world mm.
    fn to_world(&self, buffer: &SurfaceNetsBuffer, origin: [i64; 3]) -> Mesh {
        let linear = self.affine.linear();
        let normal_matrix = linear.inverse().transpose();
        let corner = DVec3::from_array(origin.map(|v| (v - 1) as f64));
        let positions_mm = buffer
            .positions
            .iter()
            .map(|p| {
                let idx_vox = corner + DVec3::from_array(p.map(f64::from));
                self.affine.vox_to_mm(idx_vox).as_vec3().to_array()
            })
            .collect();
        let normals = buffer
            .normals
            .iter()
            .map(|n| world_normal(normal_matrix, *n))
            .collect();
        // A mirroring affine turns counter-clockwise triangles clockwise: turn them back.
        let mut indices = buffer.indices.clone();
        if linear.determinant() < 0.0 {
            indices.chunks_exact_mut(3).for_each(|t| t.swap(1, 2));
        }
        Mesh {
            positions_mm,
            normals,
            indices,
        }
    }
}

/// A field gradient in voxel index space as a unit world normal (pointing out: the field grows
/// outwards).
fn world_normal(normal_matrix: DMat3, n: [f32; 3]) -> [f32; 3] {
    let n = normal_matrix * DVec3::from_array(n.map(f64::from));
    n.normalize_or_zero().as_vec3().to_array()
}

/// The voxels whose values a block's field reads: the block and `REACH` more a side, inside the
/// grid.
struct Region {
    lo: [i64; 3],
    hi: [i64; 3],
}

impl Region {
    fn around(origin: [i64; 3], dims: [usize; 3]) -> Self {
        let r = REACH as i64;
        Self {
            lo: [0, 1, 2].map(|a| (origin[a] - r).max(0)),
            hi: [0, 1, 2].map(|a| (origin[a] + BLOCK as i64 + r).min(dims[a] as i64)),
        }
    }

    fn voxels(&self) -> impl Iterator<Item = [i64; 3]> + '_ {
        (self.lo[2]..self.hi[2]).flat_map(move |k| {
            (self.lo[1]..self.hi[1])
                .flat_map(move |j| (self.lo[0]..self.hi[0]).map(move |i| [i, j, k]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A `n`³ mask with a ball of `radius` voxels about `centre` set to `label`.
    fn ball(n: usize, centre: [f64; 3], radius: f64, label: u8) -> Vec<u8> {
        let mut mask = vec![0u8; n * n * n];
        for (idx, v) in mask.iter_mut().enumerate() {
            let p = [idx % n, (idx / n) % n, idx / (n * n)].map(|x| x as f64);
            let d2: f64 = (0..3).map(|a| (p[a] - centre[a]).powi(2)).sum();
            if d2 <= radius * radius {
                *v = label;
            }
        }
        mask
    }

    /// Each edge of the mesh (vertices welded by position) and how many triangles use it.
    fn edge_uses(mesh: &Mesh) -> HashMap<([i64; 3], [i64; 3]), usize> {
        let key = |i: u32| mesh.positions_mm[i as usize].map(|c| (c * 1e4).round() as i64);
        let mut uses = HashMap::new();
        for t in mesh.indices.chunks(3) {
            for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
                let (a, b) = (key(a), key(b));
                *uses.entry(if a < b { (a, b) } else { (b, a) }).or_insert(0) += 1;
            }
        }
        uses
    }

    /// The volume the mesh encloses (divergence theorem; mm³).
    fn enclosed_mm3(mesh: &Mesh) -> f64 {
        let p = |i: u32| DVec3::from_array(mesh.positions_mm[i as usize].map(f64::from));
        let six_v: f64 = mesh
            .indices
            .chunks(3)
            .map(|t| p(t[0]).dot(p(t[1]).cross(p(t[2]))))
            .sum();
        six_v / 6.0
    }

    #[test]
    fn a_ball_across_blocks_is_one_closed_outward_surface_of_its_volume() {
        // Radius 10 about (20, 20, 20): blocks 0–2 on each axis, seams at 16 and 32.
        let n = 44;
        let mask = ball(n, [20.0; 3], 10.0, 3);
        let voxels = mask.iter().filter(|v| **v == 3).count() as f64;
        let affine = Affine::from_spacing([0.5, 0.5, 0.5]);
        let surfaces = LabelSurfaces::new(&mask, [n; 3], affine);
        assert_eq!(surfaces.labels(), vec![3]);
        let mesh = surfaces.mesh(3);
        assert!(mesh.triangles() > 1000, "{}", mesh.triangles());
        let open: Vec<_> = edge_uses(&mesh).into_iter().filter(|e| e.1 != 2).collect();
        assert!(
            open.is_empty(),
            "{} edges not shared by two triangles",
            open.len()
        );
        // Its volume is the voxels' (0.125 mm³ each) within 5 %; its extent the ball's.
        let volume = enclosed_mm3(&mesh);
        assert!(
            (volume / (voxels * 0.125) - 1.0).abs() < 0.05,
            "{volume} mm³"
        );
        let (lo, hi) = mesh.bounds_mm().unwrap();
        for a in 0..3 {
            assert!(
                (lo[a] - 5.0).abs() < 0.5 && (hi[a] - 15.0).abs() < 0.5,
                "{lo:?} {hi:?}"
            );
        }
        // Normals point away from the centre.
        let centre = DVec3::splat(10.0);
        let outward = mesh
            .positions_mm
            .iter()
            .zip(&mesh.normals)
            .filter(|(p, n)| {
                let p = DVec3::from_array(p.map(f64::from));
                (p - centre).dot(DVec3::from_array(n.map(f64::from))) > 0.0
            })
            .count();
        assert_eq!(outward, mesh.positions_mm.len());
    }

    #[test]
    fn a_label_touching_every_face_of_the_grid_is_closed_there_too() {
        // Grids whose size is a multiple of the block (the far faces belong to a block past the
        // end) and one that is not; the label fills the grid but for a margin on one side.
        for dims in [[32, 32, 16], [20, 32, 17]] {
            let [nx, ny, nz] = dims;
            let mut mask = vec![1u8; nx * ny * nz];
            mask[..nx * 3].fill(0);
            let surfaces = LabelSurfaces::new(&mask, dims, Affine::from_spacing([1.0; 3]));
            let mesh = surfaces.mesh(1);
            let open = edge_uses(&mesh).values().filter(|u| **u != 2).count();
            assert_eq!(open, 0, "{dims:?}: {open} open edges");
            let voxels = mask.iter().filter(|v| **v == 1).count() as f64;
            let volume = enclosed_mm3(&mesh);
            assert!(
                (volume / voxels - 1.0).abs() < 0.1,
                "{dims:?}: {volume} vs {voxels}"
            );
        }
    }

    #[test]
    fn blocks_share_their_seam_vertices_and_a_mirroring_affine_keeps_the_winding() {
        // A ball across the seams at 16, on an LAS grid (negative determinant).
        let n = 36;
        let mask = ball(n, [16.0, 16.0, 16.0], 7.0, 1);
        let las = Affine::from_linear_translation(
            DMat3::from_diagonal(DVec3::new(-1.0, 1.0, 1.0)),
            DVec3::ZERO,
        );
        let mesh = LabelSurfaces::new(&mask, [n; 3], las).mesh(1);
        // Every edge, by vertex index (no welding by position), has two triangles.
        let mut uses: HashMap<(u32, u32), usize> = HashMap::new();
        for t in mesh.indices.chunks(3) {
            for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
                *uses.entry((a.min(b), a.max(b))).or_insert(0) += 1;
            }
        }
        assert!(uses.values().all(|u| *u == 2));
        let voxels = mask.iter().filter(|v| **v == 1).count() as f64;
        let volume = enclosed_mm3(&mesh);
        assert!(
            (volume / voxels - 1.0).abs() < 0.05,
            "{volume} mm³ for {voxels} voxels"
        );
    }

    #[test]
    fn a_single_voxel_keeps_a_closed_surface_around_it() {
        let mut mask = vec![0u8; 16 * 16 * 16];
        mask[5 + 16 * (6 + 16 * 7)] = 1;
        let mesh = LabelSurfaces::new(&mask, [16; 3], Affine::identity()).mesh(1);
        assert!(mesh.triangles() >= 8);
        assert!(edge_uses(&mesh).values().all(|u| *u == 2));
        let (lo, hi) = mesh.bounds_mm().unwrap();
        let centre = [5.0f32, 6.0, 7.0];
        for a in 0..3 {
            assert!(
                lo[a] > centre[a] - 1.0 && hi[a] < centre[a] + 1.0,
                "{lo:?} {hi:?}"
            );
            assert!(lo[a] < centre[a] && hi[a] > centre[a]);
        }
    }

    #[test]
    fn an_update_re_meshes_only_near_blocks_and_equals_meshing_anew() {
        let n = 64;
        let mut mask = ball(n, [20.0; 3], 9.0, 1);
        let affine = Affine::identity();
        let mut surfaces = LabelSurfaces::new(&mask, [n; 3], affine);
        // A 5-voxel cube of label 2 painted across a seam, and a bit of the ball erased.
        for k in 30..35 {
            for j in 30..35 {
                for i in 30..35 {
                    mask[i + n * (j + n * k)] = 2;
                }
            }
        }
        mask[29 + n * (20 + n * 20)] = 0;
        let reached = surfaces.update(&mask, [29, 20, 20], [35, 35, 35]);
        assert!(reached < 64 / 2, "{reached} of 64 blocks re-meshed");
        let anew = LabelSurfaces::new(&mask, [n; 3], affine);
        assert_eq!(surfaces.labels(), vec![1, 2]);
        for label in [1, 2] {
            let sorted = |m: &Mesh| {
                let mut t: Vec<[[i64; 3]; 3]> = m
                    .indices
                    .chunks(3)
                    .map(|t| {
                        t.iter()
                            .map(|i| m.positions_mm[*i as usize].map(|c| (c * 1e4).round() as i64))
                            .collect::<Vec<_>>()
                            .try_into()
                            .unwrap()
                    })
                    .collect();
                t.sort();
                t
            };
            assert_eq!(sorted(&surfaces.mesh(label)), sorted(&anew.mesh(label)));
        }
        // Erasing a label clears its blocks.
        mask.iter_mut().filter(|v| **v == 2).for_each(|v| *v = 0);
        surfaces.update(&mask, [30; 3], [35; 3]);
        assert_eq!(surfaces.labels(), vec![1]);
    }
}
