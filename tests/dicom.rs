//! DICOM import: a synthetic oblique series written with dicom-rs from a phantom volume comes
//! back with the same values and world coordinates as the NIfTI it came from; real DICOM files
//! (pydicom's test images, as Debian ships them) import in four transfer syntaxes (JPEG 2000 among
//! them); a Siemens mosaic diffusion series imports as dcm2niix converts it, and diffusion
//! series (Siemens CSA, enhanced MR Diffusion) get the `.bval` / `.bvec` dcm2niix writes; malformed
//! and unsupported files and inconsistent series give errors naming them while the rest imports;
//! imported series become named sequences of a project case.

mod common;
mod window;

use common::python;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use egui_kittest::kittest::Queryable;
use glam::{DMat3, DVec3};
use mriloop::phantom::{generate_case, PhantomConfig};
use mriloop::project::{dicom_import, Manifest, Project, SequenceName};
use mriloop::volume::dicom::{scan_dir, DicomScan};
use mriloop::volume::{read_volume, write_volume, Affine, Volume};
use std::path::{Path, PathBuf};

const SLOPE: f64 = 0.5;
const INTERCEPT: f64 = -100.0;

/// How to write one slice file.
struct SliceSpec<'a> {
    uid: &'a str,
    description: &'a str,
    number: i64,
    instance: i64,
    rows: usize,
    columns: usize,
    spacing: [f64; 2],
    orientation: [f64; 6],
    position: [f64; 3],
    stored: Vec<i16>,
    skip_position: bool,
}

fn ds(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| format!("{x:.6}")).collect())
}

fn write_slice(path: &Path, s: &SliceSpec<'_>) {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, value));
    };
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.4".into(),
    );
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        // Unique per image, as a scanner makes it: from the series UID and the instance.
        format!(
            "2.25.{}{}{}",
            s.uid
                .bytes()
                .fold(7u64, |h, b| (h * 31 + u64::from(b)) % 1_000_003),
            s.number,
            1000 + s.instance
        )
        .into(),
    );
    put(tags::MODALITY, VR::CS, "MR".into());
    put(tags::SERIES_INSTANCE_UID, VR::UI, s.uid.into());
    put(tags::SERIES_DESCRIPTION, VR::LO, s.description.into());
    put(tags::SERIES_NUMBER, VR::IS, s.number.to_string().into());
    put(tags::INSTANCE_NUMBER, VR::IS, s.instance.to_string().into());
    if !s.skip_position {
        put(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&s.position));
    }
    put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&s.orientation));
    put(tags::PIXEL_SPACING, VR::DS, ds(&s.spacing));
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2".into(),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(s.rows as u16));
    put(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(s.columns as u16),
    );
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(1u16),
    );
    put(tags::RESCALE_SLOPE, VR::DS, ds(&[SLOPE]));
    put(tags::RESCALE_INTERCEPT, VR::DS, ds(&[INTERCEPT]));
    let bytes: Vec<u8> = s.stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes));
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

/// Write `stored` (modality value = stored · SLOPE + INTERCEPT) on `affine` (RAS+) as a DICOM
/// series in `dir`, one file per slice, named out of slice order, instance numbers reversed.
fn write_series(
    dir: &Path,
    uid: &str,
    description: &str,
    number: i64,
    stored: &Volume<i16>,
    affine: &Affine,
) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let [nx, ny, nz] = stored.dims3();
    let flip = DMat3::from_diagonal(DVec3::new(-1.0, -1.0, 1.0));
    let lps = flip * affine.linear();
    let (ci, cj) = (lps.col(0), lps.col(1));
    let orientation = {
        let (u, v) = (ci.normalize(), cj.normalize());
        [u.x, u.y, u.z, v.x, v.y, v.z]
    };
    (0..nz)
        .map(|k| {
            let p = flip * affine.vox_to_mm(DVec3::new(0.0, 0.0, k as f64));
            let path = dir.join(format!("IM{:04}", (k * 7919) % 10_007));
            write_slice(
                &path,
                &SliceSpec {
                    uid,
                    description,
                    number,
                    instance: (nz - k) as i64,
                    rows: ny,
                    columns: nx,
                    spacing: [cj.length(), ci.length()],
                    orientation,
                    position: p.to_array(),
                    stored: stored.data()[k * nx * ny..(k + 1) * nx * ny].to_vec(),
                    skip_position: false,
                },
            );
            path
        })
        .collect()
}

