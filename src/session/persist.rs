//! Saving the open case. A project case autosaves into its project (mask and manifest, then the
//! journal is emptied). Loose files are the user's: their edits are journaled and autosaved
//! into a working copy in a folder of the session's `loose_root` (`mask.nii.gz` +
//! `edits.journal`), and only an explicit Save (or Save As) writes the user's mask file —
//! through a symbolic link, atomically — after which the working copy is removed.
//!
//! Invariants: every write happens in the case's store worker, in the order the edits were
//! sent, so a save covers exactly the edits before it; the user's loose files are never written
//! by autosave or on close; a failed save keeps the journal and says which file failed.

use super::load::CaseSource;
use super::{Message, Session};
use crate::project::store::{SaveJob, StoreEvent};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The working copy's mask file, in its folder.
pub const WORKING_MASK: &str = "mask.nii.gz";
/// The working copy's journal, in its folder.
pub const WORKING_JOURNAL: &str = "edits.journal";

/// Loose files' save targets.
#[derive(Debug, Clone, PartialEq)]
pub struct LooseFiles {
    /// The mask file an explicit Save writes: the label file the user opened, else
    /// `<image>_mask.nii.gz` beside the first image (or the last Save As target).
    pub mask_path: PathBuf,
    /// The working copy's folder (autosaves and the journal).
    pub work_dir: PathBuf,
}

impl LooseFiles {
    /// The targets of loose files opened with a working copy.
    pub fn of(source: &CaseSource) -> Option<Self> {
        let work_dir = source.working_copy.clone()?;
        let mask_path = source
            .reference
            .clone()
            .or_else(|| source.sequences.first().map(|(_, p)| mask_beside(p)))?;
        Some(Self {
            mask_path,
            work_dir,
        })
    }
}

/// `<stem>_mask.nii.gz` beside an image file.
fn mask_beside(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = crate::volume::volume_stem(&name);
    image.with_file_name(format!("{stem}_mask.nii.gz"))
}

