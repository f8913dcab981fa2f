//! The training-curves PNG of `mriloop train --plot`: training loss per step on the left (the
//! raw total, its moving mean and each task's term), validation figures per epoch on the right.
//!
//! Invariant: the same series, names and colours as the window's live training panel.

use super::canvas::{line_chart, write_png, Area, Axes, DrawResult, Series};
use super::curves::{smooth, smoothing_window, Curves};
use super::{PlotError, LOSS_MEAN, PALETTE};
use std::path::Path;

/// Draw `curves` as two charts side by side at `size` pixels and write them to `path` (PNG,
/// atomically).
pub fn write_training_png(curves: &Curves, size: [u32; 2], path: &Path) -> Result<(), PlotError> {
    write_png(path, size, |root: &Area| {
        let (left, right) = root.split_horizontally(size[0] / 2);
        loss_chart(&left, curves)?;
        validation_chart(&right, curves)
    })
}

fn pairs(points: Vec<[f64; 2]>) -> Vec<(f64, f64)> {
    points.into_iter().map(|[x, y]| (x, y)).collect()
}

fn loss_chart(area: &Area, curves: &Curves) -> DrawResult {
    let raw = curves.loss.iter().map(|(s, v)| (*s as f64, *v)).collect();
    let mean = smooth(&curves.loss, smoothing_window(curves.loss.len(), 6));
    // The moving mean is drawn last, on top: the figure the curves are read by.
    let mut series = vec![Series::line("total", raw, [190, 190, 190], 1)];
    for (name, points, colour) in [
        ("segmentation", &curves.segmentation, PALETTE[0]),
        ("classification", &curves.classification, PALETTE[2]),
    ] {
        if !points.is_empty() {
            let w = smoothing_window(points.len(), 3);
            series.push(Series::line(name, pairs(smooth(points, w)), colour, 2));
        }
    }
    series.push(Series::line(
        "total (moving mean)",
        pairs(mean),
        LOSS_MEAN,
        2,
    ));
    let axes = Axes {
        title: "Training loss",
        x: "step",
        y: "training loss",
        include_x: &[],
        include_y: &[0.0],
        integer_x: true,
    };
    line_chart(area, &axes, &series)
}

fn validation_chart(area: &Area, curves: &Curves) -> DrawResult {
    let series: Vec<Series> = curves
        .validation_names()
        .into_iter()
        .enumerate()
        .map(|(k, name)| {
            let points = pairs(curves.validation_points(name));
            Series {
                dots: true,
                ..Series::line(name, points, PALETTE[k % PALETTE.len()], 2)
            }
        })
        .collect();
    let steps: Vec<f64> = curves.loss.iter().map(|(s, _)| *s as f64).collect();
    let axes = Axes {
        title: "Validation (per epoch)",
        x: "step",
        y: "validation",
        include_x: &steps,
        include_y: &[0.0, 1.0],
        integer_x: true,
    };
    line_chart(area, &axes, &series)
}
