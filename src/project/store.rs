//! `CaseStore`: the persistence worker of one open case. A background thread appends each
//! committed edit to the case's journal (fsync'd) and each prompted interaction to its prompt
//! log, and on request saves the mask and the
//! manifest atomically and then empties the journal. Messages are handled in order, so a save
//! covers exactly the edits sent before it and the journal keeps every later one.
//!
//! Invariants: the UI thread only sends messages (never waits, except `close` at exit); a failed
//! save leaves the previous files and the journal as they were and reports the file and problem.

use super::{journal, Project, ProjectError};
use crate::edit::Edit;
use crate::volume::{write_volume, Volume};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Set when a store's worker has finished every queued message and stopped; another thread
/// (e.g. one loading the same case again) can wait for it.
#[derive(Clone, Default)]
pub struct ExitSignal(Arc<(Mutex<bool>, Condvar)>);

impl ExitSignal {
    fn set(&self) {
        let (lock, cv) = &*self.0;
        if let Ok(mut done) = lock.lock() {
            *done = true;
        }
        cv.notify_all();
    }

    /// Wait until the worker has stopped.
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        if let Ok(mut done) = lock.lock() {
            while !*done {
                match cv.wait(done) {
                    Ok(d) => done = d,
                    Err(_) => return,
                }
            }
        }
    }

    /// Whether the worker has stopped.
    pub fn is_set(&self) -> bool {
        self.0 .0.lock().map(|d| *d).unwrap_or(true)
    }
}

/// What to save: the project's manifest (project cases) and, if it changed, the case's
/// reference mask; then the journal is emptied and `remove_after` (e.g. a loose file's working
/// copy, now saved to the user's file) removed.
pub struct SaveJob {
    /// The project (its manifest is written); `None` for loose files.
    pub project: Option<Project>,
    /// The mask and the file to write it to.
    pub mask: Option<(PathBuf, Volume<u8>)>,
    /// Files made obsolete by this save, removed after it succeeded.
    pub remove_after: Vec<PathBuf>,
    /// The labels' names and colours, for a mask saved as a Slicer segmentation (`.seg.nrrd`);
    /// other formats hold no names.
    pub segment_names: Vec<crate::volume::nrrd::Segment>,
}

enum StoreMsg {
    Append(Vec<u8>, Option<Sender<()>>),
    PromptRecord(PathBuf, Box<super::prompt_log::PromptRecord>),
    Save(Box<SaveJob>, Option<Sender<()>>),
    Flush(Sender<()>),
}

/// What the worker reports.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// The mask and manifest were saved and the journal emptied.
    Saved,
    /// Something could not be written: the message names the file and the problem.
    Failed(String),
}

/// The persistence worker of one case.
pub struct CaseStore {
    tx: Option<Sender<StoreMsg>>,
    events: Receiver<StoreEvent>,
    handle: Option<JoinHandle<()>>,
    exit: ExitSignal,
}

struct Worker {
    journal_path: PathBuf,
    file: Option<File>,
    events: Sender<StoreEvent>,
}

impl Worker {
    fn append(&mut self, record: &[u8]) -> Result<(), String> {
        let path = &self.journal_path;
        let err =
            |e: std::io::Error| format!("{}: cannot write the edit journal: {e}", path.display());
        if self.file.is_none() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err)?;
            if f.metadata().map_err(err)?.len() == 0 {
                f.write_all(journal::JOURNAL_MAGIC).map_err(err)?;
            }
            self.file = Some(f);
        }
        if let Some(f) = &mut self.file {
            f.write_all(record).map_err(err)?;
            f.sync_data().map_err(err)?;
        }
        Ok(())
    }

    fn save(&mut self, job: &SaveJob) -> Result<(), String> {
        if let Some((path, mask)) = &job.mask {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("{}: cannot make the folder: {e}", dir.display()))?;
            }
            let written = if crate::volume::nrrd::is_segmentation_name(path) {
                crate::volume::nrrd::write_segmentation_named(path, mask, &job.segment_names)
            } else {
                write_volume(path, mask)
            };
            written.map_err(|e| e.to_string())?;
        }
        if let Some(project) = &job.project {
            project.save().map_err(|e| e.to_string())?;
        }
        self.file = None;
        for path in std::iter::once(&self.journal_path).chain(&job.remove_after) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "{}: saved, but cannot remove it: {e}",
                        path.display()
                    ))
                }
            }
        }
        Ok(())
    }

    fn run(mut self, rx: Receiver<StoreMsg>) {
        for msg in rx {
            let (result, ack) = match msg {
                StoreMsg::Append(record, ack) => (self.append(&record), ack),
                StoreMsg::PromptRecord(path, record) => (
                    super::prompt_log::append_prompt_record(&path, &record),
                    None,
                ),
                StoreMsg::Flush(ack) => (Ok(()), Some(ack)),
                StoreMsg::Save(job, ack) => {
                    let r = self.save(&job);
                    if r.is_ok() {
                        let _ = self.events.send(StoreEvent::Saved);
                    }
                    (r, ack)
                }
            };
            if let Err(e) = result {
                let _ = self.events.send(StoreEvent::Failed(e));
            }
            if let Some(a) = ack {
                let _ = a.send(());
            }
        }
    }
}

