//! Volume model and NIfTI I/O: affines, reorientation, round trips, byte orders, NIfTI-2, scaling.

mod common;

use common::{gz, i16_data, python, H1, H2};
use glam::{DMat3, DQuat, DVec3};
use mriloop::phantom::{self, PhantomConfig};
use mriloop::volume::{
    read_header, read_volume, reorient_to_ras, write_volume, Affine, AnyVolume, AxisMap, Volume,
    Voxel,
};

/// Oblique, anisotropic affines in every storage orientation (signed axis permutations).
fn oblique_affines() -> Vec<Affine> {
    let perms = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
        [1, 0, 2],
        [2, 1, 0],
    ];
    let mut out = Vec::new();
    for (n, perm) in perms.iter().enumerate() {
        for flips in 0..8u32 {
            let spacing = [0.7 + 0.1 * n as f64, 1.0, 3.0 - 0.2 * flips as f64];
            let cols: Vec<DVec3> = (0..3)
                .map(|a| {
                    let mut e = DVec3::ZERO;
                    e[perm[a]] = if flips & (1 << a) != 0 {
                        -spacing[a]
                    } else {
                        spacing[a]
                    };
                    e
                })
                .collect();
            let tilt = DMat3::from_quat(DQuat::from_axis_angle(
                DVec3::new(1.0, 2.0, 0.5 + n as f64).normalize(),
                (5.0 + 2.0 * flips as f64).to_radians(),
            ));
            let linear = tilt * DMat3::from_cols(cols[0], cols[1], cols[2]);
            out.push(Affine::from_linear_translation(
                linear,
                DVec3::new(-90.0 + n as f64, 120.5, -33.25 * flips as f64),
            ));
        }
    }
    out
}

#[test]
fn affine_world_voxel_world_round_trip_for_oblique_affines() {
    for a in oblique_affines() {
        let inv = a.inverse().expect("oblique affines are invertible");
        for p in [
            DVec3::new(0.0, 0.0, 0.0),
            DVec3::new(10.5, -3.25, 47.0),
            DVec3::new(-100.0, 80.0, 12.0),
        ] {
            let v = inv.vox_to_mm(p);
            let back = a.vox_to_mm(v);
            assert!((back - p).length() < 1e-9, "{p} -> {v} -> {back}");
        }
        // qform decomposition of a rigid (orthogonal) affine gives the same matrix back.
        let q = a.to_qform().expect("orthogonal");
        let b = Affine::from_qform(q.quatern_bcd, q.offset_mm, q.spacing_mm, q.qfac);
        assert!(
            a.max_abs_diff(&b) < 1e-9,
            "qform round trip: {a:?} vs {b:?}"
        );
    }
    let singular = Affine::from_rows3([
        [1.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]);
    assert!(singular.inverse().is_none());
}

#[test]
fn orientation_codes_match_nibabel_conventions() {
    assert_eq!(
        Affine::from_spacing([1.0, 1.0, 1.0]).orientation_code(),
        "RAS"
    );
    assert_eq!(
        Affine::from_spacing([-1.0, -1.0, 1.0]).orientation_code(),
        "LPS"
    );
    // Sagittal storage: axis 0 runs posterior, axis 1 inferior, axis 2 right.
    let pir = Affine::from_linear_translation(
        DMat3::from_cols(
            DVec3::new(0.0, -1.0, 0.0),
            DVec3::new(0.0, 0.0, -1.0),
            DVec3::new(1.0, 0.0, 0.0),
        ),
        DVec3::ZERO,
    );
    assert_eq!(pir.orientation_code(), "PIR");
}

fn numbered_volume(dims: [usize; 4], affine: Affine) -> Volume<i32> {
    let n: usize = dims.iter().product();
    Volume::new(dims, affine, (0..n as i32).collect()).unwrap()
}

#[test]
fn reorientation_keeps_every_voxel_at_its_world_position_and_undoes_exactly() {
    for (n, affine) in oblique_affines().into_iter().enumerate() {
        let dims = [5 + n % 3, 4, 6, 1 + n % 2];
        let vol = numbered_volume(dims, affine);
        let (ras, record) = reorient_to_ras(&vol);
        assert_eq!(ras.affine().orientation_code(), "RAS", "affine {n}");
        assert_eq!(AxisMap::nearest_ras(ras.affine()), AxisMap::identity());
        let src_inv = vol.affine().inverse().unwrap();
        let [dx, dy, dz, dt] = ras.dims();
        for t in 0..dt {
            for k in 0..dz {
                for j in 0..dy {
                    for i in 0..dx {
                        let world = ras
                            .affine()
                            .vox_to_mm(DVec3::new(i as f64, j as f64, k as f64));
                        let s = src_inv.vox_to_mm(world).round();
                        let src_idx = vol.linear_index(s.x as usize, s.y as usize, s.z as usize, t);
                        assert_eq!(
                            ras.data()[ras.linear_index(i, j, k, t)],
                            vol.data()[src_idx]
                        );
                    }
                }
            }
        }
        let back = record.restore(&ras).unwrap();
        assert_eq!(back, vol, "restore gives the original volume exactly");
    }
}

#[test]
fn reorient_then_save_gives_back_the_original_file_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // Phantom files (oblique, random storage orientation) written by mriloop.
    let cfg = PhantomConfig {
        cases: 3,
        seed: 11,
        grid: 24,
        ..PhantomConfig::default()
    };
    let project = phantom::generate_project(&dir.path().join("p"), &cfg, |_, _| {}).unwrap();
    for case in &project.manifest.cases {
        for rel in [
            case.sequences[0].path.as_str(),
            case.reference_mask.as_deref().unwrap(),
        ] {
            let path = project.resolve(rel);
            let original = std::fs::read(&path).unwrap();
            let out = dir.path().join("again.nii.gz");
            match read_volume(&path).unwrap() {
                AnyVolume::I16(v) => save_after_round_trip(&v, &out),
                AnyVolume::U8(v) => save_after_round_trip(&v, &out),
                other => panic!("unexpected type {:?}", other.datatype()),
            }
            assert_eq!(std::fs::read(&out).unwrap(), original, "{rel}");
        }
    }
    // A foreign file whose qform and sform disagree: both come back as stored.
    let mut h = H1::new([6, 5, 4], 4, 16);
    h.quatern = [0.1, -0.2, 0.3, 12.0, -7.5, 3.25];
    h.pixdim[0] = -1.0;
    let mut bytes = h.bytes(true);
    bytes.extend(i16_data(120, true));
    let foreign = dir.path().join("foreign_be.nii");
    std::fs::write(&foreign, &bytes).unwrap();
    let AnyVolume::I16(v) = read_volume(&foreign).unwrap() else {
        panic!("int16 expected")
    };
    let out = dir.path().join("foreign_again.nii");
    save_after_round_trip(&v, &out);
    let h0 = read_header(&foreign).unwrap();
    let h1 = read_header(&out).unwrap();
    assert_eq!(h0.geometry, h1.geometry);
    assert_eq!(h0.affine, h1.affine);
    assert_eq!(read_volume(&out).unwrap(), AnyVolume::I16(v));
}

