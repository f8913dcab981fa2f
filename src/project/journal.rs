//! The edit journal of a case: every committed `Edit` since the case's files were last saved,
//! appended and fsync'd, so a crash loses at most the stroke in progress. Replaying it over the
//! saved mask and record gives back the state at the crash.
//!
//! Format (little-endian): the magic `MRLJ1\n`, then records `[len u32][crc32 u32][payload]`.
//! A payload is an edit: tag 1 = mask step (`n u32`, then per delta the box `min[3] max[3]`
//! as u32 and the before and after runs, each `n u32` + `(count u32, value u8)*`), tag 2 =
//! record change (`field u8`: 1 class, 2 status, 3 note, 4 label table as JSON;
//! before and after as `len u32` + UTF-8).
//!
//! Invariants: a journal is untrusted input: lengths are checked against the bytes left before
//! anything is allocated; reading stops at the first torn or corrupt record (a crash mid-write)
//! and says so; a mask delta is replayed only if its box fits the mask and its runs fill it.

use crate::edit::{Edit, MaskDelta, RecordField, Rle, VoxelBox};
use crate::volume::Volume;
use std::path::{Path, PathBuf};

/// The magic at the start of a journal file.
pub const JOURNAL_MAGIC: &[u8; 6] = b"MRLJ1\n";

/// Largest journal read (bytes); a bigger one is refused rather than read into memory.
pub const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// The journal file of a case (`cases/<id>/edits.journal`, relative to the project).
pub fn journal_rel(case_id: &str) -> String {
    format!("{}/edits.journal", super::Project::case_dir_rel(case_id))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_runs(out: &mut Vec<u8>, rle: &Rle) {
    put_u32(out, rle.runs().len() as u32);
    for (n, v) in rle.runs() {
        put_u32(out, *n);
        out.push(*v);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn field_code(f: RecordField) -> u8 {
    match f {
        RecordField::ClassLabel => 1,
        RecordField::Status => 2,
        RecordField::Note => 3,
        RecordField::Labels => 4,
    }
}

/// The payload of one edit.
pub fn encode_edit(edit: &Edit) -> Vec<u8> {
    let mut out = Vec::new();
    match edit {
        Edit::Mask(deltas) => {
            out.push(1);
            put_u32(&mut out, deltas.len() as u32);
            for d in deltas {
                for v in d.region.min.iter().chain(&d.region.max) {
                    put_u32(&mut out, *v as u32);
                }
                put_runs(&mut out, &d.before);
                put_runs(&mut out, &d.after);
            }
        }
        Edit::Record {
            field,
            before,
            after,
        } => {
            out.push(2);
            out.push(field_code(*field));
            put_str(&mut out, before);
            put_str(&mut out, after);
        }
    }
    out
}

/// One framed record (length, CRC, payload) ready to append.
pub fn frame_record(edit: &Edit) -> Vec<u8> {
    let payload = encode_edit(edit);
    let mut crc = flate2::Crc::new();
    crc.update(&payload);
    let mut out = Vec::with_capacity(payload.len() + 8);
    put_u32(&mut out, payload.len() as u32);
    put_u32(&mut out, crc.sum());
    out.extend_from_slice(&payload);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("record ends early")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn runs(&mut self) -> Result<Rle, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(5) > self.left() {
            return Err(format!("claims {n} runs in {} bytes", self.left()));
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push((self.u32()?, self.u8()?));
        }
        Ok(Rle::from_runs(runs))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "text is not UTF-8".to_string())
    }
}

/// Decode one payload.
pub fn decode_edit(payload: &[u8]) -> Result<Edit, String> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let edit = match r.u8()? {
        1 => {
            let n = r.u32()? as usize;
            // Each delta needs at least 24 bytes of box and 8 of run counts.
            if n.saturating_mul(32) > r.left() {
                return Err(format!("claims {n} deltas in {} bytes", r.left()));
            }
            let mut deltas = Vec::with_capacity(n);
            for _ in 0..n {
                let mut b = [0usize; 6];
                for v in &mut b {
                    *v = r.u32()? as usize;
                }
                let region = VoxelBox {
                    min: [b[0], b[1], b[2]],
                    max: [b[3], b[4], b[5]],
                };
                let before = r.runs()?;
                let after = r.runs()?;
                if before.len() != region.len() || after.len() != region.len() {
                    return Err("a delta's values do not fill its box".into());
                }
                deltas.push(MaskDelta {
                    region,
                    before,
                    after,
                });
            }
            Edit::Mask(deltas)
        }
        2 => {
            let field = match r.u8()? {
                1 => RecordField::ClassLabel,
                2 => RecordField::Status,
                3 => RecordField::Note,
                4 => RecordField::Labels,
                f => return Err(format!("unknown record field {f}")),
            };
            Edit::Record {
                field,
                before: r.string()?,
                after: r.string()?,
            }
        }
        t => return Err(format!("unknown record tag {t}")),
    };
    if r.left() != 0 {
        return Err("trailing bytes in record".into());
    }
    Ok(edit)
}

