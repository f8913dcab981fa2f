//! `Edit` (one undoable step: mask deltas, or a change to the case's record) and `UndoStack`,
//! bounded by a memory cap in bytes that never drops the newest `MIN_UNDO_STEPS` steps.
//!
//! Invariants: undoing every step in order restores the state before the first one bit-for-bit;
//! redo replays them; a new edit clears the redo side; the bytes held stay under the cap
//! whenever more than `MIN_UNDO_STEPS` steps are kept.

use super::delta::MaskDelta;
use crate::volume::Volume;
use std::collections::VecDeque;

/// Steps always kept, whatever the memory cap.
pub const MIN_UNDO_STEPS: usize = 50;

/// Default memory cap of an undo stack (bytes).
pub const DEFAULT_UNDO_BYTES: usize = 256 << 20;

/// A field of the case's record that edits change (through the same path as masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordField {
    /// The reference class label (empty = unset).
    ClassLabel,
    /// The review status (its manifest name).
    Status,
    /// The free-text note.
    Note,
    /// The project's label table (names, colours), as JSON.
    Labels,
}

/// One undoable step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Changes to the reference mask (a whole brush drag is one step).
    Mask(Vec<MaskDelta>),
    /// A change of one record field.
    Record {
        /// Which field.
        field: RecordField,
        /// Value before.
        before: String,
        /// Value after.
        after: String,
    },
}

impl Edit {
    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Edit::Mask(d) => {
                std::mem::size_of::<Self>() + d.iter().map(MaskDelta::bytes).sum::<usize>()
            }
            Edit::Record { before, after, .. } => {
                std::mem::size_of::<Self>() + before.capacity() + after.capacity()
            }
        }
    }

    /// Apply (forward) or revert the mask part of this edit to `mask`; later deltas of a step
    /// are reverted first. Record edits leave the mask alone.
    pub fn apply_to_mask(&self, mask: &mut Volume<u8>, forward: bool) {
        if let Edit::Mask(deltas) = self {
            if forward {
                deltas.iter().for_each(|d| d.apply(mask));
            } else {
                deltas.iter().rev().for_each(|d| d.revert(mask));
            }
        }
    }

    /// The box of voxels a mask edit touches (None for a record edit or no delta).
    pub fn region(&self) -> Option<super::VoxelBox> {
        match self {
            Edit::Mask(deltas) => deltas.iter().map(|d| d.region).reduce(|a, b| a.union(&b)),
            Edit::Record { .. } => None,
        }
    }
}

/// Undo and redo stacks with a memory cap.
#[derive(Debug, Clone)]
pub struct UndoStack {
    done: VecDeque<Edit>,
    undone: Vec<Edit>,
    cap_bytes: usize,
    done_bytes: usize,
    undone_bytes: usize,
}

impl Default for UndoStack {
    fn default() -> Self {
        Self::new(DEFAULT_UNDO_BYTES)
    }
}

impl UndoStack {
    /// An empty stack holding at most `cap_bytes` (beyond the newest `MIN_UNDO_STEPS` steps).
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            done: VecDeque::new(),
            undone: Vec::new(),
            cap_bytes,
            done_bytes: 0,
            undone_bytes: 0,
        }
    }

    /// Record a step that was just applied; clears redo.
    pub fn push(&mut self, edit: Edit) {
        self.undone.clear();
        self.undone_bytes = 0;
        self.done_bytes += edit.bytes();
        self.done.push_back(edit);
        while self.done_bytes > self.cap_bytes && self.done.len() > MIN_UNDO_STEPS {
            if let Some(old) = self.done.pop_front() {
                self.done_bytes -= old.bytes();
            }
        }
    }

    /// Take the newest step to undo (the caller reverts it); it moves to the redo side.
    pub fn undo(&mut self) -> Option<&Edit> {
        let e = self.done.pop_back()?;
        let b = e.bytes();
        self.done_bytes -= b;
        self.undone_bytes += b;
        self.undone.push(e);
        self.undone.last()
    }

    /// Take the newest undone step to redo (the caller applies it again).
    pub fn redo(&mut self) -> Option<&Edit> {
        let e = self.undone.pop()?;
        let b = e.bytes();
        self.undone_bytes -= b;
        self.done_bytes += b;
        self.done.push_back(e);
        self.done.back()
    }

    /// Steps that can be undone.
    pub fn undo_depth(&self) -> usize {
        self.done.len()
    }

    /// Steps that can be redone.
    pub fn redo_depth(&self) -> usize {
        self.undone.len()
    }

    /// Bytes held by both sides.
    pub fn bytes(&self) -> usize {
        self.done_bytes + self.undone_bytes
    }

    /// The memory cap.
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }
}