fn save_after_round_trip<T: Voxel>(v: &Volume<T>, out: &std::path::Path) {
    let (ras, record) = reorient_to_ras(v);
    let restored = record.restore(&ras).unwrap();
    write_volume(out, &restored).unwrap();
}

fn round_trip<T: Voxel + std::fmt::Debug>(
    dir: &std::path::Path,
    name: &str,
    values: Vec<T>,
    dims: [usize; 4],
) -> AnyVolume {
    let affine = oblique_affines()[17];
    let mut v = Volume::new(dims, affine, values).unwrap();
    v.set_time_step_s(2.5);
    let path = dir.join(name);
    write_volume(&path, &v).unwrap();
    let back = read_volume(&path).unwrap();
    assert_eq!(back.dims(), dims, "{name}");
    assert!(back.affine().max_abs_diff(&affine) < 1e-4, "{name}: affine");
    if dims[3] > 1 {
        assert_eq!(back.time_step_s(), 2.5);
    }
    back
}

#[test]
fn write_read_round_trip_for_every_datatype() {
    let dir = tempfile::tempdir().unwrap();
    for (dims, ext) in [
        ([7, 5, 3, 1], "nii.gz"),
        ([4, 3, 2, 5], "nii.gz"),
        ([7, 5, 3, 1], "nii"),
    ] {
        let n: usize = dims.iter().product();
        let u8s: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        let i16s: Vec<i16> = (0..n)
            .map(|i| (i as i16).wrapping_mul(311).wrapping_sub(20000))
            .collect();
        let u16s: Vec<u16> = (0..n).map(|i| (i as u16).wrapping_mul(977)).collect();
        let i32s: Vec<i32> = (0..n).map(|i| i as i32 * -100_003).collect();
        let f32s: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 1.5e-3).collect();
        match round_trip(dir.path(), &format!("u8.{ext}"), u8s.clone(), dims) {
            AnyVolume::U8(v) => assert_eq!(v.data(), &u8s[..]),
            o => panic!("{:?}", o.datatype()),
        }
        match round_trip(dir.path(), &format!("i16.{ext}"), i16s.clone(), dims) {
            AnyVolume::I16(v) => assert_eq!(v.data(), &i16s[..]),
            o => panic!("{:?}", o.datatype()),
        }
        match round_trip(dir.path(), &format!("u16.{ext}"), u16s.clone(), dims) {
            AnyVolume::U16(v) => assert_eq!(v.data(), &u16s[..]),
            o => panic!("{:?}", o.datatype()),
        }
        match round_trip(dir.path(), &format!("i32.{ext}"), i32s.clone(), dims) {
            AnyVolume::I32(v) => assert_eq!(v.data(), &i32s[..]),
            o => panic!("{:?}", o.datatype()),
        }
        match round_trip(dir.path(), &format!("f32.{ext}"), f32s.clone(), dims) {
            AnyVolume::F32(v) => assert_eq!(v.data(), &f32s[..]),
            o => panic!("{:?}", o.datatype()),
        }
    }
}