/// An oblique, anisotropic voxel→world transform; `mirrored` flips the slice axis (a
/// left-handed grid, whose slices DICOM sorts the other way).
fn oblique(mirrored: bool) -> Affine {
    let rot =
        DMat3::from_rotation_z(0.35) * DMat3::from_rotation_x(-0.25) * DMat3::from_rotation_y(0.1);
    let k = if mirrored { -2.0 } else { 2.0 };
    let linear = rot * DMat3::from_diagonal(DVec3::new(0.9, 1.1, k));
    Affine::from_linear_translation(linear, DVec3::new(-40.0, 25.5, 12.25))
}

/// The phantom's T1 (stored values) on the oblique grid.
fn phantom_stored(affine: &Affine) -> Volume<i16> {
    let cfg = PhantomConfig {
        cases: 1,
        seed: 4,
        grid: 20,
        ..Default::default()
    };
    let case = generate_case(&cfg, 0).unwrap();
    let t1 = &case.images[0].1;
    let [nx, ny, nz] = t1.dims3();
    Volume::new(
        [nx, ny, nz.min(9), 1],
        *affine,
        t1.data()[..nx * ny * nz.min(9)].to_vec(),
    )
    .unwrap()
}

fn modality(stored: &Volume<i16>) -> Volume<f32> {
    stored.map(|s| (f64::from(s) * SLOPE + INTERCEPT) as f32)
}

/// Every voxel of `want` found at the same world position in `got`, with the same value.
fn assert_same_in_world(want: &Volume<f32>, got: &Volume<f32>) {
    let [nx, ny, nz] = want.dims3();
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = want
                    .affine()
                    .vox_to_mm(DVec3::new(i as f64, j as f64, k as f64));
                let q = got.affine().mm_to_vox(p).unwrap();
                let r = q.round();
                assert!(
                    (q - r).abs().max_element() < 1e-3,
                    "{q} is not a voxel centre"
                );
                let v = got.get([r.x as usize, r.y as usize, r.z as usize]).unwrap();
                assert_eq!(v, want.get([i, j, k]).unwrap(), "voxel {i},{j},{k}");
            }
        }
    }
}

fn only_series(scan: &DicomScan, description: &str) -> Volume<f32> {
    scan.series
        .iter()
        .find(|s| s.description == description)
        .unwrap_or_else(|| panic!("no series {description}: {:?}", scan.problems))
        .volume
        .clone()
}

#[test]
fn an_oblique_series_round_trips_against_its_nifti() {
    let dir = tempfile::tempdir().unwrap();
    for mirrored in [false, true] {
        let affine = oblique(mirrored);
        let stored = phantom_stored(&affine);
        let nifti = dir.path().join(format!("t1_{mirrored}.nii.gz"));
        write_volume(&nifti, &modality(&stored)).unwrap();
        let from_nifti = read_volume(&nifti).unwrap().to_f32();
        let series_dir = dir.path().join(format!("dicom_{mirrored}"));
        let files = write_series(
            &series_dir,
            &format!("1.2.3.{}", u8::from(mirrored)),
            "t1_mprage",
            3,
            &stored,
            &affine,
        );
        let scan = scan_dir(&series_dir).unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.files_seen, files.len());
        assert_eq!(scan.series.len(), 1);
        let s = &scan.series[0];
        assert_eq!(
            (s.description.as_str(), s.series_number, s.modality.as_str()),
            ("t1_mprage", Some(3), "MR")
        );
        assert_eq!(s.volume.dims3(), from_nifti.dims3());
        if mirrored {
            // Slices sort along the normal, so the grid runs the other way: same world.
            assert!(s.volume.affine().max_abs_diff(from_nifti.affine()) > 1.0);
        } else {
            assert!(
                s.volume.affine().max_abs_diff(from_nifti.affine()) < 1e-4,
                "{:?} vs {:?}",
                s.volume.affine(),
                from_nifti.affine()
            );
            assert_eq!(s.volume.data(), from_nifti.data());
        }
        assert_same_in_world(&from_nifti, &s.volume);
    }
}

