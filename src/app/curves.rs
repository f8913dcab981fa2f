//! The training panel's live curves with egui_plot: the training loss per step (total and each
//! task's term) and the validation figures per epoch, drawn into any `Ui`. The data type
//! ([`Curves`]) and the PNG of `mriloop train --plot` live in [`crate::plot`] (drawn on the CPU,
//! no GPU needed).
//!
//! Invariant: the same series, names and colours as the PNG (`crate::plot::PALETTE`).

pub use crate::plot::Curves;
use crate::plot::{smooth, smoothing_window};
use egui_plot::{Legend, Line, Plot, PlotPoints};

const fn rgb(c: [u8; 3]) -> egui::Color32 {
    egui::Color32::from_rgb(c[0], c[1], c[2])
}

/// `crate::plot::PALETTE` as egui colours.
pub(crate) const PALETTE: [egui::Color32; 8] = {
    let p = crate::plot::PALETTE;
    [
        rgb(p[0]),
        rgb(p[1]),
        rgb(p[2]),
        rgb(p[3]),
        rgb(p[4]),
        rgb(p[5]),
        rgb(p[6]),
        rgb(p[7]),
    ]
};

/// Draw the two plots side by side in `ui`.
pub fn show(ui: &mut egui::Ui, curves: &Curves) {
    let width = (ui.available_width() / 2.0 - 8.0).max(100.0);
    let height = ui.available_height().max(100.0);
    ui.horizontal(|ui| {
        Plot::new("training loss")
            .width(width)
            .height(height)
            .legend(Legend::default())
            .x_axis_label("step")
            .y_axis_label("training loss")
            .include_y(0.0)
            .show(ui, |p| {
                let raw: PlotPoints = curves.loss.iter().map(|(s, v)| [*s as f64, *v]).collect();
                p.line(Line::new("total", raw).color(egui::Color32::from_gray(190)));
                let w = smoothing_window(curves.loss.len(), 6);
                p.line(
                    Line::new(
                        "total (moving mean)",
                        PlotPoints::from(smooth(&curves.loss, w)),
                    )
                    .color(rgb(crate::plot::LOSS_MEAN))
                    .width(2.0),
                );
                for (name, series, colour) in [
                    ("segmentation", &curves.segmentation, PALETTE[0]),
                    ("classification", &curves.classification, PALETTE[2]),
                ] {
                    if !series.is_empty() {
                        let w = smoothing_window(series.len(), 3);
                        p.line(
                            Line::new(name, PlotPoints::from(smooth(series, w)))
                                .color(colour)
                                .width(1.5),
                        );
                    }
                }
            });
        Plot::new("validation")
            .width(width)
            .height(height)
            .legend(Legend::default())
            .x_axis_label("step")
            .y_axis_label("validation")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                for (k, name) in curves.validation_names().into_iter().enumerate() {
                    let pts = PlotPoints::from(curves.validation_points(name));
                    p.line(
                        Line::new(name.to_string(), pts)
                            .color(PALETTE[k % PALETTE.len()])
                            .width(2.0),
                    );
                }
            });
    });
}
