//! Mask editing with no GPU and no UI: deltas over sub-boxes (`delta`), undoable steps and the
//! undo stack (`undo`), the tools that make deltas (`tools`), and the live agreement between
//! the prediction and the corrected mask (`agreement`).
//!
//! Invariants: every change to a mask is a `MaskDelta` over the box it touched; a brush drag's
//! deltas form one undo step; record changes (class, status, note) are steps too.

mod agreement;
mod delta;
pub mod tools;
mod undo;

pub use agreement::Agreement;
pub use delta::{read_box, MaskDelta, Rle, VoxelBox};
pub use undo::{Edit, RecordField, UndoStack, DEFAULT_UNDO_BYTES, MIN_UNDO_STEPS};
