//! Plots written to PNG files on the CPU: the training curves (`mriloop train --plot`) and an
//! experiment's figures (`mriloop experiment` and the Experiment panel's report), drawn with
//! plotters' bitmap backend into an RGB buffer and encoded with `image`. Also home of
//! [`Curves`], the training-curve data the CLI collects and the window's live panel shows.
//!
//! Invariants: nothing here needs a GPU, a display, egui or wgpu (a cluster node with no
//! graphics adapter writes the same files); every PNG is written atomically, so a reader sees
//! the old file or the new one, never a torn one; series `k` has colour `PALETTE[k % 8]` here
//! and in the window's live plots.

mod canvas;
mod curves;
mod experiment;
mod training;

pub use curves::{smooth, smoothing_window, Curves};
pub use experiment::{write_plots, write_report_with_plots};
pub use training::write_training_png;

use std::path::PathBuf;

/// Series colours (RGB), shared with the window's live plots.
pub const PALETTE: [[u8; 3]; 8] = [
    [220, 60, 60],
    [60, 130, 230],
    [230, 180, 20],
    [20, 180, 160],
    [200, 40, 200],
    [30, 30, 30],
    [120, 200, 60],
    [150, 90, 40],
];

/// Colour of the training loss's moving mean (RGB).
pub const LOSS_MEAN: [u8; 3] = [40, 70, 160];

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The built-in font could not be loaded for the plots' text.
    #[error("the plot font could not be loaded")]
    Font,
    /// plotters failed while drawing.
    #[error("drawing {}: {message}", path.display())]
    Draw {
        /// The PNG being drawn.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
    /// The drawn pixels could not be encoded as PNG.
    #[error("encoding {} as PNG: {source}", path.display())]
    Encode {
        /// The PNG being written.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// The file could not be written.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The PNG being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The report beside the plots could not be written.
    #[error(transparent)]
    Report(#[from] crate::experiment::ExperimentError),
}