#[test]
fn big_endian_nifti1_and_nifti2_read_with_their_affines() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<i16> = (0..60).map(|i: i16| i * 3 - 7).collect();
    for big in [false, true] {
        let h = H1::new([5, 4, 3], 4, 16);
        let mut b = h.bytes(big);
        b.extend(i16_data(60, big));
        let p = dir.path().join(format!("n1_{big}.nii"));
        std::fs::write(&p, &b).unwrap();
        let pz = dir.path().join(format!("n1_{big}.nii.gz"));
        std::fs::write(&pz, gz(&b)).unwrap();
        for path in [&p, &pz] {
            let AnyVolume::I16(v) = read_volume(path).unwrap() else {
                panic!("int16 expected")
            };
            assert_eq!(v.data(), &expected[..]);
            let want = Affine::from_rows3(h.srow.map(|r| r.map(|x| x as f64)));
            assert_eq!(*v.affine(), want, "sform wins over qform");
            assert_eq!(read_header(path).unwrap().big_endian, big);
        }

        let h2 = H2::new([5, 4, 3], 4, 16);
        let mut b2 = h2.bytes(big);
        b2.extend(i16_data(60, big));
        let p2 = dir.path().join(format!("n2_{big}.nii"));
        std::fs::write(&p2, &b2).unwrap();
        let hdr = read_header(&p2).unwrap();
        assert_eq!(hdr.version, 2);
        assert_eq!(hdr.orientation_code(), "ASL");
        let AnyVolume::I16(v) = read_volume(&p2).unwrap() else {
            panic!("int16 expected")
        };
        assert_eq!(v.data(), &expected[..]);
        assert_eq!(*v.affine(), Affine::from_rows3(h2.srow));
    }
}

#[test]
fn scaling_is_applied_and_yields_float() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = H1::new([4, 3, 2], 4, 16);
    h.scl_slope = 0.5;
    h.scl_inter = 100.0;
    let mut b = h.bytes(false);
    b.extend(i16_data(24, false));
    let p = dir.path().join("scaled.nii.gz");
    std::fs::write(&p, gz(&b)).unwrap();
    let AnyVolume::F32(v) = read_volume(&p).unwrap() else {
        panic!("scaled data reads as float32")
    };
    for (i, x) in v.data().iter().enumerate() {
        assert_eq!(*x, (i as f32 * 3.0 - 7.0) * 0.5 + 100.0);
    }
    // Slope 0 means "no scaling" in NIfTI: the type is kept.
    h.scl_slope = 0.0;
    let mut b = h.bytes(false);
    b.extend(i16_data(24, false));
    std::fs::write(&p, gz(&b)).unwrap();
    assert!(matches!(read_volume(&p).unwrap(), AnyVolume::I16(_)));
}

#[test]
fn written_gzip_is_blocked_plain_gzip_and_damage_is_caught() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    // Several 64 KiB blocks, the header straddling the first.
    let dims = [61, 67, 23, 1];
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 1000.0).collect();
    let vol = Volume::new(dims, oblique_affines()[3], values.clone()).unwrap();
    let path = dir.path().join("blocks.nii.gz");
    write_volume(&path, &vol).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Any gzip reader sees one stream: header then the voxels.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain.len(), 352 + 4 * n);
    assert_eq!(&plain[352..356], &values[0].to_le_bytes());
    let AnyVolume::F32(back) = read_volume(&path).unwrap() else {
        panic!("float32 expected")
    };
    assert_eq!(back.data(), &values[..]);
    // The same stream as one ordinary gzip member reads the same.
    let single = dir.path().join("single.nii.gz");
    std::fs::write(&single, gz(&plain)).unwrap();
    assert_eq!(read_volume(&single).unwrap(), AnyVolume::F32(back));
    // A flipped byte inside a later block is reported, with the file's name.
    let mut damaged = bytes.clone();
    let at = bytes.len() - 20_000;
    damaged[at] ^= 0x55;
    let bad = dir.path().join("damaged.nii.gz");
    std::fs::write(&bad, &damaged).unwrap();
    let err = read_volume(&bad).unwrap_err().to_string();
    assert!(
        err.contains("damaged.nii.gz") && err.contains("corrupt gzip"),
        "{err}"
    );
}

#[test]
fn voxel_data_at_an_unaligned_offset_reads_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = H1::new([5, 4, 3], 4, 16);
    h.vox_offset = 355.0;
    let mut b = h.bytes(false);
    b.extend([7u8, 7, 7]);
    b.extend(i16_data(60, false));
    let expected: Vec<i16> = (0..60).map(|i: i16| i * 3 - 7).collect();
    for (name, bytes) in [("odd.nii", b.clone()), ("odd.nii.gz", gz(&b))] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let AnyVolume::I16(v) = read_volume(&p).unwrap() else {
            panic!("int16 expected")
        };
        assert_eq!(v.data(), &expected[..], "{name}");
    }
}

