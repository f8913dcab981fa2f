//! The built-in demo project: shipped in `assets/demo`, built into the binary, and copied to a
//! folder of the user's before it is opened, so corrections to the demo never touch the shipped
//! files.
//!
//! Invariant: a copy is complete before it is taken for a project (the manifest is written last).

use std::path::PathBuf;

/// The built-in demo project as shipped in `assets/demo` (read-only use: tests, reference).
pub fn demo_project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

/// The files of the demo folder, each with its bytes built into the binary.
macro_rules! demo_files {
    ($($rel:literal),* $(,)?) => {
        &[$(($rel, include_bytes!(concat!("../../assets/demo/", $rel)))),*]
    };
}

/// The demo project's files, built into the binary so it runs from anywhere: a Colin27-derived
/// subject (six sequences, reference, the automatic model's prediction), the automatic model
/// (v1, active) and the promptable model (v2), and the README with the sources' notice.
/// `docs/demo/make-demo.sh` rebuilds them.
const DEMO_FILES: &[(&str, &[u8])] = demo_files![
    "mriloop.json",
    "README.md",
    "cases/colin27_000/T1.nii.gz",
    "cases/colin27_000/T2.nii.gz",
    "cases/colin27_000/FLAIR.nii.gz",
    "cases/colin27_000/Gd-T1.nii.gz",
    "cases/colin27_000/DWI.nii.gz",
    "cases/colin27_000/ADC.nii.gz",
    "cases/colin27_000/reference.nii.gz",
    "cases/colin27_000/predicted.nii.gz",
    "cases/colin27_000/predicted_prob.nii.gz",
    "models/v1/fit.json",
    "models/v1/plan.json",
    "models/v1/last/config.json",
    "models/v1/last/model.bpk",
    "models/v2/fit.json",
    "models/v2/plan.json",
    "models/v2/best/config.json",
    "models/v2/best/model.bpk",
];

/// A writable copy of the demo project in `dir` (made from the built-in files if it is not
/// there yet), so corrections to the demo never touch the shipped files.
pub fn demo_project_copy(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    if dir.join(crate::project::MANIFEST_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    // Case files first, the manifest last: a half-made copy is never taken for a project.
    for (rel, bytes) in DEMO_FILES.iter().rev() {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::atomic::write_atomic(&path, bytes)?;
    }
    Ok(dir.to_path_buf())
}

/// The folder of mriloop's own data: `$XDG_DATA_HOME/mriloop`, else `~/.local/share/mriloop`,
/// else a folder in the temporary directory.
pub fn user_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mriloop")
}

/// Where the user's copy of the demo lives: `demo-colin27` in `user_data_dir()` (named by the
/// demo's content, so a copy of an earlier demo, with whatever the user did in it, stays as it
/// was beside the new one).
pub fn user_demo_dir() -> PathBuf {
    user_data_dir().join("demo-colin27")
}
