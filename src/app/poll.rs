//! Workers the window started itself, polled once per frame (never waiting): the project being
//! read, the case being loaded, worklist statistics, file dialogs' answers and notices. A
//! finished project or case becomes a session input; a dialog's answer becomes a command.
//!
//! Invariants: a worker that stops without a result is reported, never waited for.

use super::{Command, MriloopApp};
use crate::session::load::LoadMessage;
use crate::session::Input;
use std::sync::mpsc::TryRecvError;

impl MriloopApp {
    /// Receive from background jobs (never waits).
    pub(super) fn poll_jobs(&mut self) {
        self.poll_project();
        self.poll_answers();
        self.poll_stats();
        self.poll_loading();
        self.poll_surfaces();
    }

    fn poll_project(&mut self) {
        let Some(rx) = &self.project_rx else {
            return;
        };
        let result = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                Err("the thread opening the project stopped unexpectedly".into())
            }
        };
        self.project_rx = None;
        match result {
            Ok(p) => {
                let first = Self::first_case_of(&p);
                self.training_project_switched(&p);
                self.input(Input::ProjectOpened(Box::new(p)));
                if let Some(i) = first {
                    self.commands.push(Command::OpenCase(i));
                }
            }
            Err(e) => self.dialogs.error = Some(e),
        }
    }

    fn poll_answers(&mut self) {
        let mut answers = Vec::new();
        self.answers.retain(|rx| match rx.try_recv() {
            Ok(cmd) => {
                answers.push(cmd);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => false,
        });
        self.commands.extend(answers);
    }

    fn poll_stats(&mut self) {
        let Some(rx) = &self.stats_rx else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(s) => {
                    self.stats.insert(s.case_id.clone(), s);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.stats_rx = None;
                    break;
                }
            }
        }
    }

    /// Restart the worklist statistics of the open project.
    pub(super) fn restart_stats(&mut self) {
        self.stats.clear();
        self.stats_rx = self
            .session
            .project()
            .map(|p| crate::session::load::spawn_stats(p.clone(), self.wake()));
    }

    fn poll_loading(&mut self) {
        let Some(l) = &mut self.loading else {
            return;
        };
        let finished = loop {
            match l.rx.try_recv() {
                Ok(LoadMessage::Progress { done, total, file }) => {
                    l.done = done;
                    l.total = total;
                    l.file = Some(file);
                }
                Ok(LoadMessage::Done(case)) => break Some(Ok(case)),
                Ok(LoadMessage::Failed(e)) => break Some(Err(e)),
                Err(TryRecvError::Empty) => break None,
                Err(TryRecvError::Disconnected) => {
                    break Some(Err("the loading thread stopped unexpectedly".into()))
                }
            }
        };
        let Some(finished) = finished else {
            return;
        };
        let Some(l) = self.loading.take() else {
            return;
        };
        match finished {
            Ok(case) => self.input(Input::CaseLoaded {
                case,
                index: l.case_index,
                source: l.source,
            }),
            Err(e) => self.dialogs.error = Some(e),
        }
    }

    /// Notices and errors from the window's own workers.
    pub(super) fn poll_notices(&mut self) {
        while let Ok(n) = self.notices_rx.try_recv() {
            match n {
                Ok(msg) => self.dialogs.notice = Some(msg),
                Err(e) => self.dialogs.error = Some(e),
            }
        }
    }
}