#[test]
fn mgz_written_by_nibabel_reads_with_its_shape_affine_and_values_and_ours_reads_back_in_nibabel() {
    use mriloop::volume::AnyVolume;
    let dir = tempfile::tempdir().unwrap();
    // nibabel writes an oblique float 4D file, a short and a uchar file (values i-fastest known).
    let script = r#"
import sys, json, numpy as np, nibabel as nib
out = sys.argv[1]
a = np.array([[0.9, -0.2, 0.1, -40.5], [0.15, 1.1, -0.3, 12.25], [-0.05, 0.25, 1.4, 7.0], [0, 0, 0, 1]])
shape = (5, 6, 7)
idx = np.arange(5 * 6 * 7).reshape(shape, order="F")
for name, data in [("f4d.mgz", np.stack([idx * 0.5, idx * -1.25], -1).astype(np.float32)),
                   ("s.mgz", (idx - 100).astype(np.int16)), ("u.mgh", (idx % 251).astype(np.uint8))]:
    nib.save(nib.MGHImage(data, a), f"{out}/{name}")
print(json.dumps(nib.load(f"{out}/s.mgz").affine.tolist()))
"#;
    let theirs: Vec<Vec<f64>> = serde_json::from_str(&python(script, &[dir.path()])).unwrap();
    let close = |ours: [[f64; 4]; 4]| {
        (0..3).all(|r| (0..4).all(|c| (ours[r][c] - theirs[r][c]).abs() < 1e-4))
    };
    let at = |i: usize, j: usize, k: usize| i + 5 * (j + 6 * k);
    match read_volume(&dir.path().join("f4d.mgz")).unwrap() {
        AnyVolume::F32(v) => {
            assert_eq!(v.dims(), [5, 6, 7, 2]);
            assert!(
                close(v.affine().rows()),
                "{:?} vs {theirs:?}",
                v.affine().rows()
            );
            assert_eq!(v.data()[at(4, 5, 6)], (at(4, 5, 6) as f32) * 0.5);
            assert_eq!(v.data()[210 + at(1, 2, 3)], (at(1, 2, 3) as f32) * -1.25);
        }
        other => panic!("float MGZ read as {:?}", other.datatype()),
    }
    match read_volume(&dir.path().join("s.mgz")).unwrap() {
        AnyVolume::I16(v) => {
            assert_eq!(v.dims(), [5, 6, 7, 1]);
            assert!((0..210).all(|i| v.data()[i] == i as i16 - 100));
        }
        other => panic!("short MGZ read as {:?}", other.datatype()),
    }
    let mask = read_volume(&dir.path().join("u.mgh"))
        .unwrap()
        .into_u8()
        .unwrap();
    assert!((0..210).all(|i| mask.data()[i] == (i % 251) as u8));
    // Our mask, saved as .mgz, reads back in nibabel on the image's grid with its values.
    let saved = dir.path().join("mask.mgz");
    write_volume(&saved, &mask).unwrap();
    let check = r#"
import sys, json, numpy as np, nibabel as nib
m = nib.load(sys.argv[1])
d = np.asarray(m.dataobj)
print(json.dumps({"shape": list(d.shape), "dtype": str(d.dtype), "affine": m.affine.tolist(),
                  "values": d.ravel(order="F").tolist()}))
"#;
    let back: serde_json::Value = serde_json::from_str(&python(check, &[&saved])).unwrap();
    assert_eq!(back["shape"], serde_json::json!([5, 6, 7]));
    assert_eq!(back["dtype"], "uint8");
    let affine: Vec<Vec<f64>> = serde_json::from_value(back["affine"].clone()).unwrap();
    assert!((0..3).all(|r| (0..4).all(|c| (affine[r][c] - theirs[r][c]).abs() < 1e-4)));
    let values: Vec<u8> = serde_json::from_value(back["values"].clone()).unwrap();
    assert_eq!(values, mask.data());
}

#[test]
fn a_malformed_mgz_is_refused_by_name_without_allocating_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    // A header claiming 100 000³ floats, in a few bytes.
    let mut header = vec![0u8; 284];
    header[..4].copy_from_slice(&1i32.to_be_bytes());
    for (a, d) in [100_000i32, 100_000, 100_000, 1].iter().enumerate() {
        header[4 + 4 * a..8 + 4 * a].copy_from_slice(&d.to_be_bytes());
    }
    header[20..24].copy_from_slice(&3i32.to_be_bytes());
    let huge = dir.path().join("huge.mgz");
    std::fs::write(&huge, gz(&header)).unwrap();
    let e = read_volume(&huge).unwrap_err().to_string();
    assert!(e.contains("huge.mgz") && e.contains("bytes"), "{e}");
    // Plausible dims, truncated data.
    header[4..20].copy_from_slice(&[8i32, 8, 8, 1].map(i32::to_be_bytes).concat());
    let short = dir.path().join("short.mgh");
    std::fs::write(&short, [header.clone(), vec![0; 100]].concat()).unwrap();
    let e = read_volume(&short).unwrap_err().to_string();
    assert!(e.contains("short.mgh"), "{e}");
    // Not MGH at all, and an unknown voxel type.
    let text = dir.path().join("notes.mgz");
    std::fs::write(&text, b"not an image").unwrap();
    assert!(read_volume(&text)
        .unwrap_err()
        .to_string()
        .contains("notes.mgz"));
    header[20..24].copy_from_slice(&7i32.to_be_bytes());
    let odd = dir.path().join("odd.mgh");
    std::fs::write(&odd, [header, vec![0; 2048]].concat()).unwrap();
    let e = read_volume(&odd).unwrap_err().to_string();
    assert!(e.contains("odd.mgh") && e.contains("type 7"), "{e}");
}