impl CaseStore {
    /// Start the worker of a case whose journal is at `journal_path`.
    pub fn open(journal_path: &Path) -> Self {
        let (tx, rx) = channel();
        let (etx, events) = channel();
        let worker = Worker {
            journal_path: journal_path.to_path_buf(),
            file: None,
            events: etx,
        };
        let exit = ExitSignal::default();
        let signal = exit.clone();
        let report = worker.events.clone();
        let handle = std::thread::spawn(move || {
            // A panic while saving is reported like any failure, and the exit still signalled.
            if let Err(e) = crate::worker::catch_worker("the saving thread", || worker.run(rx)) {
                let _ = report.send(StoreEvent::Failed(e.to_string()));
            }
            signal.set();
        });
        Self {
            tx: Some(tx),
            events,
            handle: Some(handle),
            exit,
        }
    }

    /// Stop taking messages; the worker finishes what is queued, then stops (returns at once).
    pub fn finish(&mut self) {
        self.tx = None;
    }

    /// Whether the worker has stopped (after `finish`).
    pub fn is_finished(&self) -> bool {
        self.exit.is_set()
    }

    /// A signal set when the worker stops.
    pub fn exit_signal(&self) -> ExitSignal {
        self.exit.clone()
    }

    fn send(&self, msg: StoreMsg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    /// Append an edit to the journal (returns at once).
    pub fn append(&self, edit: &Edit) {
        self.send(StoreMsg::Append(journal::frame_record(edit), None));
    }

    /// Append an edit and wait until it is on disk (scripts and tests).
    pub fn append_and_wait(&self, edit: &Edit) {
        let (ack, done) = channel();
        self.send(StoreMsg::Append(journal::frame_record(edit), Some(ack)));
        let _ = done.recv();
    }

    /// Append a prompted interaction to the prompt log at `path` (returns at once; kept by
    /// saves: fine-tuning learns from it).
    pub fn append_prompt_record(&self, path: PathBuf, record: super::prompt_log::PromptRecord) {
        self.send(StoreMsg::PromptRecord(path, Box::new(record)));
    }

    /// Save the mask and manifest, then empty the journal (returns at once).
    pub fn save(&self, job: SaveJob) {
        self.send(StoreMsg::Save(Box::new(job), None));
    }

    /// Save and wait until done.
    pub fn save_and_wait(&self, job: SaveJob) {
        let (ack, done) = channel();
        self.send(StoreMsg::Save(Box::new(job), Some(ack)));
        let _ = done.recv();
    }

    /// Wait until every message sent so far is handled (scripts and tests).
    pub fn flush(&self) {
        let (ack, done) = channel();
        self.send(StoreMsg::Flush(ack));
        let _ = done.recv();
    }

    /// Events so far (never waits).
    pub fn poll(&self) -> Vec<StoreEvent> {
        self.events.try_iter().collect()
    }

    /// Finish every queued message and stop the worker; returns the last events.
    pub fn close(mut self) -> Vec<StoreEvent> {
        self.tx = None;
        let mut events: Vec<StoreEvent> = Vec::new();
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                events.push(StoreEvent::Failed(
                    "the saving thread stopped unexpectedly".into(),
                ));
            }
        }
        let mut all: Vec<StoreEvent> = self.events.try_iter().collect();
        all.extend(events);
        all
    }
}

impl Drop for CaseStore {
    fn drop(&mut self) {
        // Let the worker finish what was queued (it exits when the channel closes); do not wait.
        self.tx = None;
    }
}

/// What opening a case's edits found: its mask (as saved, with the journal replayed) and the
/// record edits replayed onto the case.
pub struct Recovered {
    /// Edits replayed from the journal.
    pub edits: usize,
    /// Why the journal's reading stopped early, if it did.
    pub problem: Option<String>,
}

/// Replay a case's journal onto its loaded mask and its record in `project`.
pub fn recover(
    project: &mut Project,
    case_index: usize,
    mask: &mut Volume<u8>,
) -> Result<Recovered, ProjectError> {
    let Some(case) = project.manifest.cases.get(case_index) else {
        return Ok(Recovered {
            edits: 0,
            problem: None,
        });
    };
    let path = journal::journal_path(project, &case.id);
    let (edits, problem) = journal::replay_file(&path, mask)?;
    for e in &edits {
        journal::apply_project_record(&mut project.manifest, e, true);
        if let Some(case) = project.manifest.cases.get_mut(case_index) {
            journal::apply_record(case, e, true);
        }
    }
    Ok(Recovered {
        edits: edits.len(),
        problem,
    })
}