#[test]
fn real_dicom_files_import_in_four_transfer_syntaxes() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let dir = tempfile::tempdir().unwrap();
    let mut volumes = Vec::new();
    for name in [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
    ] {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(data.join(name), d.join(name)).unwrap();
        let scan = scan_dir(&d).unwrap();
        assert!(scan.problems.is_empty(), "{name}: {:?}", scan.problems);
        volumes.push(scan.series[0].volume.clone());
    }
    // Reference values read with pydicom: 64 × 64, spacing 0.3125 mm, axial, position
    // (-83.9063, -91.2, 6.6406) LPS, sum 2125338, pixel (row 10, column 20) = 316.
    let v = &volumes[0];
    assert_eq!(v.dims(), [64, 64, 1, 1]);
    let sum: f64 = v.data().iter().map(|x| f64::from(*x)).sum();
    assert_eq!(sum, 2_125_338.0);
    assert_eq!(v.get([0, 0, 0]), Some(905.0));
    assert_eq!(v.get([20, 10, 0]), Some(316.0));
    assert_eq!(v.get([10, 20, 0]), Some(228.0));
    let want = Affine::from_linear_translation(
        DMat3::from_diagonal(DVec3::new(-0.3125, -0.3125, 0.8)),
        DVec3::new(83.9063, 91.2, 6.6406),
    );
    assert!(v.affine().max_abs_diff(&want) < 1e-4, "{:?}", v.affine());
    for other in &volumes[1..] {
        assert_eq!(other.data(), v.data());
        assert_eq!(other.affine(), v.affine());
    }
}

