//! Surface mesh files: binary STL and binary PLY, in world millimetres in **LPS** — what 3D
//! Slicer assumes for these formats — with `SPACE=LPS` written in the header (the STL's 80-byte
//! header, a PLY comment) as Slicer writes it. The PLY carries a colour per vertex (its label's).
//!
//! Invariants: RAS → LPS negates x and y, a rotation, so triangles keep their winding (counter-
//! clockwise seen from outside); every file is written atomically (temp file, fsync, rename);
//! a mesh too large for the format's counts is an error, not a truncated file.

use super::surface::Mesh;
use super::VolumeError;
use std::path::Path;

/// The mesh formats written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshFormat {
    /// Binary STL (`.stl`).
    Stl,
    /// Binary little-endian PLY with vertex normals and colours (`.ply`).
    Ply,
}

impl MeshFormat {
    /// The format a file name asks for (`None` for another extension).
    pub fn of_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "stl" => Some(Self::Stl),
            "ply" => Some(Self::Ply),
            _ => None,
        }
    }
}

/// A RAS+ point or direction in LPS.
fn lps(p: [f32; 3]) -> [f32; 3] {
    [-p[0], -p[1], p[2]]
}

fn push3(out: &mut Vec<u8>, v: [f32; 3]) {
    for c in v {
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// The binary STL bytes of `mesh` (LPS).
pub fn stl_bytes(mesh: &Mesh) -> Result<Vec<u8>, String> {
    let n = u32::try_from(mesh.triangles()).map_err(|_| "too many triangles for STL")?;
    let mut out = Vec::with_capacity(84 + 50 * n as usize);
    let mut header = b"mriloop surface SPACE=LPS".to_vec();
    header.resize(80, b' ');
    out.extend_from_slice(&header);
    out.extend_from_slice(&n.to_le_bytes());
    for t in mesh.indices.chunks_exact(3) {
        let p = [0, 1, 2].map(|k| glam::Vec3::from_array(lps(mesh.positions_mm[t[k] as usize])));
        let normal = (p[1] - p[0]).cross(p[2] - p[0]).normalize_or_zero();
        push3(&mut out, normal.to_array());
        for v in p {
            push3(&mut out, v.to_array());
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    Ok(out)
}

/// The binary PLY bytes of `parts` (LPS): one mesh, each part's vertices in its colour.
pub fn ply_bytes(parts: &[(&Mesh, [u8; 3])]) -> Vec<u8> {
    let vertices: usize = parts.iter().map(|(m, _)| m.positions_mm.len()).sum();
    let faces: usize = parts.iter().map(|(m, _)| m.triangles()).sum();
    let header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment mriloop surface\ncomment SPACE=LPS\n\
         element vertex {vertices}\nproperty float x\nproperty float y\nproperty float z\n\
         property float nx\nproperty float ny\nproperty float nz\nproperty uchar red\n\
         property uchar green\nproperty uchar blue\nelement face {faces}\n\
         property list uchar int vertex_indices\nend_header\n"
    );
    let mut out = header.into_bytes();
    for (mesh, color) in parts {
        for (p, n) in mesh.positions_mm.iter().zip(&mesh.normals) {
            push3(&mut out, lps(*p));
            push3(&mut out, lps(*n));
            out.extend_from_slice(color);
        }
    }
    let mut base = 0i32;
    for (mesh, _) in parts {
        for t in mesh.indices.chunks_exact(3) {
            out.push(3);
            for i in t {
                out.extend_from_slice(&(base + *i as i32).to_le_bytes());
            }
        }
        base += mesh.positions_mm.len() as i32;
    }
    out
}

/// Write `parts` (meshes with their colours) to `path` as one mesh in the format its extension
/// names (`.stl`, which has no colours, or `.ply`), atomically.
pub fn write_mesh(path: &Path, parts: &[(&Mesh, [u8; 3])]) -> Result<(), VolumeError> {
    let bytes = match MeshFormat::of_path(path) {
        Some(MeshFormat::Stl) => {
            let mut all = Mesh::default();
            parts.iter().for_each(|(m, _)| all.append(m));
            stl_bytes(&all).map_err(VolumeError::Shape)?
        }
        Some(MeshFormat::Ply) => ply_bytes(parts),
        None => {
            return Err(VolumeError::Shape(format!(
                "{}: write a surface as .stl or .ply",
                path.display()
            )))
        }
    };
    crate::atomic::write_atomic(path, &bytes).map_err(|e| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
