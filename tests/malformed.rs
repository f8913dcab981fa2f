//! The malformed-NIfTI corpus (`tests/data/malformed/`): every file gives an error that names the
//! file and the problem, never a panic, and reading it allocates little (nothing of what the
//! header merely claims). The corpus is generated here; `MRILOOP_WRITE_CORPUS=1 cargo test
//! --test malformed` rewrites the committed files, and a test checks they are current.

mod common;

use common::{gz, i16_data, H1, H2};
use mriloop::volume::{read_header, read_volume, VolumeError};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// Counts bytes allocated by the current thread and the peak since the last reset.
struct PeakAlloc;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = CURRENT.try_with(|c| {
            let now = c.get() + layout.size();
            c.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = CURRENT.try_with(|c| {
            let now = c.get().saturating_sub(layout.size()) + new_size;
            c.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Peak bytes allocated by this thread while running `f`, above what was live before.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.with(|c| c.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(|p| p.get());
    (r, peak.saturating_sub(base))
}

/// One malformed file: name, bytes, and the `NiftiProblem` variant its error must carry.
struct Bad {
    name: &'static str,
    bytes: Vec<u8>,
    problem: &'static str,
}

fn valid_i16(big: bool) -> (H1, Vec<u8>) {
    let h = H1::new([8, 8, 8], 4, 16);
    let mut b = h.bytes(big);
    b.extend(i16_data(512, big));
    (h, b)
}

fn with(h: &H1, big: bool, data_len: usize, edit: impl FnOnce(&mut H1)) -> Vec<u8> {
    let mut h = h.clone();
    edit(&mut h);
    let mut b = h.bytes(big);
    b.extend(i16_data(data_len, big));
    b
}

/// The corpus, generated deterministically.
fn corpus() -> Vec<Bad> {
    let (h, good) = valid_i16(false);
    let bad = |name, bytes, problem| Bad {
        name,
        bytes,
        problem,
    };
    let mut corrupt_gz = gz(&good);
    let mid = corrupt_gz.len() / 2;
    for b in &mut corrupt_gz[mid..mid + 16] {
        *b ^= 0xA5;
    }
    let gz_good = gz(&good);
    let huge_claim_gz = gz(&with(&h, false, 0, |h| {
        h.dim = [3, 1500, 1500, 1500, 1, 1, 1, 1];
        h.datatype = 16;
        h.bitpix = 32;
    }));
    let mut n2_huge = H2::new([4, 4, 4], 4, 16);
    n2_huge.dim = [3, 1 << 40, 1 << 40, 4, 1, 1, 1, 1];
    let n2 = H2::new([8, 8, 8], 4, 16);
    let mut n2_trunc = n2.bytes(false);
    n2_trunc.extend(i16_data(100, false));
    let mut n2_bad_magic = n2.bytes(true);
    n2_bad_magic[4..12].copy_from_slice(b"nope\0\0\0\0");
    n2_bad_magic.extend(i16_data(512, true));
    vec![
        bad("empty.nii", Vec::new(), "Empty"),
        bad(
            "not_nifti_text.nii",
            b"this is a text file, not an image\n".repeat(20),
            "NotNifti",
        ),
        bad(
            "sizeof_hdr_999.nii",
            with(&h, false, 512, |h| h.sizeof_hdr = 999),
            "NotNifti",
        ),
        bad(
            "wrong_magic.nii",
            with(&h, false, 512, |h| h.magic = *b"abc\0"),
            "BadMagic",
        ),
        bad(
            "wrong_magic_be.nii",
            with(&h, true, 512, |h| h.magic = *b"xyz\0"),
            "BadMagic",
        ),
        bad(
            "hdr_pair_magic.nii",
            with(&h, false, 512, |h| h.magic = *b"ni1\0"),
            "HeaderPair",
        ),
        bad(
            "truncated_header.nii",
            good[..200].to_vec(),
            "TruncatedHeader",
        ),
        bad(
            "truncated_header_3_bytes.nii",
            good[..3].to_vec(),
            "TruncatedHeader",
        ),
        bad(
            "truncated_data.nii",
            good[..352 + 300].to_vec(),
            "TruncatedData",
        ),
        bad(
            "truncated_data_be.nii",
            valid_i16(true).1[..352 + 301].to_vec(),
            "TruncatedData",
        ),
        bad(
            "huge_dims_30000.nii",
            with(&h, false, 8, |h| {
                h.dim = [3, 30000, 30000, 30000, 1, 1, 1, 1]
            }),
            "TooLarge",
        ),
        bad(
            "huge_dims_1500_f32.nii",
            with(&h, false, 8, |h| {
                h.dim = [3, 1500, 1500, 1500, 1, 1, 1, 1];
                h.datatype = 16;
                h.bitpix = 32;
            }),
            "TruncatedData",
        ),
        bad(
            "negative_dim.nii",
            with(&h, false, 512, |h| h.dim[2] = -5),
            "BadDim",
        ),
        bad(
            "negative_dim_be.nii",
            with(&h, true, 512, |h| h.dim[1] = -1),
            "BadDim",
        ),
        bad(
            "zero_dim.nii",
            with(&h, false, 512, |h| h.dim[3] = 0),
            "BadDim",
        ),
        bad(
            "dim0_zero.nii",
            with(&h, false, 512, |h| h.dim[0] = 0),
            "DimCountOutOfRange",
        ),
        bad(
            "dim0_eight.nii",
            with(&h, false, 512, |h| h.dim[0] = 8),
            "DimCountOutOfRange",
        ),
        bad(
            "dim0_negative_be.nii",
            with(&h, true, 512, |h| h.dim[0] = -3),
            "DimCountOutOfRange",
        ),
        bad(
            "five_d.nii",
            with(&h, false, 1024, |h| {
                h.dim[0] = 5;
                h.dim[5] = 2;
            }),
            "TooManyDims",
        ),
        bad(
            "unknown_datatype.nii",
            with(&h, false, 512, |h| h.datatype = 999),
            "UnsupportedDatatype",
        ),
        bad(
            "complex_datatype.nii",
            with(&h, false, 1024, |h| {
                h.datatype = 32;
                h.bitpix = 64;
            }),
            "UnsupportedDatatype",
        ),
        bad(
            "float32_bitpix_0.nii",
            with(&h, false, 1024, |h| {
                h.datatype = 16;
                h.bitpix = 0;
            }),
            "BitpixMismatch",
        ),
        bad(
            "vox_offset_past_eof.nii",
            with(&h, false, 512, |h| h.vox_offset = 1.0e6),
            "VoxOffsetPastEnd",
        ),
        bad(
            "vox_offset_1e20.nii",
            with(&h, false, 512, |h| h.vox_offset = 1.0e20),
            "BadVoxOffset",
        ),
        bad(
            "vox_offset_in_header.nii",
            with(&h, false, 512, |h| h.vox_offset = 100.0),
            "BadVoxOffset",
        ),
        bad(
            "vox_offset_nan.nii",
            with(&h, false, 512, |h| h.vox_offset = f32::NAN),
            "BadVoxOffset",
        ),
        bad(
            "scl_slope_nan.nii",
            with(&h, false, 512, |h| h.scl_slope = f32::NAN),
            "NonFiniteScaling",
        ),
        bad(
            "scl_inter_inf_be.nii",
            with(&h, true, 512, |h| h.scl_inter = f32::INFINITY),
            "NonFiniteScaling",
        ),
        bad(
            "pixdim_nan.nii",
            with(&h, false, 512, |h| h.pixdim[2] = f32::NAN),
            "BadSpacing",
        ),
        bad(
            "pixdim_zero_qform.nii",
            with(&h, false, 512, |h| {
                h.sform_code = 0;
                h.pixdim[3] = 0.0;
            }),
            "BadSpacing",
        ),
        bad(
            "sform_singular.nii",
            with(&h, false, 512, |h| h.srow = [[0.0; 4]; 3]),
            "BadAffine",
        ),
        bad(
            "sform_inf.nii",
            with(&h, false, 512, |h| h.srow[1][1] = f32::INFINITY),
            "BadAffine",
        ),
        bad("corrupt_gzip.nii.gz", corrupt_gz, "CorruptGzip"),
        bad(
            "truncated_gzip.nii.gz",
            gz_good[..gz_good.len() / 2].to_vec(),
            "CorruptGzip",
        ),
        bad(
            "gzip_magic_then_garbage.nii.gz",
            [&[0x1f, 0x8b][..], &[0x42; 300][..]].concat(),
            "CorruptGzip",
        ),
        bad("gzip_of_nothing.nii.gz", gz(&[]), "TruncatedHeader"),
        bad(
            "gzip_claims_13gb.nii.gz",
            huge_claim_gz,
            "ImplausibleCompression",
        ),
        bad(
            "gzip_truncated_data.nii.gz",
            gz(&good[..352 + 500]),
            "TruncatedData",
        ),
        bad("nifti2_truncated_data.nii", n2_trunc, "TruncatedData"),
        bad("nifti2_huge_dims.nii", n2_huge.bytes(false), "TooLarge"),
        bad("nifti2_wrong_magic_be.nii", n2_bad_magic, "BadMagic"),
    ]
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed")
}

#[test]
fn committed_corpus_is_current() {
    let dir = corpus_dir();
    let corpus = corpus();
    assert!(corpus.len() >= 25, "the corpus must hold at least 25 files");
    if std::env::var_os("MRILOOP_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for b in &corpus {
            std::fs::write(dir.join(b.name), &b.bytes).unwrap();
        }
    }
    for b in &corpus {
        let on_disk = std::fs::read(dir.join(b.name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with MRILOOP_WRITE_CORPUS=1 to write the corpus)",
                b.name
            )
        });
        assert_eq!(on_disk, b.bytes, "{} differs from its generator", b.name);
    }
}

#[test]
fn every_malformed_file_gives_a_named_error_without_big_allocations() {
    let dir = corpus_dir();
    let mut failures = Vec::new();
    for b in corpus() {
        let path = dir.join(b.name);
        // Read from a private copy so this test does not depend on the other one's timing.
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join(b.name);
        std::fs::write(&copy, &b.bytes).unwrap();
        let (result, peak) = peak_during(|| read_volume(&copy));
        let header_result = read_header(&copy);
        let err = match result {
            Ok(_) => {
                failures.push(format!("{}: read without error", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let message = err.to_string();
        if !message.contains(b.name) {
            failures.push(format!(
                "{}: message does not name the file: {message}",
                b.name
            ));
        }
        match &err {
            VolumeError::Nifti { problem, .. } => {
                let variant = format!("{problem:?}");
                if !variant.starts_with(b.problem) {
                    failures.push(format!("{}: expected {}, got {variant}", b.name, b.problem));
                }
            }
            other => failures.push(format!("{}: not a NIfTI problem: {other}", b.name)),
        }
        if peak > 4 << 20 {
            failures.push(format!(
                "{}: reading allocated {peak} bytes at peak",
                b.name
            ));
        }
        // Problems visible in the header alone must also fail a header-only read.
        let header_level = !matches!(b.problem, "TruncatedData" | "CorruptGzip");
        if header_level && header_result.is_ok() {
            failures.push(format!("{}: read_header accepted it", b.name));
        }
        println!("{:34} -> {message}", b.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