#[test]
fn bad_files_and_series_are_named_and_the_rest_imports() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("mixed");
    std::fs::create_dir(&d).unwrap();
    // A good series.
    let affine = oblique(false);
    let stored = phantom_stored(&affine);
    write_series(&d.join("good"), "1.2.9", "flair", 5, &stored, &affine);
    let spec = |uid: &'static str, instance: i64, z: f64| SliceSpec {
        uid,
        description: uid,
        number: 9,
        instance,
        rows: 4,
        columns: 4,
        spacing: [1.0, 1.0],
        orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        position: [0.0, 0.0, z],
        stored: vec![7; 16],
        skip_position: false,
    };
    // Uneven slice gaps (a slice missing): 0, 1, 2, 4 mm.
    for (k, z) in [0.0, 1.0, 2.0, 4.0].iter().enumerate() {
        write_slice(&d.join(format!("gap{k}")), &spec("gaps", k as i64, *z));
    }
    // Two orientations in one series.
    write_slice(&d.join("ori0"), &spec("tilted", 1, 0.0));
    write_slice(
        &d.join("ori1"),
        &SliceSpec {
            orientation: [1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            ..spec("tilted", 2, 1.0)
        },
    );
    // A file without Image Position (Patient).
    write_slice(
        &d.join("nopos.dcm"),
        &SliceSpec {
            skip_position: true,
            ..spec("nopos", 1, 0.0)
        },
    );
    // Rows × Columns larger than the pixel data.
    write_slice(
        &d.join("short.dcm"),
        &SliceSpec {
            rows: 64,
            columns: 64,
            ..spec("short", 1, 0.0)
        },
    );
    // Not DICOM; cut short; a length field claiming 2 GB; a syntax with no decoder here;
    // pydicom's truncated MR.
    std::fs::write(d.join("notes.txt"), "scanned on the 3T, protocol B\n").unwrap();
    let good_file = std::fs::read_dir(d.join("good"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&good_file).unwrap();
    std::fs::write(d.join("cut.dcm"), &bytes[..bytes.len() / 3]).unwrap();
    let mut claims = bytes.clone();
    let at = claims
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    claims[at + 8..at + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    std::fs::write(d.join("claims.dcm"), &claims).unwrap();
    std::fs::copy(
        data.join("MR_small_jpeg_ls_lossless.dcm"),
        d.join("jpegls.dcm"),
    )
    .unwrap();
    std::fs::copy(data.join("MR_truncated.dcm"), d.join("truncated.dcm")).unwrap();

    let scan = scan_dir(&d).unwrap();
    let report: Vec<String> = scan.problems.iter().map(|p| p.to_string()).collect();
    for line in &report {
        println!("problem: {line}");
    }
    let named = |needle: &str, says: &str| {
        assert!(
            report
                .iter()
                .any(|l| l.contains(needle) && l.contains(says)),
            "no problem naming {needle} with {says:?}: {report:#?}"
        );
    };
    named("notes.txt", "not a readable DICOM file");
    named("cut.dcm", "");
    named("claims.dcm", "");
    named("jpegls.dcm", "JPEG-LS");
    named("truncated.dcm", "declares 8192 bytes; only 8130 remain");
    named("nopos.dcm", "missing Image Position (Patient) (0020,0032)");
    named("short.dcm", "Pixel Data holds 32 bytes");
    named("series \"gaps\"", "inconsistent slice spacing");
    named("series \"tilted\"", "mixed orientations");
    // The good series still imports, whole and right.
    assert_eq!(
        scan.series.len(),
        1,
        "{:?}",
        scan.series
            .iter()
            .map(|s| &s.description)
            .collect::<Vec<_>>()
    );
    assert_same_in_world(&modality(&stored), &only_series(&scan, "flair"));
}

#[test]
fn series_become_named_sequences_of_a_case() {
    let dir = tempfile::tempdir().unwrap();
    let dicom = dir.path().join("dicom");
    let affine = oblique(false);
    let stored = phantom_stored(&affine);
    write_series(&dicom.join("a"), "1.2.10", "t1_mprage", 2, &stored, &affine);
    write_series(&dicom.join("b"), "1.2.11", "FLAIR", 4, &stored, &affine);
    let scan = scan_dir(&dicom).unwrap();
    assert_eq!(scan.series.len(), 2);
    let root = dir.path().join("project");
    let mut project = Project::create(&root, Manifest::new("imported")).unwrap();
    let chosen: Vec<_> = scan.series.iter().collect();
    let names = dicom_import::add_series_to_case(&mut project, "subject01", &chosen).unwrap();
    assert_eq!(
        names,
        vec![
            SequenceName::from("t1_mprage".to_string()),
            SequenceName::Flair
        ]
    );
    // Importing again adds numbered names and new files, never overwriting.
    let again = dicom_import::add_series_to_case(&mut project, "subject01", &chosen[..1]).unwrap();
    assert_eq!(again[0].as_str(), "t1_mprage 2");
    let reopened = Project::open(&root).unwrap();
    let case = reopened.manifest.case("subject01").unwrap();
    assert_eq!(case.sequences.len(), 3);
    assert_eq!(case.form, mriloop::project::InputForm::Volume3d);
    let paths: std::collections::HashSet<_> = case.sequences.iter().map(|s| &s.path).collect();
    assert_eq!(paths.len(), 3);
    let flair = reopened
        .load_sequence(case, &SequenceName::Flair)
        .unwrap()
        .to_f32();
    assert_same_in_world(&modality(&stored), &flair);
    assert!(dicom_import::add_series_to_case(&mut project, "../x", &chosen).is_err());
}

#[test]
fn a_series_with_several_images_per_position_is_a_time_series() {
    let dir = tempfile::tempdir().unwrap();
    let (nx, ny, nz, nt) = (4usize, 3usize, 5usize, 3usize);
    for t in 0..nt {
        for k in 0..nz {
            let stored: Vec<i16> = (0..nx * ny)
                .map(|p| (100 * t + 10 * k + p) as i16)
                .collect();
            write_slice(
                &dir.path().join(format!("f{}", (t * 31 + k * 17) % 97)),
                &SliceSpec {
                    uid: "1.2.77",
                    description: "rest bold",
                    number: 7,
                    instance: (t * nz + k + 1) as i64,
                    rows: ny,
                    columns: nx,
                    spacing: [3.0, 3.0],
                    orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    position: [0.0, 0.0, 3.5 * k as f64],
                    stored,
                    skip_position: false,
                },
            );
        }
    }
    let scan = scan_dir(dir.path()).unwrap();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let v = &scan.series[0].volume;
    assert_eq!(v.dims(), [nx, ny, nz, nt]);
    assert!((v.spacing_mm()[2] - 3.5).abs() < 1e-9);
    for t in 0..nt {
        for k in 0..nz {
            let at = v.linear_index(1, 2, k, t);
            let stored = (100 * t + 10 * k + 2 * nx + 1) as f64;
            assert_eq!(f64::from(v.data()[at]), stored * SLOPE + INTERCEPT);
        }
    }
    let form = dicom_import::form_of(&[&scan.series[0]]);
    assert_eq!(form, mriloop::project::InputForm::TimeSeries4d);
}

#[test]
fn file_import_dicom_adds_a_case_to_the_open_project_and_opens_it() {
    use mriloop::app::dicom::DicomCommand;
    use mriloop::app::Command;
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        cases: 2,
        seed: 2,
        grid: 16,
        ..Default::default()
    };
    let p = mriloop::phantom::generate_project(&dir.path().join("p"), &cfg, |_, _| {}).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let dicom = dir.path().join("exam 42");
    std::fs::create_dir(&dicom).unwrap();
    for f in ["MR_small.dcm", "MR_truncated.dcm"] {
        std::fs::copy(data.join(f), dicom.join(f)).unwrap();
    }
    let mut h = window::open_project(p.root(), [1280.0, 800.0]);
    h.state_mut()
        .push(Command::Dicom(DicomCommand::Scan(dicom.clone())));
    assert!(window::step_until(&mut h, |a| a.dicom().scan.is_some()));
    h.step();
    // The dialog lists the series and says what was not imported.
    h.get_by_label("Import DICOM");
    h.get_by_label("2 files: 1 series, 1 not imported");
    assert_eq!(h.state().dicom().case_id, "exam_42");
    h.get_by_label("Import").click();
    let opened = window::step_until(&mut h, |a| {
        a.open_case().is_some_and(|o| o.case_id == "exam_42") && !a.is_loading()
    });
    assert!(
        opened,
        "{:?} {:?}",
        h.state().error(),
        h.state().dicom().status
    );
    let app = h.state();
    let case = app.project().unwrap().manifest.case("exam_42").unwrap();
    assert_eq!(case.form, mriloop::project::InputForm::Slice2d);
    // Saved with the manifest: the project on disk has the case and its file.
    assert!(window::step_until(&mut h, |a| Project::open(
        a.project().unwrap().root()
    )
    .is_ok_and(|q| q.manifest.case("exam_42").is_some())));
    let open = h.state().open_case().unwrap();
    let sum: f64 = open.layers[0]
        .volume
        .data()
        .iter()
        .map(|v| f64::from(*v))
        .sum();
    assert_eq!(sum, 2_125_338.0);
    assert!(matches!(
        open.viewer.layout,
        mriloop::app::Layout::Single(_)
    ));
}

/// The enhanced multi-frame file maker (pydicom; see its header).
const ENHANCED: &str = include_str!("data/make_enhanced.py");

/// `dcm2niix` run on folder `dicom`, writing `name.nii` into `out`: the volume it wrote.
fn dcm2niix(dicom: &Path, out: &Path, name: &str) -> Volume<f32> {
    std::fs::create_dir_all(out).unwrap();
    let run = std::process::Command::new("dcm2niix")
        .args(["-z", "n", "-b", "n", "-f", name, "-o"])
        .arg(out)
        .arg(dicom)
        .output()
        .expect("dcm2niix runs (.ci/run installs Debian's dcm2niix)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    read_volume(&out.join(format!("{name}.nii")))
        .unwrap()
        .to_f32()
}

/// Every time point of `got` holds `want`'s voxels at the same world positions.
fn assert_frames_same_in_world(want: &Volume<f32>, got: &Volume<f32>) {
    assert_eq!(want.dims(), got.dims());
    let frame = |v: &Volume<f32>, t: usize| {
        let n = v.frame_len();
        let [nx, ny, nz, _] = v.dims();
        Volume::new(
            [nx, ny, nz, 1],
            *v.affine(),
            v.data()[t * n..(t + 1) * n].to_vec(),
        )
        .unwrap()
    };
    for t in 0..want.dims()[3] {
        assert_same_in_world(&frame(want, t), &frame(got, t));
    }
}

#[test]
fn a_siemens_mosaic_diffusion_series_imports_as_dcm2niix_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    // Real Siemens mosaic headers (nibabel ships two diffusion files, b = 0 and 1000, whose
    // pixels are zeroed); pydicom fills their pixels with known values.
    let script = r#"
import sys, os, gzip, io, shutil, numpy as np, pydicom, nibabel
src = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data")
ours, theirs = sys.argv[1], sys.argv[2]
os.makedirs(ours); os.makedirs(theirs)
for i, b in enumerate(["0", "1000"]):
    d = pydicom.dcmread(io.BytesIO(gzip.open(f"{src}/siemens_dwi_{b}.dcm.gz").read()))
    n = d.Rows * d.Columns
    d.PixelData = ((np.arange(n) * 7 + i * 13) % 4000).astype("<u2").tobytes()
    d.save_as(f"{ours}/dwi_{b}.dcm")
    shutil.copy(f"{ours}/dwi_{b}.dcm", f"{theirs}/dwi_{b}.dcm")
# The b = 0 image sent twice.
shutil.copy(f"{ours}/dwi_0.dcm", f"{ours}/dwi_0_again.dcm")
"#;
    python(script, &[&ours, &theirs]);
    let reference = dcm2niix(&theirs, &dir.path().join("nii"), "dwi");
    assert_eq!(reference.dims(), [128, 128, 48, 2]);
    let scan = scan_dir(&ours).unwrap();
    assert_eq!(scan.series.len(), 1, "{:?}", scan.problems);
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    assert!(
        scan.problems[0].message.contains("duplicate"),
        "{}",
        scan.problems[0]
    );
    // Same voxels at the same places (to a thousandth of a voxel), both volumes.
    assert_frames_same_in_world(&reference, &scan.series[0].volume);
}

#[test]
fn an_enhanced_multi_frame_series_imports_as_dcm2niix_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir(&ours).unwrap();
    std::fs::create_dir(&theirs).unwrap();
    // pydicom builds an enhanced MR file: an oblique 20 × 24 × 6 stack, 3 time points, the
    // slices stored out of order, rescale in the shared functional groups.
    let file = ours.join("enh.dcm");
    python(ENHANCED, &[&file, Path::new("3,0,5,1,4,2"), Path::new("3")]);
    std::fs::copy(&file, theirs.join("enh.dcm")).unwrap();
    let reference = dcm2niix(&theirs, &dir.path().join("nii"), "enh");
    let scan = scan_dir(&ours).unwrap();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let got = &scan.series[0].volume;
    assert_eq!(got.dims(), [20, 24, 6, 3]);
    assert_frames_same_in_world(&reference, got);
    // Slice z of time point t was filled with (3·pixel + 100 z + 1000 t) mod 3000, rescaled
    // by 0.5 and −10: the first pixel of each slice says where it went.
    let first = |z: usize, t: usize| got.data()[t * got.frame_len() + z * 20 * 24];
    assert_eq!(first(4, 2), 2400.0 * 0.5 - 10.0);
}