#[test]
fn nrrd_written_by_pynrrd_reads_in_ras_and_our_segmentation_reads_back_in_pynrrd() {
    use mriloop::volume::nrrd::{read_nrrd_header, read_segmentation, segments};
    use mriloop::volume::AnyVolume;
    let dir = tempfile::tempdir().unwrap();
    // pynrrd writes: an oblique LPS short volume (gzip), a detached big-endian float header
    // with raw data, and a two-layer segmentation (layers first, as Slicer stores them).
    let script = r#"
import sys, numpy as np, nrrd
out = sys.argv[1]
dirs = np.array([[0.9, 0.15, -0.05], [-0.2, 1.1, 0.25], [0.1, -0.3, 1.4]])
origin = np.array([40.5, -12.25, 7.0])
idx = np.arange(5 * 6 * 7).reshape((5, 6, 7), order="F")
hdr = {"space": "left-posterior-superior", "space directions": dirs, "space origin": origin,
       "encoding": "gzip", "kinds": ["domain"] * 3}
nrrd.write(f"{out}/s.nrrd", (idx - 100).astype(np.int16), hdr)
nrrd.write(f"{out}/f.nhdr", (idx * 0.5).astype(">f4"), dict(hdr, encoding="raw", endian="big"),
           detached_header=True)
layers = np.zeros((2, 5, 6, 7), np.uint8)
layers[0, 1:3, 1:3, 1:3] = 1
layers[1, 2:4, 2:4, 2:4] = 1
seg = dict(hdr, **{"space directions": np.vstack([[np.nan] * 3, dirs]), "kinds": ["list"] + ["domain"] * 3})
for i, (name, layer) in enumerate([("left thalamus", 0), ("lesion", 1)]):
    seg.update({f"Segment{i}_Name": name, f"Segment{i}_LabelValue": "1", f"Segment{i}_Layer": str(layer),
                f"Segment{i}_Color": "0.2 0.4 1.0"})
nrrd.write(f"{out}/two.seg.nrrd", layers, seg, custom_field_map={})
"#;
    python(script, &[dir.path()]);
    // LPS → RAS: x and y flip in the directions and the origin.
    let want = [
        [-0.9, 0.2, -0.1, -40.5],
        [-0.15, -1.1, 0.3, 12.25],
        [-0.05, 0.25, 1.4, 7.0],
    ];
    let at = |i: usize, j: usize, k: usize| i + 5 * (j + 6 * k);
    let close = |rows: [[f64; 4]; 4]| {
        (0..3).all(|r| (0..4).all(|c| (rows[r][c] - want[r][c]).abs() < 1e-6))
    };
    let AnyVolume::I16(s) = read_volume(&dir.path().join("s.nrrd")).unwrap() else {
        panic!("short NRRD")
    };
    assert_eq!(s.dims(), [5, 6, 7, 1]);
    assert!(close(s.affine().rows()), "{:?}", s.affine().rows());
    assert_eq!(s.data()[at(4, 5, 6)], at(4, 5, 6) as i16 - 100);
    let AnyVolume::F32(f) = read_volume(&dir.path().join("f.nhdr")).unwrap() else {
        panic!("float NRRD")
    };
    assert!(close(f.affine().rows()));
    assert!((0..210).all(|i| f.data()[i] == i as f32 * 0.5));
    // The two layers merge into one label map with a value per segment.
    let (labels, segs) = read_segmentation(&dir.path().join("two.seg.nrrd")).unwrap();
    assert_eq!(labels.dims(), [5, 6, 7, 1]);
    assert!(close(labels.affine().rows()));
    assert_eq!(
        segs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["left thalamus", "lesion"]
    );
    assert_eq!(labels.data()[at(1, 1, 1)], 1);
    assert_eq!(labels.data()[at(3, 3, 3)], 2);
    assert_eq!(
        labels.data()[at(2, 2, 2)],
        2,
        "the later layer wins an overlap"
    );
    assert_eq!(segs[0].color, [51, 102, 255]);
    // Opened on its own, its segments name the merged map's values (the window's label table).
    let (_, table) = mriloop::project::label_table_beside(&dir.path().join("two.seg.nrrd"))
        .expect("a segmentation names its labels")
        .unwrap();
    assert_eq!(
        (table.name_of(1), table.name_of(2)),
        ("left thalamus".into(), "lesion".into())
    );
    assert_eq!(table.get(1).map(|l| l.color), Some([51, 102, 255]));
    // Saved back over the user's file (as a Save does): one layer, the segments' names kept,
    // and pynrrd reads it on the same grid with the same values.
    let saved = dir.path().join("two.seg.nrrd");
    write_volume(&saved, &labels).unwrap();
    let header = read_nrrd_header(&saved).unwrap();
    let names: Vec<String> = segments(&header).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["left thalamus", "lesion"]);
    let check = r#"
