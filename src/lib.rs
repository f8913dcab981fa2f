//! mriloop: review, correct and train a multi-task brain-MRI network in one native app.
//!
//! Layers point one way: `volume` (volumes, affines, NIfTI I/O) knows nothing above it;
//! `project` (cases, manifest, nnU-Net exchange) builds on `volume`; `phantom` generates
//! synthetic projects; `render` draws volume slices with wgpu (no egui, no project); `experiment` (arms × seeds trained
//! and compared on held-out cases) builds on `model` and `project`; `plot` draws file plots on
//! the CPU; `app` (the eframe review window), `closed_loop` (the review–correct–train loop
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