/// What a journal holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JournalContents {
    /// The edits, in order.
    pub edits: Vec<Edit>,
    /// Why reading stopped before the end (a torn last record after a crash, or corruption).
    pub stopped: Option<String>,
}

/// Read a journal; a missing file is an empty journal.
pub fn read_journal(path: &Path) -> Result<JournalContents, super::ProjectError> {
    let io = |e| super::ProjectError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io(e)),
    };
    if len > MAX_JOURNAL_BYTES {
        return Err(super::ProjectError::Invalid {
            path: path.to_path_buf(),
            problem: format!("journal is {len} bytes, more than the {MAX_JOURNAL_BYTES} allowed"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok(parse_journal(&bytes))
}

/// Parse journal bytes (see the module's format).
pub fn parse_journal(bytes: &[u8]) -> JournalContents {
    let mut out = JournalContents::default();
    if bytes.is_empty() {
        return out;
    }
    if !bytes.starts_with(JOURNAL_MAGIC) {
        out.stopped = Some("not an mriloop journal (wrong magic)".into());
        return out;
    }
    let mut r = Reader {
        bytes,
        at: JOURNAL_MAGIC.len(),
    };
    while r.left() > 0 {
        let record = (|| -> Result<Edit, String> {
            let len = r.u32()? as usize;
            let crc = r.u32()?;
            let payload = r.take(len)?;
            let mut c = flate2::Crc::new();
            c.update(payload);
            if c.sum() != crc {
                return Err("checksum mismatch".into());
            }
            decode_edit(payload)
        })();
        match record {
            Ok(e) => out.edits.push(e),
            Err(e) => {
                out.stopped = Some(format!(
                    "record {} unreadable ({e}); later bytes ignored",
                    out.edits.len() + 1
                ));
                break;
            }
        }
    }
    out
}

/// Replay mask edits onto `mask` (those whose boxes do not fit are skipped and counted).
pub fn replay_mask(edits: &[Edit], mask: &mut Volume<u8>) -> usize {
    let dims = mask.dims3();
    let mut skipped = 0;
    for e in edits {
        if let Edit::Mask(deltas) = e {
            if deltas.iter().all(|d| d.region.fits(dims)) {
                e.apply_to_mask(mask, true);
            } else {
                skipped += 1;
            }
        }
    }
    skipped
}

/// Apply a record edit (forward: its `after`; backward: its `before`) to a case.
pub fn apply_record(case: &mut super::Case, edit: &Edit, forward: bool) {
    let Edit::Record {
        field,
        before,
        after,
    } = edit
    else {
        return;
    };
    let value = if forward { after } else { before };
    match field {
        RecordField::ClassLabel => {
            case.class_label = (!value.is_empty()).then(|| value.clone());
        }
        RecordField::Status => {
            if let Some(s) = super::ReviewStatus::from_name(value) {
                case.review = s;
            }
        }
        RecordField::Note => case.note = value.clone(),
        RecordField::Labels => {}
    }
}

/// The label table a label-table record edit sets going forward (its `after`) or backward (its
/// `before`); `None` for other edits or a value that is not a valid label table.
pub fn label_table_of(edit: &Edit, forward: bool) -> Option<super::LabelTable> {
    let Edit::Record {
        field: RecordField::Labels,
        before,
        after,
    } = edit
    else {
        return None;
    };
    let value = if forward { after } else { before };
    serde_json::from_str::<super::LabelTable>(value)
        .ok()
        .filter(|t| t.check().is_ok())
}

/// Apply a project-level record edit (the label table) forward or backward to a manifest;
/// a value that is not a valid label table is ignored.
pub fn apply_project_record(manifest: &mut super::Manifest, edit: &Edit, forward: bool) {
    if let Some(table) = label_table_of(edit, forward) {
        manifest.labels = table;
    }
}

/// The journal's absolute path for a case of a project.
pub fn journal_path(project: &super::Project, case_id: &str) -> PathBuf {
    project.resolve(&journal_rel(case_id))
}

/// Read the journal at `path` and replay its mask edits onto `mask`. Returns every edit read
/// (record edits are for the caller to apply to the case) and, if reading stopped early or edits
/// did not fit, why (naming the file).
pub fn replay_file(
    path: &Path,
    mask: &mut Volume<u8>,
) -> Result<(Vec<Edit>, Option<String>), super::ProjectError> {
    let contents = read_journal(path)?;
    let skipped = replay_mask(&contents.edits, mask);
    let problem = match (contents.stopped, skipped) {
        (Some(p), _) => Some(format!("{}: {p}", path.display())),
        (None, 0) => None,
        (None, n) => Some(format!(
            "{}: {n} edits did not fit the mask and were skipped",
            path.display()
        )),
    };
    Ok((contents.edits, problem))
}