import sys, json, numpy as np, nrrd
d, h = nrrd.read(sys.argv[1])
print(json.dumps({"shape": list(d.shape), "space": h["space"], "dirs": h["space directions"].tolist(),
                  "origin": h["space origin"].tolist(), "values": d.ravel(order="F").tolist(),
                  "name": h.get("Segment1_Name")}))
"#;
    let back: serde_json::Value = serde_json::from_str(&python(check, &[&saved])).unwrap();
    assert_eq!(back["shape"], serde_json::json!([5, 6, 7]));
    assert_eq!(back["space"], "left-posterior-superior");
    assert_eq!(back["name"], "lesion");
    let origin: Vec<f64> = serde_json::from_value(back["origin"].clone()).unwrap();
    assert!((origin[0] - 40.5).abs() < 1e-9 && (origin[1] + 12.25).abs() < 1e-9);
    let dirs: Vec<Vec<f64>> = serde_json::from_value(back["dirs"].clone()).unwrap();
    assert!((dirs[0][0] - 0.9).abs() < 1e-9 && (dirs[2][2] - 1.4).abs() < 1e-9);
    let values: Vec<u8> = serde_json::from_value(back["values"].clone()).unwrap();
    assert_eq!(values, labels.data());
}

#[test]
fn a_malformed_nrrd_is_refused_by_name_without_allocating_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let base = "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n\
                space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\n";
    let huge = write(
        "huge.nrrd",
        &format!("{base}sizes: 100000 100000 100000\nencoding: gzip\n\n"),
    );
    let e = read_volume(&huge).unwrap_err().to_string();
    assert!(e.contains("huge.nrrd") && e.contains("bytes"), "{e}");
    let short = write(
        "short.nrrd",
        &format!("{base}sizes: 8 8 8\nencoding: raw\n\nabc"),
    );
    assert!(read_volume(&short)
        .unwrap_err()
        .to_string()
        .contains("short.nrrd"));
    let odd = write(
        "odd.nrrd",
        &format!("{base}sizes: 2 2 2\nencoding: bzip2\n\n"),
    );
    assert!(read_volume(&odd).unwrap_err().to_string().contains("bzip2"));
    let flat = write("flat.nrrd", "NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nspace directions: (1,0,0) (2,0,0) (0,0,1)\nencoding: raw\n\n");
    assert!(read_volume(&flat)
        .unwrap_err()
        .to_string()
        .contains("singular"));
    let text = write("notes.nrrd", "hello");
    assert!(read_volume(&text)
        .unwrap_err()
        .to_string()
        .contains("notes.nrrd"));
}

