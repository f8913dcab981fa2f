//! A deterministic mutation fuzzer over mriloop's readers, run through the CLI in child
//! processes so that a crash, a signal, a hang or a memory blow-up is caught, not suffered:
//! NIfTI-1 and NIfTI-2 in both byte orders and gzip'd, DICOM (uncompressed, RLE, JPEG 2000, a
//! Siemens mosaic, enhanced multi-frame), MGZ, NRRD and a project manifest. Mutations: byte
//! flips, header fields set to extremes, truncation, junk appended, and the gzip'd seeds
//! mutated inside and re-compressed. Every input must end with an exit code (no signal) within
//! 10 s of CPU time, print no panic, and peak under `MAX_RSS_KB` (GNU time measures it; the seeds hold at
//! most 3 MB as float32). `MRILOOP_FUZZ=N` sets the number of inputs (default 600, about 30 s
//! here); a failing input is kept under the target dir's `fuzz-failures/` to join the corpus.

mod common;

use common::{gz, i16_data, H1, H2};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most memory one input may take (kB): the bound the README states — twice the volume
/// as float32 plus 100 MB — for the largest seed (the mosaic, 128 × 128 × 48: 3 MB as float32);
/// `real_sized_inputs_…` checks the same bound on a 25 MB volume.
const MAX_RSS_KB: u64 = 2 * 3 * 1024 + 100 * 1024 + DEBUG_CODE_KB;

/// The bound is the release build's (what `cargo run --release` gives users); the debug build
/// that `cargo test` runs maps ~2.3 × more code, which every process pays once: `info` on a small
/// file peaks at 47 MB in debug against 16 MB in release, `plan` at 130 MB against 90 MB.
const DEBUG_CODE_KB: u64 = if cfg!(debug_assertions) { 48 * 1024 } else { 0 };

/// How an input is read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reader {
    /// `mriloop info FILE` (NIfTI, MGZ, NRRD).
    Info,
    /// `mriloop import-dicom DIR` (the file alone in a folder).
    Dicom,
    /// `mriloop plan PROJECT` (the manifest of a small project).
    Manifest,
}