/// The working-copy folder name of a file: its stem and a hash of its absolute path (FNV-1a),
/// so each file has its own and finds it again.
pub fn working_copy_name(file: &Path) -> String {
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The key of working copies already on disk: keep it as it was (only `.nii` and `.gz`
    // stripped), or an earlier session's unsaved edits would not be found again.
    let stem: String = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{stem}-{hash:016x}")
}

impl Session {
    /// Autosave: a project case into its project; loose files into their working copy.
    pub(super) fn autosave(&mut self) {
        self.end_stroke();
        let project = self.project.clone();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if !open.edits.dirty {
            return;
        }
        let mask = open.reference.clone().filter(|_| open.edits.mask_dirty);
        let job = match (&open.edits.loose, project) {
            (Some(loose), _) => SaveJob {
                project: None,
                mask: mask.map(|m| (loose.work_dir.join(WORKING_MASK), m)),
                remove_after: Vec::new(),
                segment_names: Vec::new(),
            },
            (None, Some(mut project)) => {
                let mask = match (&open.edits.reference_rel, mask) {
                    (Some(rel), Some(m)) => {
                        if let Some(case) = open
                            .case_index
                            .and_then(|i| project.manifest.cases.get_mut(i))
                        {
                            case.reference_mask = Some(rel.clone());
                        }
                        Some((project.resolve(rel), m))
                    }
                    _ => None,
                };
                if let Some(p) = self.project.as_mut() {
                    p.manifest = project.manifest.clone();
                }
                open.edits.unsaved_for_user = false;
                SaveJob {
                    project: Some(project),
                    mask,
                    remove_after: Vec::new(),
                    segment_names: Vec::new(),
                }
            }
            (None, None) => return,
        };
        if let Some(store) = &open.edits.store {
            store.save(job);
        }
        open.edits.dirty = false;
        open.edits.mask_dirty = false;
        open.edits.last_save = Instant::now();
    }

    /// An explicit Save (to `save_as`, if given): a project case saves into the project; loose
    /// files write their mask into the user's file and drop the working copy.
    pub(super) fn save_for_user(&mut self, save_as: Option<PathBuf>) {
        self.end_stroke();
        let segment_names = self.segments_of_labels();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(loose) = open.edits.loose.as_mut() else {
            open.edits.dirty = true;
            return self.autosave();
        };
        if let Some(path) = save_as {
            loose.mask_path = path;
        }
        let (Some(mask), Some(store)) = (open.reference.clone(), &open.edits.store) else {
            return;
        };
        let target = loose.mask_path.clone();
        store.save(SaveJob {
            project: None,
            mask: Some((target.clone(), mask)),
            remove_after: vec![loose.work_dir.join(WORKING_MASK)],
            segment_names,
        });
        open.edits.dirty = false;
        open.edits.mask_dirty = false;
        open.edits.unsaved_for_user = false;
        open.edits.last_save = Instant::now();
        self.save_notice = Some(format!("saved {}", target.display()));
    }

    /// The labels as the user sees them (names, colours), as segments of a `.seg.nrrd`.
    fn segments_of_labels(&self) -> Vec<crate::volume::nrrd::Segment> {
        self.labels()
            .labels()
            .iter()
            .map(|l| crate::volume::nrrd::Segment {
                name: l.name.clone(),
                color: l.color,
                label_value: l.value,
                layer: 0,
            })
            .collect()
    }

    /// Read the stores' reports: failures reach the user and keep the edits marked unsaved.
    pub(super) fn poll_stores(&mut self) {
        let mut events = Vec::new();
        let stores = self
            .open
            .as_ref()
            .and_then(|o| o.edits.store.as_ref())
            .into_iter()
            .chain(self.closing_stores.iter());
        for store in stores {
            events.extend(store.poll());
        }
        self.closing_stores.retain(|s| !s.is_finished());
        for e in events {
            match e {
                StoreEvent::Saved => {
                    if let Some(n) = self.save_notice.take() {
                        self.message(Message::Notice(n));
                    }
                }
                StoreEvent::Failed(msg) => {
                    self.message(Message::Error(format!(
                        "Saving failed; your edits are kept in the journal.\n{msg}"
                    )));
                    if let Some(o) = self.open.as_mut() {
                        o.edits.dirty = true;
                        o.edits.mask_dirty = true;
                        o.edits.unsaved_for_user = true;
                    }
                }
            }
        }
    }

    /// Autosave once the user has paused (and not too often).
    pub(super) fn autosave_if_idle(&mut self) {
        let Some(open) = self.open.as_ref() else {
            return;
        };
        let e = &open.edits;
        if e.dirty
            && e.stroke.is_empty()
            && e.last_change.elapsed() >= super::AUTOSAVE_IDLE
            && e.last_save.elapsed() >= super::AUTOSAVE_EVERY
        {
            self.autosave();
        }
    }

    /// When the next autosave is due, if one is pending (the window wakes then).
    pub fn autosave_due_in(&self) -> Option<std::time::Duration> {
        let e = &self.open.as_ref()?.edits;
        if !e.dirty || !e.stroke.is_empty() {
            return None;
        }
        let idle = super::AUTOSAVE_IDLE.saturating_sub(e.last_change.elapsed());
        let every = super::AUTOSAVE_EVERY.saturating_sub(e.last_save.elapsed());
        Some(idle.max(every))
    }

    /// Autosave the open case and let its store finish in the background (a case switch); with
    /// `wait`, wait until it has (exit). The case stays open until it is replaced.
    pub(super) fn close_case(&mut self, wait: bool) {
        self.autosave();
        let Some(mut store) = self.open.as_mut().and_then(|o| o.edits.store.take()) else {
            return;
        };
        if wait {
            for e in store.close() {
                if let StoreEvent::Failed(msg) = e {
                    self.message(Message::Error(msg));
                }
            }
        } else {
            store.finish();
            self.closing_stores.push(store);
        }
    }

    /// Stop the stores that are closing and wait for them (exit).
    pub fn finish_stores(&mut self) {
        for mut s in self.closing_stores.drain(..) {
            s.finish();
            s.exit_signal().wait();
        }
    }

    /// Wait until the open case's store has written everything sent so far (scripts, tests).
    pub fn flush(&self) {
        if let Some(store) = self.open.as_ref().and_then(|o| o.edits.store.as_ref()) {
            store.flush();
        }
    }

    /// Throw away the open loose files' unsaved edits: their working copy is removed (by a
    /// worker) and the files are as the user saved them.
    pub(super) fn discard_loose_edits(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(loose) = open.edits.loose.clone() else {
            return;
        };
        if let Some(mut store) = open.edits.store.take() {
            store.finish();
            self.closing_stores.push(store);
        }
        open.edits.dirty = false;
        open.edits.mask_dirty = false;
        open.edits.unsaved_for_user = false;
        let waits: Vec<_> = self
            .closing_stores
            .iter()
            .map(|s| s.exit_signal())
            .collect();
        self.jobs.spawn("discarding the working copy", move || {
            waits.iter().for_each(|w| w.wait());
            match std::fs::remove_dir_all(&loose.work_dir) {
                Ok(()) => super::Input::Report(Message::Notice("unsaved edits discarded".into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    super::Input::Report(Message::Notice("unsaved edits discarded".into()))
                }
                Err(e) => super::Input::Report(Message::Error(format!(
                    "{}: cannot remove the working copy: {e}",
                    loose.work_dir.display()
                ))),
            }
        });
    }

    /// Save the manifest: through the open case's store (so its journal stays consistent), or
    /// by a worker.
    pub(super) fn save_manifest(&mut self) {
        if let Some(open) = self
            .open
            .as_mut()
            .filter(|o| o.edits.store.is_some() && o.edits.loose.is_none())
        {
            open.edits.dirty = true;
            return self.autosave();
        }
        let Some(project) = self.project.clone() else {
            return;
        };
        self.jobs
            .spawn("saving the manifest", move || match project.save() {
                Ok(()) => super::Input::Report(Message::Notice("project saved".into())),
                Err(e) => super::Input::WorkerFailed(super::WorkerError::Failed {
                    worker: "saving the manifest".into(),
                    message: e.to_string(),
                }),
            });
    }
}