/// A `.bval` / `.bvec` pair beside `nifti`: the b-values, and each volume's gradient turned
/// back into world space (RAS) through the NIfTI's affine, undoing FSL's x flip for a positive
/// determinant — so two files on different voxel grids compare.
fn fsl_gradients_in_world(nifti: &Path) -> (Vec<f64>, Vec<DVec3>) {
    let affine = *read_volume(nifti).unwrap().affine();
    let name = nifti.file_name().unwrap().to_string_lossy().to_string();
    let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
    let numbers = |ext: &str| -> Vec<Vec<f64>> {
        let text = std::fs::read_to_string(nifti.with_file_name(format!("{stem}.{ext}")))
            .unwrap_or_else(|e| panic!("{stem}.{ext} beside {}: {e}", nifti.display()));
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let (bval, bvec) = (numbers("bval"), numbers("bvec"));
    assert_eq!((bval.len(), bvec.len()), (1, 3));
    let linear = affine.linear();
    let axes = [linear.x_axis, linear.y_axis, linear.z_axis].map(|a| a.normalize());
    let sign = if linear.determinant() > 0.0 {
        -1.0
    } else {
        1.0
    };
    let world = (0..bval[0].len())
        .map(|t| sign * bvec[0][t] * axes[0] + bvec[1][t] * axes[1] + bvec[2][t] * axes[2])
        .collect();
    (bval[0].clone(), world)
}

/// dcm2niix and mriloop wrote the same b-values and, in world space, the same directions.
fn assert_same_gradients(theirs: &Path, ours: &Path) {
    let (their_b, their_g) = fsl_gradients_in_world(theirs);
    let (our_b, our_g) = fsl_gradients_in_world(ours);
    assert_eq!(their_b, our_b);
    for (a, b) in their_g.iter().zip(&our_g) {
        assert!((*a - *b).length() < 1e-4, "dcm2niix {a}, mriloop {b}");
    }
}

#[test]
fn diffusion_series_get_bval_and_bvec_files_as_dcm2niix_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("mosaic"), dir.path().join("theirs"));
    // Siemens: nibabel's real b = 0 and b = 1000 mosaics (CSA B_value and
    // DiffusionGradientDirection), the b = 1000 one again as a third volume (dcm2niix writes
    // gradients for three volumes or more).
    let script = r#"
