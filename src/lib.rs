//! mriloop: review, correct and train a multi-task brain-MRI network in one native app.
//!
//! Layers point one way: `worker` (typed failures of worker threads) and `volume` (volumes,
//! affines, NIfTI/DICOM I/O) know nothing above them; `edit` (deltas, undo, tools) builds on
//! `volume`; `project` (cases, manifest, journal, nnU-Net exchange) on both; `phantom` generates
//! synthetic projects; `render` draws volume slices with wgpu (no egui, no project); `model`
//! trains and predicts; `experiment` (arms × seeds trained and compared on held-out cases)
//! builds on `model` and `project`; `plot` draws file plots on the CPU; `session` is the logic
//! tier (the open project and case, every change through `Session::apply`; no egui, no wgpu);
//! `app` (the eframe review window, on `session`), `closed_loop` (the review–correct–train loop
//! scripted end to end) and `cli` (the headless commands, which never import `app`) sit on top.

pub mod app;
pub mod atomic;
pub mod background;
pub mod bench;
pub mod cli;
pub mod closed_loop;
pub mod edit;
pub mod experiment;
pub mod model;
pub mod phantom;
pub mod plot;
pub mod project;
pub mod render;
pub mod session;
pub mod volume;
pub mod worker;
