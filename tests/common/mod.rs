//! Helpers shared by the integration tests: hand-built NIfTI headers in either byte order and
//! either version, so tests can make valid and malformed files byte by byte.
#![allow(dead_code)]

use std::io::Write;

/// A NIfTI-1 header, field by field.
#[derive(Clone)]
pub struct H1 {
    pub sizeof_hdr: i32,
    pub dim: [i16; 8],
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern: [f32; 6],
    pub srow: [[f32; 4]; 3],
    pub magic: [u8; 4],
}

impl H1 {
    /// A valid 3D int16 header of the given dims with an oblique sform.
    pub fn new(dims: [i16; 3], datatype: i16, bitpix: i16) -> Self {
        Self {
            sizeof_hdr: 348,
            dim: [3, dims[0], dims[1], dims[2], 1, 1, 1, 1],
            datatype,
            bitpix,
            pixdim: [1.0, 0.9, 1.1, 2.5, 0.0, 0.0, 0.0, 0.0],
            vox_offset: 352.0,
            scl_slope: 1.0,
            scl_inter: 0.0,
            xyzt_units: 2,
            qform_code: 1,
            sform_code: 1,
            quatern: [0.0, 0.0, 0.0, -10.0, 5.0, 3.0],
            srow: [
                [0.9, 0.1, 0.0, -10.0],
                [-0.05, 1.1, 0.2, 5.0],
                [0.0, -0.3, 2.5, 3.0],
            ],
            magic: *b"n+1\0",
        }
    }

    /// Serialise to 352 bytes (header + empty extension flag).
    pub fn bytes(&self, big: bool) -> Vec<u8> {
        let mut b = vec![0u8; 352];
        let mut put = |at: usize, v: &[u8]| {
            let mut v = v.to_vec();
            if big {
                v.reverse();
            }
            b[at..at + v.len()].copy_from_slice(&v);
        };
        put(0, &self.sizeof_hdr.to_le_bytes());
        for (i, d) in self.dim.iter().enumerate() {
            put(40 + 2 * i, &d.to_le_bytes());
        }
        put(70, &self.datatype.to_le_bytes());
        put(72, &self.bitpix.to_le_bytes());
        for (i, p) in self.pixdim.iter().enumerate() {
            put(76 + 4 * i, &p.to_le_bytes());
        }
        put(108, &self.vox_offset.to_le_bytes());
        put(112, &self.scl_slope.to_le_bytes());
        put(116, &self.scl_inter.to_le_bytes());
        put(123, &[self.xyzt_units]);
        put(252, &self.qform_code.to_le_bytes());
        put(254, &self.sform_code.to_le_bytes());
        for (i, q) in self.quatern.iter().enumerate() {
            put(256 + 4 * i, &q.to_le_bytes());
        }
        for (r, row) in self.srow.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put(280 + 16 * r + 4 * c, &v.to_le_bytes());
            }
        }
        b[344..348].copy_from_slice(&self.magic);
        b
    }
}

/// A NIfTI-2 header, field by field (only the fields the tests vary).
#[derive(Clone)]
pub struct H2 {
    pub dim: [i64; 8],
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: i64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub sform_code: i32,
    pub srow: [[f64; 4]; 3],
}

impl H2 {
    /// A valid 3D header with an oblique sform.
    pub fn new(dims: [i64; 3], datatype: i16, bitpix: i16) -> Self {
        Self {
            dim: [3, dims[0], dims[1], dims[2], 1, 1, 1, 1],
            datatype,
            bitpix,
            pixdim: [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            vox_offset: 544,
            scl_slope: 0.0,
            scl_inter: 0.0,
            sform_code: 2,
            srow: [
                [0.0, 0.0, -1.2, 40.0],
                [1.0, 0.0, 0.0, -20.0],
                [0.0, 0.8, 0.0, 10.0],
            ],
        }
    }

    /// Serialise to 544 bytes (header + empty extension flag).
    pub fn bytes(&self, big: bool) -> Vec<u8> {
        let mut b = vec![0u8; 544];
        let mut put = |at: usize, v: &[u8]| {
            let mut v = v.to_vec();
            if big {
                v.reverse();
            }
            b[at..at + v.len()].copy_from_slice(&v);
        };
        put(0, &540i32.to_le_bytes());
        put(12, &self.datatype.to_le_bytes());
        put(14, &self.bitpix.to_le_bytes());
        for (i, d) in self.dim.iter().enumerate() {
            put(16 + 8 * i, &d.to_le_bytes());
        }
        for (i, p) in self.pixdim.iter().enumerate() {
            put(104 + 8 * i, &p.to_le_bytes());
        }
        put(168, &self.vox_offset.to_le_bytes());
        put(176, &self.scl_slope.to_le_bytes());
        put(184, &self.scl_inter.to_le_bytes());
        put(348, &self.sform_code.to_le_bytes());
        for (r, row) in self.srow.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put(400 + 32 * r + 8 * c, &v.to_le_bytes());
            }
        }
        put(500, &2i32.to_le_bytes());
        b[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
        b
    }
}

/// Voxel bytes of `n` int16 values `i * 3 - 7`, in the given byte order.
pub fn i16_data(n: usize, big: bool) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let v = (i as i16).wrapping_mul(3).wrapping_sub(7);
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        })
        .collect()
}

/// Gzip bytes.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Run a Python snippet with `args` (`.ci/run` installs Python with nibabel, pynrrd and
/// pydicom); its stdout. Fails the test with Python's stderr.
pub fn python(script: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (.ci/run installs it with nibabel, pynrrd and pydicom)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