import sys, os, gzip, io, numpy as np, pydicom, nibabel
from pydicom.uid import generate_uid
src = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data")
out = sys.argv[1]; os.makedirs(out)
for i, b in enumerate(["0", "1000", "1000"]):
    d = pydicom.dcmread(io.BytesIO(gzip.open(f"{src}/siemens_dwi_{b}.dcm.gz").read()))
    d.PixelData = ((np.arange(d.Rows * d.Columns) * 7 + i * 13) % 4000).astype("<u2").tobytes()
    d.SOPInstanceUID = generate_uid(); d.InstanceNumber = i + 1; d.AcquisitionNumber = i + 1
    d.save_as(f"{out}/dwi_{i}.dcm")
"#;
    python(script, &[&ours]);
    // Enhanced: pydicom's file with b = 0 then three directions in MR Diffusion Sequences.
    let enhanced = dir.path().join("enhanced");
    std::fs::create_dir(&enhanced).unwrap();
    let args = ["3,0,5,1,4,2", "4", "--diffusion"].map(Path::new);
    python(
        ENHANCED,
        &[&enhanced.join("e.dcm"), args[0], args[1], args[2]],
    );
    for (case, volumes) in [(&ours, 3), (&enhanced, 4)] {
        dcm2niix(case, &theirs, "ref");
        let scan = scan_dir(case).unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let series = &scan.series[0];
        assert_eq!(series.diffusion.len(), volumes);
        let out = dir.path().join("ours");
        let written = dicom_import::write_series_files(&out, &[series]).unwrap();
        assert_eq!(
            written[0].len(),
            3,
            "the NIfTI, .bval and .bvec: {written:?}"
        );
        assert_same_gradients(&theirs.join("ref.nii"), &written[0][0]);
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&theirs).unwrap();
    }
    // A series without diffusion encoding gets no gradient files.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    python(ENHANCED, &[&plain.join("e.dcm")]);
    let scan = scan_dir(&plain).unwrap();
    assert!(scan.series[0].diffusion.is_empty());
    let written = dicom_import::write_series_files(&dir.path().join("o"), &[&scan.series[0]]);
    assert_eq!(written.unwrap()[0].len(), 1);
}