#[test]
fn an_exported_surface_opens_in_trimesh_closed_with_the_labels_extent_in_lps_mm() {
    // A ball of label 2 (radius 6 voxels) on an oblique, mirrored, anisotropic grid, saved as
    // a label file and meshed by `mriloop export-mesh` as STL and PLY.
    let dir = tempfile::tempdir().unwrap();
    let linear = DMat3::from_quat(DQuat::from_rotation_z(0.3))
        * DMat3::from_diagonal(DVec3::new(-0.9, 1.1, 1.4));
    let affine = Affine::from_linear_translation(linear, DVec3::new(30.0, -12.0, 8.0));
    let n = 24usize;
    let data: Vec<u8> = (0..n * n * n)
        .map(|i| {
            let p = DVec3::new((i % n) as f64, ((i / n) % n) as f64, (i / (n * n)) as f64);
            u8::from((p - DVec3::new(11.0, 12.0, 10.0)).length() <= 6.0) * 2
        })
        .collect();
    let inside: Vec<usize> = (0..data.len()).filter(|i| data[*i] == 2).collect();
    let mask = Volume::new([n, n, n, 1], affine, data).unwrap();
    let file = dir.path().join("labels.nii.gz");
    write_volume(&file, &mask).unwrap();
    // The voxel centres' extent in LPS, grown by half a voxel's reach along each axis.
    let lps = |p: DVec3| DVec3::new(-p.x, -p.y, p.z);
    let centres: Vec<DVec3> = inside
        .iter()
        .map(|i| {
            lps(affine.vox_to_mm(DVec3::new(
                (i % n) as f64,
                ((i / n) % n) as f64,
                (i / (n * n)) as f64,
            )))
        })
        .collect();
    let lo = centres
        .iter()
        .fold(DVec3::splat(f64::MAX), |a, p| a.min(*p));
    let hi = centres
        .iter()
        .fold(DVec3::splat(f64::MIN), |a, p| a.max(*p));
    let half = (linear.abs() * DVec3::splat(0.5)).abs();
    let voxel_mm3 = linear.determinant().abs() * inside.len() as f64;
    for ext in ["stl", "ply"] {
        let out = dir.path().join(format!("ball.{ext}"));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mriloop"))
            .args(["export-mesh"])
            .arg(&file)
            .args(["--label", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let said = python(
            r#"
import sys, trimesh
m = trimesh.load(sys.argv[1])
print(int(m.is_watertight), m.volume, *m.bounds[0], *m.bounds[1])
"#,
            &[&out],
        );
        let v: Vec<f64> = said
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v[0], 1.0, "{ext}: trimesh finds it open");
        assert!(
            (v[1] / voxel_mm3 - 1.0).abs() < 0.1,
            "{ext}: {} mm³ for {voxel_mm3}",
            v[1]
        );
        let (got_lo, got_hi) = (DVec3::new(v[2], v[3], v[4]), DVec3::new(v[5], v[6], v[7]));
        for a in 0..3 {
            // Past the outermost centres, within their half voxel.
            assert!(
                got_lo[a] < lo[a] && got_lo[a] > lo[a] - half[a] - 1e-3,
                "{ext} {got_lo} {lo}"
            );
            assert!(
                got_hi[a] > hi[a] && got_hi[a] < hi[a] + half[a] + 1e-3,
                "{ext} {got_hi} {hi}"
            );
        }
    }
    // As a rendered view (on lavapipe here): the ball lit in its label's colour, facing the
    // light at its middle, on black.
    let out = dir.path().join("ball.png");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(["export-mesh"])
        .arg(&file)
        .args(["--from", "superior", "--size", "128", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (128, 128));
    let colour = mriloop::project::default_color(2);
    let lit = img.pixels().filter(|p| p.0 != [0, 0, 0]).count();
    let facing = img
        .pixels()
        .filter(|p| (0..3).all(|k| p.0[k].abs_diff(colour[k]) <= 8))
        .count();
    assert!(
        lit > 100 && facing > 4,
        "{lit} lit pixels, {facing} in {colour:?}"
    );
}

/// A 20³ mask at 2 mm with a cube of label 3 over voxels 8..12 and label 5 at voxel 2,2,2.
fn pick_mask() -> Volume<u8> {
    let mut m = Volume::filled([20, 20, 20, 1], Affine::from_spacing([2.0; 3]), 0u8).unwrap();
    for k in 8..12 {
        for j in 8..12 {
            for i in 8..12 {
                let n = m.linear_index(i, j, k, 0);
                m.data_mut()[n] = 3;
            }
        }
    }
    let n = m.linear_index(2, 2, 2, 0);
    m.data_mut()[n] = 5;
    m
}

#[test]
fn a_pick_ray_lands_on_the_near_face_of_a_labelled_cube() {
    let m = pick_mask();
    // From far along +x, through the cube's middle (voxel 10 → 20 mm).
    let hit = mriloop::volume::pick::first_labelled_along(
        &m,
        DVec3::new(100.0, 20.0, 20.0),
        -DVec3::X,
        |_| true,
    );
    let hit = hit.expect("the ray crosses the cube");
    // The cube's voxels 8..=11 end at 11.5 voxels = 23 mm.
    assert!((hit.x - 23.0).abs() < 0.05, "{hit:?}");
    assert!((hit.y - 20.0).abs() < 1e-9 && (hit.z - 20.0).abs() < 1e-9);
}

#[test]
fn a_pick_ray_skips_unwanted_labels_and_misses_give_nothing() {
    let m = pick_mask();
    let through_both = (DVec3::splat(-10.0), DVec3::ONE.normalize());
    let hit =
        mriloop::volume::pick::first_labelled_along(&m, through_both.0, through_both.1, |l| l == 5);
    assert!(
        hit.is_some_and(|p| (p - DVec3::splat(4.0)).length() < 2.0),
        "{hit:?}"
    );
    let hit =
        mriloop::volume::pick::first_labelled_along(&m, through_both.0, through_both.1, |l| l == 3);
    assert!(hit.is_some_and(|p| p.x > 14.0 && p.x < 17.0), "{hit:?}");
    assert!(
        mriloop::volume::pick::first_labelled_along(&m, through_both.0, through_both.1, |l| l == 7)
            .is_none()
    );
    let away =
        mriloop::volume::pick::first_labelled_along(&m, DVec3::splat(-10.0), -DVec3::X, |_| true);
    assert!(away.is_none());
}

/// NIfTI `.hdr`/`.img` pairs as nibabel writes them (SPM's and FSL's `NIFTI_PAIR` layout):
/// NIfTI-1 float oblique, a big-endian scaled short NIfTI-2 pair, a gzipped pair (named by its
/// `.img.gz`) read with nibabel's shape, affine and values; a mask saved over a pair and as a
/// new one reads back in nibabel; an Analyze header, a pair missing its image and a truncated
/// image are refused by name.
#[test]
fn nifti_pairs_written_by_nibabel_read_as_nibabel_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, json, numpy as np, nibabel as nib
out = sys.argv[1]
a = np.array([[0.9, -0.2, 0.1, -40.5], [0.15, 1.1, -0.3, 12.25], [-0.05, 0.25, 1.4, 7.0], [0, 0, 0, 1]])
idx = np.arange(5 * 6 * 7).reshape((5, 6, 7), order="F")
nib.save(nib.Nifti1Pair((idx * 0.5).astype(np.float32), a), f"{out}/f.hdr")
s = nib.Nifti2Pair((idx - 100).astype(np.int16), a)
s.header.set_data_dtype(">i2")
s.header.set_slope_inter(2.0, -3.0)
nib.save(s, f"{out}/s.hdr")
nib.save(nib.Nifti1Pair((idx % 7).astype(np.uint8), a), f"{out}/m.hdr.gz")
nib.save(nib.AnalyzeImage(idx.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), f"{out}/old.hdr")
print(json.dumps({k: {"affine": nib.load(f"{out}/{k}").affine.tolist(),
                      "values": np.asarray(nib.load(f"{out}/{k}").get_fdata()).ravel(order="F").tolist()}
                  for k in ["f.hdr", "s.hdr", "m.img.gz"]}))
"#;
    let theirs: serde_json::Value = serde_json::from_str(&python(script, &[dir.path()])).unwrap();
    for name in ["f.hdr", "s.hdr", "m.img.gz"] {
        let v = read_volume(&dir.path().join(name)).unwrap().to_f32();
        assert_eq!(v.dims(), [5, 6, 7, 1], "{name}");
        let affine: Vec<Vec<f64>> = serde_json::from_value(theirs[name]["affine"].clone()).unwrap();
        let rows = v.affine().rows();
        assert!(
            (0..3).all(|r| (0..4).all(|c| (rows[r][c] - affine[r][c]).abs() < 1e-4)),
            "{name}: {rows:?} vs {affine:?}"
        );
        let values: Vec<f64> = serde_json::from_value(theirs[name]["values"].clone()).unwrap();
        assert!(
            v.data()
                .iter()
                .zip(&values)
                .all(|(a, b)| (f64::from(*a) - b).abs() < 1e-6),
            "{name}"
        );
        assert_eq!(
            read_header(&dir.path().join(name)).unwrap().dims,
            [5, 6, 7, 1]
        );
    }
    // The gzipped pair's mask reads as a label map, named by its header too; saved over it (as
    // a Save does) and as a new pair, nibabel reads each back with our values on our grid.
    let mut mask = read_volume(&dir.path().join("m.hdr.gz"))
        .unwrap()
        .into_u8()
        .unwrap();
    assert_eq!(mask.data()[4], 4);
    mask.data_mut()[4] = 9;
    write_volume(&dir.path().join("m.hdr.gz"), &mask).unwrap();
    write_volume(&dir.path().join("new.img"), &mask).unwrap();
    let check = r#"
import sys, json, numpy as np, nibabel as nib
out = []
for f in sys.argv[1:]:
    m = nib.load(f)
    out.append({"kind": type(m).__name__, "affine": m.affine.tolist(),
                "values": np.asarray(m.dataobj).ravel(order="F").tolist()})
print(json.dumps(out))
"#;
    let (saved, new) = (dir.path().join("m.img.gz"), dir.path().join("new.hdr"));
    let back: serde_json::Value = serde_json::from_str(&python(check, &[&saved, &new])).unwrap();
    for b in back.as_array().unwrap() {
        assert_eq!(b["kind"], "Nifti1Pair");
        let values: Vec<u8> = serde_json::from_value(b["values"].clone()).unwrap();
        assert_eq!(values, mask.data());
        let affine: Vec<Vec<f64>> = serde_json::from_value(b["affine"].clone()).unwrap();
        let rows = mask.affine().rows();
        assert!((0..3).all(|r| (0..4).all(|c| (rows[r][c] - affine[r][c]).abs() < 1e-4)));
    }
    assert!(!dir.path().join("m.hdr").exists() && !dir.path().join("new.img.gz").exists());
    let e = read_volume(&dir.path().join("old.hdr"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("old.hdr") && e.contains("Analyze 7.5"), "{e}");
    std::fs::remove_file(dir.path().join("f.img")).unwrap();
    let e = read_volume(&dir.path().join("f.hdr"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f.hdr") && e.contains("f.img is not beside it"),
        "{e}"
    );
    let img = dir.path().join("s.img");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_volume(&dir.path().join("s.hdr"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.img") && e.contains("truncated data"), "{e}");
    // An upper-case pair keeps its case; a save that cannot write both files changes neither.
    write_volume(&dir.path().join("UP.HDR"), &mask).unwrap();
    assert!(dir.path().join("UP.IMG").is_file() && !dir.path().join("UP.img").exists());
    let up = read_volume(&dir.path().join("UP.IMG"))
        .unwrap()
        .into_u8()
        .unwrap();
    assert_eq!(up.data(), mask.data());
    std::fs::create_dir(dir.path().join("blocked.hdr")).unwrap();
    std::fs::write(dir.path().join("blocked.img"), b"the user's bytes").unwrap();
    let e = write_volume(&dir.path().join("blocked.img"), &mask)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blocked.hdr") && e.contains("folder"), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("blocked.img")).unwrap(),
        b"the user's bytes"
    );
}
