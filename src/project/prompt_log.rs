//! The prompt log of a case: every prompted interaction a user made on it — the prompts so far
//! on the object (world mm, so any model's grid can replay them), the label, the model that
//! answered, and the object before and after the answer on the answer's window — appended as
//! one JSON line each to `cases/<id>/prompts.jsonl` and fsync'd. Unlike the edit journal it is
//! never emptied by a save: it is what fine-tuning learns the user's prompting from (with the
//! case's saved mask as the truth, the voxels the user fixed after prompting weigh more).
//!
//! Invariants: the log is untrusted input: a file over `MAX_LOG_BYTES` is refused, a line that
//! does not parse or whose sizes disagree (runs not filling the window, a window over
//! `MAX_WINDOW_VOXELS`, too many prompt points, a non-finite or singular affine) is skipped and
//! reported with its line number; a torn last line (a crash mid-append) is skipped the same way.

use crate::volume::Affine;
use glam::DVec3;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The log's file name inside a case's folder.
pub const PROMPT_LOG_FILE: &str = "prompts.jsonl";
/// Largest log read (bytes).
pub const MAX_LOG_BYTES: u64 = 256 << 20;
/// Largest window a record may hold (voxels).
pub const MAX_WINDOW_VOXELS: usize = 1 << 24;
/// Most prompt points a record may hold (all its prompts together).
pub const MAX_RECORD_POINTS: usize = 100_000;

/// The prompt log of a case (relative to the project).
pub fn prompt_log_rel(case_id: &str) -> String {
    format!(
        "{}/{PROMPT_LOG_FILE}",
        super::Project::case_dir_rel(case_id)
    )
}

/// One prompt in world coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PromptMm {
    /// A point on the object (`include`) or off it.
    Point {
        /// Where (mm).
        pos_mm: [f64; 3],
        /// On the object.
        include: bool,
    },
    /// A box drawn on one slice, by two opposite corners (mm, on the slice).
    Box {
        /// One corner.
        a_mm: [f64; 3],
        /// The opposite corner.
        b_mm: [f64; 3],
    },
    /// A painted line on one slice: the brush's path (mm).
    Scribble {
        /// The path.
        path_mm: Vec<[f64; 3]>,
        /// On the object.
        include: bool,
    },
}

impl PromptMm {
    /// Whether the prompt marks the object (a box always does).
    pub fn include(&self) -> bool {
        match self {
            PromptMm::Point { include, .. } | PromptMm::Scribble { include, .. } => *include,
            PromptMm::Box { .. } => true,
        }
    }

    /// Its points (mm).
    pub fn points_mm(&self) -> Vec<DVec3> {
        match self {
            PromptMm::Point { pos_mm, .. } => vec![DVec3::from_array(*pos_mm)],
            PromptMm::Box { a_mm, b_mm } => {
                vec![DVec3::from_array(*a_mm), DVec3::from_array(*b_mm)]
            }
            PromptMm::Scribble { path_mm, .. } => {
                path_mm.iter().map(|p| DVec3::from_array(*p)).collect()
            }
        }
    }
}

/// The grid a record's masks are on: a window of some grid (voxel→mm affine) of `dims` voxels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowGrid {
    /// Size (voxels).
    pub dims: [usize; 3],
    /// Voxel (of the window) to world mm.
    pub affine: Affine,
}

/// One prompted interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    /// When (UTC, ISO 8601).
    pub time: String,
    /// The model that answered (its checkpoint, as shown to the user).
    pub model: String,
    /// The label the prompts segment.
    pub label: u8,
    /// Every prompt so far on the object, oldest first (the last one is this interaction's).
    pub prompts: Vec<PromptMm>,
    /// The window the answer covers.
    pub window: WindowGrid,
    /// The object before the answer (the mask the network refined), run-length coded 0/1 over
    /// the window, i fastest: `(count, value)`.
    pub before: Vec<(u32, u8)>,
    /// The object the answer produced, coded the same way.
    pub after: Vec<(u32, u8)>,
}

/// Run-length code of a 0/1 mask.
pub fn encode_bits(bits: &[bool]) -> Vec<(u32, u8)> {
    let mut runs: Vec<(u32, u8)> = Vec::new();
    for b in bits {
        let v = u8::from(*b);
        match runs.last_mut() {
            Some((n, last)) if *last == v && *n < u32::MAX => *n += 1,
            _ => runs.push((1, v)),
        }
    }
    runs
}

/// The 0/1 mask of `runs`, when they cover exactly `len` voxels.
pub fn decode_bits(runs: &[(u32, u8)], len: usize) -> Option<Vec<bool>> {
    let total: u64 = runs.iter().map(|(n, _)| u64::from(*n)).sum();
    if total != len as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    for (n, v) in runs {
        out.extend(std::iter::repeat_n(*v != 0, *n as usize));
    }
    Some(out)
}