#[test]
fn an_enhanced_file_claiming_more_than_it_holds_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claims.dcm");
    // A real enhanced header, then told it holds 10 000 frames of 4096²: a few kB on disk.
    let script = ENHANCED.to_string()
        + r#"
import pydicom
d = pydicom.dcmread(out)
d.NumberOfFrames = 10000
d.Rows = 4096
d.Columns = 4096
d.PerFrameFunctionalGroupsSequence = (list(d.PerFrameFunctionalGroupsSequence) * 1667)[:10000]
d.save_as(out, enforce_file_format=True)
"#;
    python(&script, &[&file, Path::new("0,1,2,3,4,5"), Path::new("1")]);
    assert!(std::fs::metadata(&file).unwrap().len() < 4 << 20);
    let scan = scan_dir(dir.path()).unwrap();
    assert!(scan.series.is_empty());
    let problem = scan.problems[0].to_string();
    assert!(
        problem.contains("claims.dcm") && problem.contains("bytes"),
        "{problem}"
    );
}

#[test]
fn a_mosaic_whose_csa_header_lies_or_is_gone_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // nibabel's real b = 1000 mosaic (48 tiles of 128² in a 9 × 9 grid), three ways broken:
    // claiming 99 images (more tiles than the grid holds), its CSA header cut to 40 bytes, and
    // its CSA header claiming 900 tags in those bytes.
    let script = r#"
import sys, os, gzip, io, pydicom, nibabel
from pydicom.uid import generate_uid
src = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data")
out = sys.argv[1]
def fresh():
    d = pydicom.dcmread(io.BytesIO(gzip.open(f"{src}/siemens_dwi_1000.dcm.gz").read()))
    d.SeriesInstanceUID = generate_uid(); d.SOPInstanceUID = generate_uid()
    return d