struct Seed {
    name: &'static str,
    ext: &'static str,
    reader: Reader,
    bytes: Vec<u8>,
    gzipped: bool,
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The seed files: valid inputs of every reader.
fn seeds(work: &Path) -> Vec<Seed> {
    let nifti = |h: Vec<u8>, big: bool| [h, i16_data(8 * 8 * 6, big)].concat();
    let n1 = nifti(H1::new([8, 8, 6], 4, 16).bytes(false), false);
    let n1_big = nifti(H1::new([8, 8, 6], 4, 16).bytes(true), true);
    let n2 = nifti(H2::new([8, 8, 6], 4, 16).bytes(false), false);
    let vol = mriloop::volume::Volume::new(
        [8, 8, 6, 1],
        mriloop::volume::Affine::from_spacing([0.9, 1.1, 2.5]),
        (0..384).map(|i| (i % 97) as i16).collect(),
    )
    .unwrap();
    let mgz = work.join("seed.mgz");
    let nrrd = work.join("seed.nrrd");
    mriloop::volume::write_volume(&mgz, &vol).unwrap();
    mriloop::volume::write_volume(&nrrd, &vol).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let dicom = |name: &str| std::fs::read(data.join("dicom-pydicom").join(name)).unwrap();
    let enhanced = work.join("enhanced.dcm");
    let made = Command::new("python3")
        .arg(data.join("make_enhanced.py"))
        .arg(&enhanced)
        .args(["3,0,5,1,4,2", "2", "--diffusion"])
        .status()
        .expect("python3 with pydicom (.ci/run installs it)");
    assert!(made.success());
    let mosaic = Command::new("python3")
        .args([
            "-c",
            "import nibabel, os; print(os.path.join(os.path.dirname(nibabel.__file__), 'nicom', 'tests', 'data', 'siemens_dwi_1000.dcm.gz'))",
        ])
        .output()
        .expect("python3 with nibabel");
    let mosaic = gunzip(&std::fs::read(String::from_utf8_lossy(&mosaic.stdout).trim()).unwrap());
    let project = work.join("project");
    mriloop::phantom::generate_project(
        &project,
        &mriloop::phantom::PhantomConfig {
            cases: 2,
            grid: 12,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let manifest = std::fs::read(project.join("mriloop.json")).unwrap();
    let seed = |name, ext, reader, bytes: Vec<u8>, gzipped| Seed {
        name,
        ext,
        reader,
        bytes,
        gzipped,
    };
    vec![
        seed("nifti1", "nii", Reader::Info, n1.clone(), false),
        seed("nifti1_big", "nii", Reader::Info, n1_big, false),
        seed("nifti2", "nii", Reader::Info, n2, false),
        seed("nifti1_gz", "nii.gz", Reader::Info, gz(&n1), true),
        seed(
            "mgz",
            "mgz",
            Reader::Info,
            std::fs::read(&mgz).unwrap(),
            true,
        ),
        seed(
            "nrrd",
            "nrrd",
            Reader::Info,
            std::fs::read(&nrrd).unwrap(),
            false,
        ),
        seed("dicom", "dcm", Reader::Dicom, dicom("MR_small.dcm"), false),
        seed(
            "dicom_rle",
            "dcm",
            Reader::Dicom,
            dicom("MR_small_RLE.dcm"),
            false,
        ),
        seed(
            "dicom_j2k",
            "dcm",
            Reader::Dicom,
            dicom("MR_small_jp2klossless.dcm"),
            false,
        ),
        seed(
            "dicom_enhanced",
            "dcm",
            Reader::Dicom,
            std::fs::read(&enhanced).unwrap(),
            false,
        ),
        seed("dicom_mosaic", "dcm", Reader::Dicom, mosaic, false),
        seed("manifest", "json", Reader::Manifest, manifest, false),
    ]
}

/// One mutation of `bytes`.
fn mutate(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let span = if rng.random_bool(0.7) {
                    b.len().min(600)
                } else {
                    b.len()
                };
                let i = rng.random_range(0..span.max(1));
                if let Some(v) = b.get_mut(i) {
                    *v ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            // A header field (2 or 4 bytes, aligned) set to an extreme.
            let width = if rng.random_bool(0.5) { 2 } else { 4 };
            let i = rng.random_range(0..b.len().min(600) / width) * width;
            let extremes: [u32; 5] = [0, u32::MAX, 0x7FFF_FFFF, 0x8000_0000, 0x0001_0000];
            let v = extremes[rng.random_range(0..extremes.len())].to_le_bytes();
            if i + width <= b.len() {
                b[i..i + width].copy_from_slice(&v[..width]);
            }
        }
        2 => b.truncate(rng.random_range(0..b.len().max(1))),
        3 => (0..rng.random_range(1..4096)).for_each(|_| b.push(rng.random())),
        _ => {
            let i = rng.random_range(0..b.len().max(1));
            let len = rng.random_range(1..64).min(b.len().saturating_sub(i));
            let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            b[i..i + len].copy_from_slice(&junk);
        }
    }
    b
}

/// Run one input through its reader; `Err` says what went wrong.
fn run(input: &Path, reader: Reader) -> Result<u64, String> {
    let args: Vec<&std::ffi::OsStr> = match reader {
        Reader::Info => vec!["info".as_ref(), input.as_os_str()],
        Reader::Dicom => vec![
            "import-dicom".as_ref(),
            input.parent().unwrap_or(input).as_os_str(),
        ],
        Reader::Manifest => vec!["plan".as_ref(), input.parent().unwrap_or(input).as_os_str()],
    };
    run_bounded(&args, MAX_RSS_KB)
}

/// Run `mriloop ARGS` under a limit of 10 s of CPU time (and 120 s of wall time, for a reader
/// that waits on nothing; a loaded machine slows the wall clock, not the CPU time a reader
/// uses): `Err` for a limit reached, a signal, a panic or a peak RSS over `max_kb`; else the
/// peak (kB).
fn run_bounded(args: &[&std::ffi::OsStr], max_kb: u64) -> Result<u64, String> {
    run_with_output(args, max_kb).map(|(kb, _)| kb)
}

/// `run_bounded`, also handing back what the command printed on stdout.
fn run_with_output(args: &[&std::ffi::OsStr], max_kb: u64) -> Result<(u64, String), String> {
    let exe = env!("CARGO_BIN_EXE_mriloop");
    let mut cmd = Command::new("prlimit");
    cmd.args([
        "--cpu=10:11",
        "timeout",
        "-s",
        "KILL",
        "120",
        "/usr/bin/time",
        "-f",
        "maxrss_kb %M",
        exe,
    ]);
    cmd.args(args);
    let out = cmd
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(137) || out.status.code() == Some(124) {
        return Err("timed out (120 s)".into());
    }
    if err.contains("terminated by signal 24") || err.contains("terminated by signal 9") {
        return Err(format!("used 10 s of CPU time: {err}"));
    }
    if err.contains("terminated by signal") {
        return Err(format!("killed by a signal: {err}"));
    }
    if err.contains("panicked") {
        return Err(format!("panicked: {err}"));
    }
    let kb: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no peak RSS from GNU time: {err}"))?;
    if kb > max_kb {
        return Err(format!("peak RSS {kb} kB over {max_kb} kB"));
    }
    Ok((kb, String::from_utf8_lossy(&out.stdout).to_string()))
}

/// Where input `k` of `seed` goes: its own folder (DICOM reads the folder, `plan` the project).
fn place(work: &Path, seed: &Seed, k: usize, bytes: &[u8]) -> PathBuf {
    let dir = work.join(format!("in{k}"));
    if seed.reader == Reader::Manifest {
        copy_project(&work.join("project"), &dir);
        let file = dir.join("mriloop.json");
        std::fs::write(&file, bytes).unwrap();
        return file;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.{}", seed.name, seed.ext));
    std::fs::write(&file, bytes).unwrap();
    file
}

fn copy_project(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn mutated_inputs_end_cleanly_in_bounded_memory_and_time() {
    let count: usize = std::env::var("MRILOOP_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let work = tempfile::tempdir().unwrap();
    let seeds = seeds(work.path());
    for seed in &seeds {
        let file = place(work.path(), seed, usize::MAX, &seed.bytes);
        run(&file, seed.reader).unwrap_or_else(|e| panic!("seed {}: {e}", seed.name));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(20_261_201);
    let mut failures = Vec::new();
    let mut peak_kb = 0;
    for k in 0..count {
        let seed = &seeds[k % seeds.len()];
        let bytes = if seed.gzipped && rng.random_bool(0.5) {
            gz(&mutate(&gunzip(&seed.bytes), &mut rng))
        } else {
            mutate(&seed.bytes, &mut rng)
        };
        let file = place(work.path(), seed, k, &bytes);
        let result = run(&file, seed.reader);
        if let Ok(kb) = result {
            peak_kb = peak_kb.max(kb);
        }
        if let Err(e) = result {
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&keep).unwrap();
            let kept = keep.join(format!("{k}_{}.{}", seed.name, seed.ext));
            std::fs::write(&kept, &bytes).unwrap();
            failures.push(format!(
                "input {k} ({}): {e} — kept as {}",
                seed.name,
                kept.display()
            ));
        }
        let _ = std::fs::remove_dir_all(work.path().join(format!("in{k}")));
    }
    println!("metric: fuzz_inputs = {count}");
    println!("metric: fuzz_failures = {}", failures.len());
    println!("metric: fuzz_peak_rss_mb = {:.1}", peak_kb as f64 / 1024.0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let work = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for file in walk(&dir) {
        let reader = match file.extension().and_then(|e| e.to_str()) {
            Some("dcm") => Reader::Dicom,
            Some("md") => continue,
            _ => Reader::Info,
        };
        let input = work
            .path()
            .join(format!("r{seen}"))
            .join(file.file_name().unwrap());
        std::fs::create_dir_all(input.parent().unwrap()).unwrap();
        std::fs::copy(&file, &input).unwrap();
        run(&input, reader).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("class_") {
            // The issue's failure classes: each refused by name, in the fuzzer's bounds.
            let dir = input.parent().unwrap().as_os_str();
            let (_, said) = run_with_output(&["import-dicom".as_ref(), dir], MAX_RSS_KB).unwrap();
            let refused = said
                .lines()
                .any(|l| l.contains("not imported") && l.contains(&name));
            assert!(refused, "{name}: {said}");
        }
        seen += 1;
    }
    assert!(seen >= 13, "{seen} regression files");
}

#[test]
fn real_sized_inputs_peak_under_the_stated_bound_per_format() {
    // One 256 × 256 × 96 int16 volume of noisy values (so gzip cannot shrink it away) in each
    // format, read as a user would: `info` (the whole volume) and a DICOM series of 96 files
    // imported and written as NIfTI. The bound the README states: twice the volume as float32
    // plus 100 MB.
    let dims = [256usize, 256, 96];
    let n: usize = dims.iter().product();
    let work = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let values: Vec<i16> = (0..n).map(|_| rng.random_range(0..4000)).collect();
    let affine = mriloop::volume::Affine::from_spacing([1.0, 1.0, 1.2]);
    let vol = mriloop::volume::Volume::new([256, 256, 96, 1], affine, values).unwrap();
    let bound_kb = (2 * n * 4 / 1024 + 100 * 1024) as u64 + DEBUG_CODE_KB;
    let dicom = work.path().join("dicom");
    common::python(
        r#"
import sys, os, numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
out = sys.argv[1]; os.makedirs(out); series = generate_uid()
rng = np.random.default_rng(3)
for k in range(96):
    ds = Dataset(); ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series; ds.Modality = "MR"; ds.SeriesDescription = "big"
    ds.InstanceNumber = k + 1; ds.Rows = ds.Columns = 256; ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"; ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15; ds.PixelRepresentation = 1; ds.PixelSpacing = [1.0, 1.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]; ds.ImagePositionPatient = [0, 0, 1.2 * k]
    ds.PixelData = rng.integers(0, 4000, size=256 * 256).astype("<i2").tobytes()
    ds.save_as(f"{out}/{k:03d}.dcm", enforce_file_format=True)
"#,
        &[&dicom],
    );
    let mut peaks = Vec::new();
    for ext in ["nii", "nii.gz", "mgz", "nrrd"] {
        let file = work.path().join(format!("big.{ext}"));
        mriloop::volume::write_volume(&file, &vol).unwrap();
        let kb = run_bounded(&["info".as_ref(), file.as_os_str()], bound_kb)
            .unwrap_or_else(|e| panic!("{ext}: {e}"));
        peaks.push(format!("{ext} {kb} kB"));
    }
    let out = work.path().join("nifti");
    let args = [
        "import-dicom".as_ref(),
        dicom.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    let kb = run_bounded(&args, bound_kb).unwrap_or_else(|e| panic!("DICOM: {e}"));
    assert!(out.join("big.nii.gz").exists());
    peaks.push(format!("DICOM import + write {kb} kB"));
    println!("peak RSS (bound {bound_kb} kB): {}", peaks.join(", "));
}