impl PromptRecord {
    /// What is wrong with the record, if anything (sizes, finiteness).
    pub fn problem(&self) -> Option<String> {
        let dims = self.window.dims;
        let len = dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .filter(|n| *n > 0 && *n <= MAX_WINDOW_VOXELS);
        let Some(len) = len else {
            return Some(format!("window {dims:?} is empty or too large"));
        };
        let covers =
            |runs: &[(u32, u8)]| runs.iter().map(|(n, _)| u64::from(*n)).sum::<u64>() == len as u64;
        if !covers(&self.before) || !covers(&self.after) {
            return Some(format!("the masks do not fill the window {dims:?}"));
        }
        let affine_ok =
            self.window.affine.is_finite() && self.window.affine.mm_to_vox(DVec3::ZERO).is_some();
        if !affine_ok {
            return Some("the window's affine is not finite and invertible".into());
        }
        let points: Vec<DVec3> = self.prompts.iter().flat_map(PromptMm::points_mm).collect();
        if self.prompts.is_empty() || points.len() > MAX_RECORD_POINTS {
            return Some(format!(
                "{} prompt points (1 to {MAX_RECORD_POINTS})",
                points.len()
            ));
        }
        if !points.iter().all(|p| p.is_finite()) {
            return Some("a prompt is not a finite position".into());
        }
        None
    }

    /// The record as one log line (JSON and a newline).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// What reading a log gave: the good records, and a line per skipped one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PromptLog {
    /// The records, in the order they were made.
    pub records: Vec<PromptRecord>,
    /// `file:line: problem` for each line skipped.
    pub skipped: Vec<String>,
}

/// Read the log at `path` (a missing file is an empty log).
pub fn read_prompt_log(path: &Path) -> Result<PromptLog, super::ProjectError> {
    let io = |source| super::ProjectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PromptLog::default()),
        Err(e) => return Err(io(e)),
    };
    if size > MAX_LOG_BYTES {
        return Err(super::ProjectError::Invalid {
            path: path.to_path_buf(),
            problem: format!("prompt log of {size} bytes (at most {MAX_LOG_BYTES} are read)"),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    let mut log = PromptLog::default();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let skip = |problem: String| format!("{}:{}: {problem}", path.display(), n + 1);
        match serde_json::from_slice::<PromptRecord>(line) {
            Ok(r) => match r.problem() {
                None => log.records.push(r),
                Some(p) => log.skipped.push(skip(p)),
            },
            Err(e) => log.skipped.push(skip(format!("not a prompt record: {e}"))),
        }
    }
    Ok(log)
}

/// Append `record` to the log at `path` and flush it to disk (creating the folder).
pub fn append_prompt_record(path: &Path, record: &PromptRecord) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: cannot write the prompt log: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    f.write_all(&record.to_line()).map_err(err)?;
    f.sync_data().map_err(err)
}

/// The prompt logs of a project's cases: `(case id, path)`.
pub fn prompt_logs(project: &super::Project) -> Vec<(String, PathBuf)> {
    project
        .manifest
        .cases
        .iter()
        .map(|c| (c.id.clone(), project.resolve(&prompt_log_rel(&c.id))))
        .filter(|(_, p)| p.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PromptRecord {
        PromptRecord {
            time: "2026-12-01T19:00:00Z".into(),
            model: "models/v2/best".into(),
            label: 3,
            prompts: vec![
                PromptMm::Point {
                    pos_mm: [1.0, 2.0, 3.0],
                    include: true,
                },
                PromptMm::Box {
                    a_mm: [0.0, 0.0, 3.0],
                    b_mm: [4.0, 5.0, 3.0],
                },
            ],
            window: WindowGrid {
                dims: [2, 2, 1],
                affine: Affine::from_spacing([1.0, 1.0, 2.0]),
            },
            before: encode_bits(&[false, false, true, false]),
            after: encode_bits(&[true, true, true, false]),
        }
    }

    #[test]
    fn records_round_trip_and_bad_lines_are_skipped_with_their_line() {
        let dir = std::env::temp_dir().join(format!("mriloop-plog-{}", std::process::id()));
        let path = dir.join("prompts.jsonl");
        let _ = std::fs::remove_file(&path);
        assert_eq!(read_prompt_log(&path).unwrap(), PromptLog::default());
        append_prompt_record(&path, &record()).unwrap();
        let mut bad = record();
        bad.after = encode_bits(&[true; 5]);
        append_prompt_record(&path, &bad).unwrap();
        append_prompt_record(&path, &record()).unwrap();
        // A torn last line, as a crash mid-append leaves it.
        let mut torn = record().to_line();
        torn.truncate(torn.len() / 2);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &torn).unwrap();
        let log = read_prompt_log(&path).unwrap();
        assert_eq!(log.records, vec![record(), record()]);
        assert_eq!(log.skipped.len(), 2, "{:?}", log.skipped);
        assert!(log.skipped[0].contains(":2: the masks do not fill"));
        assert!(log.skipped[1].contains(":4: not a prompt record"));
        assert_eq!(
            decode_bits(&log.records[0].after, 4),
            Some(vec![true, true, true, false])
        );
        assert_eq!(decode_bits(&log.records[0].after, 5), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_huge_claimed_window_is_refused_before_anything_is_allocated() {
        let mut r = record();
        r.window.dims = [1 << 20, 1 << 20, 1 << 20];
        r.before = vec![(u32::MAX, 0)];
        assert!(r.problem().unwrap().contains("too large"));
        r.window.dims = [2, 2, 1];
        r.window.affine = Affine::from_spacing([0.0, 1.0, 1.0]);
        r.before = encode_bits(&[false; 4]);
        assert!(r.problem().unwrap().contains("invertible"));
    }
}