d = fresh(); csa = bytearray(d[0x0029, 0x1010].value)
at = csa.find(b"NumberOfImagesInMosaic"); at = csa.find(b"48 ", at)
csa[at:at + 2] = b"99"; d[0x0029, 0x1010].value = bytes(csa); d.save_as(f"{out}/claims_99.dcm")
d = fresh(); d[0x0029, 0x1010].value = d[0x0029, 0x1010].value[:40]; d.save_as(f"{out}/cut_csa.dcm")
d = fresh(); csa = bytearray(d[0x0029, 0x1010].value[:40]); csa[8:12] = (900).to_bytes(4, "little")
d[0x0029, 0x1010].value = bytes(csa); d.save_as(f"{out}/claims_900_tags.dcm")
"#;
    python(script, &[dir.path()]);
    let scan = scan_dir(dir.path()).unwrap();
    assert!(scan.series.is_empty());
    let problems: Vec<String> = scan.problems.iter().map(|p| p.to_string()).collect();
    let about = |file: &str| {
        problems
            .iter()
            .find(|p| p.contains(file))
            .unwrap_or_else(|| panic!("{file} not named: {problems:?}"))
            .clone()
    };
    assert!(about("claims_99.dcm").contains("99"), "{problems:?}");
    for file in ["cut_csa.dcm", "claims_900_tags.dcm"] {
        assert!(about(file).contains("CSA"), "{problems:?}");
    }
}

#[test]
fn a_file_declaring_a_huge_element_is_refused_before_anything_is_allocated() {
    // MR_small with its Pixel Data declaring 1.5 GB, cut to 100 bytes after the header: the
    // fuzzer's memory class (the parser used to reserve the declared length first).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let mut bytes = std::fs::read(data.join("MR_small.dcm")).unwrap();
    let at = bytes
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    bytes[at + 8..at + 12].copy_from_slice(&1_546_661_424u32.to_le_bytes());
    bytes.truncate(at + 12 + 100);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("huge.dcm"), &bytes).unwrap();
    // Peak memory of the whole import, measured by GNU time (`.ci/run` installs it).
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb %M"])
        .arg(env!("CARGO_BIN_EXE_mriloop"))
        .arg("import-dicom")
        .arg(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("/usr/bin/time runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("huge.dcm: element (7FE0,0010) declares 1546661424 bytes; only 100 remain"),
        "{text}"
    );
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb "))
        .and_then(|v| v.trim().parse().ok())
        .expect("GNU time printed the peak RSS");
    println!("metric: huge_element_import_peak_rss_mb = {}", kb / 1024);
    assert!(kb < 150 * 1024, "peak RSS {kb} kB");
}

#[test]
fn headers_the_decoders_would_trust_are_checked_first_and_nothing_panics() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let dir = tempfile::tempdir().unwrap();
    let rle = std::fs::read(data.join("MR_small_RLE.dcm")).unwrap();
    // The RLE frame: after the Pixel Data tag, the empty offset table item, then the fragment.
    let pixel = rle
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    let items: Vec<usize> = (pixel..rle.len() - 4)
        .filter(|i| rle[*i..*i + 4] == [0xFE, 0xFF, 0x00, 0xE0])
        .collect();
    let frame = items[1] + 8;
    let frame_len =
        u32::from_le_bytes(rle[items[1] + 4..items[1] + 8].try_into().unwrap()) as usize;
    let variant = |name: &str, at: usize, value: u32| {
        let mut b = rle.clone();
        b[frame + at..frame + at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(dir.path().join(name), b).unwrap();
    };
    variant("rle_count.dcm", 0, 3);
    variant("rle_offset.dcm", 8, 0x7FFF_FFF0);
    variant("rle_short.dcm", 8, (frame_len - 2) as u32);
    // Bits Stored 64 in an uncompressed image.
    let mut plain = std::fs::read(data.join("MR_small.dcm")).unwrap();
    let at = plain
        .windows(8)
        .position(|w| w == [0x28, 0x00, 0x01, 0x01, b'U', b'S', 0x02, 0x00])
        .unwrap();
    plain[at + 8..at + 10].copy_from_slice(&64u16.to_le_bytes());
    std::fs::write(dir.path().join("bits64.dcm"), plain).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .arg("import-dicom")
        .arg(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    for (file, says) in [
        ("rle_count.dcm", "names 3 segments; this image needs 2"),
        ("rle_offset.dcm", "RLE segment 0 spans bytes 64..2147483632"),
        ("rle_short.dcm", "RLE segment 1 unpacks to"),
        ("bits64.dcm", "Bits Stored 64 with Bits Allocated 16"),
    ] {
        assert!(
            text.lines().any(|l| l.contains(file) && l.contains(says)),
            "{file}: {says:?} not in {text}"
        );
    }
}
