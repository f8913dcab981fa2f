//! An experiment's plots with egui_plot, shown live in the Experiment panel: training curves per
//! arm, per-case Dice box plots per label and arm, and ROC curves per arm. The same figures as
//! PNG files beside the report are drawn on the CPU by [`crate::plot`] (no GPU needed).
//!
//! Invariants: every plot is drawn from the `ExperimentResult` alone, with one colour per arm
//! (the plan's order) in every plot, the same as in the PNGs.

use super::curves::PALETTE;
use crate::experiment::report::{arm_roc, per_case_mean, runs_of};
use crate::experiment::ExperimentResult;
use crate::plot::{smooth, smoothing_window};
use egui_plot::{
    BoxElem, BoxPlot, BoxSpread, Legend, Line, LineStyle, Plot, PlotPoint, PlotPoints, Text,
};

fn colour(arm: usize) -> egui::Color32 {
    PALETTE[arm % PALETTE.len()]
}

/// Training loss (moving mean) per run, and validation mean Dice / class AUC per epoch, one
/// colour per arm (every seed drawn).
pub fn show_curves(ui: &mut egui::Ui, result: &ExperimentResult) {
    let width = (ui.available_width() / 2.0 - 8.0).max(100.0);
    let height = ui.available_height().max(100.0);
    let arms = &result.plan.arms;
    ui.horizontal(|ui| {
        Plot::new("experiment loss")
            .width(width)
            .height(height)
            .legend(Legend::default())
            .x_axis_label("step")
            .y_axis_label("training loss (moving mean)")
            .include_y(0.0)
            .show(ui, |p| {
                for (a, arm) in arms.iter().enumerate() {
                    for run in runs_of(result, &arm.name) {
                        let w = smoothing_window(run.loss.len(), 6);
                        p.line(
                            Line::new(arm.name.clone(), PlotPoints::from(smooth(&run.loss, w)))
                                .color(colour(a))
                                .width(1.5),
                        );
                    }
                }
            });
        Plot::new("experiment validation")
            .width(width)
            .height(height)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .y_axis_label("validation: mean Dice (solid), class AUC (dashed)")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                for (a, arm) in arms.iter().enumerate() {
                    for run in runs_of(result, &arm.name) {
                        if run.segments() {
                            let pts: PlotPoints = run
                                .epochs
                                .iter()
                                .map(|e| [e.epoch as f64, e.validation.mean_dice()])
                                .collect();
                            p.line(
                                Line::new(format!("{} Dice", arm.name), pts)
                                    .color(colour(a))
                                    .width(2.0),
                            );
                        }
                        if run.classifies() {
                            let pts: PlotPoints = run
                                .epochs
                                .iter()
                                .filter_map(|e| Some([e.epoch as f64, e.validation.class_auc?]))
                                .collect();
                            p.line(
                                Line::new(format!("{} AUC", arm.name), pts)
                                    .color(colour(a))
                                    .style(LineStyle::dashed_loose())
                                    .width(1.5),
                            );
                        }
                    }
                }
            });
    });
}

/// Quartiles and whiskers (min, max) of `v`.
fn spread(v: &mut [f64]) -> Option<BoxSpread> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |f: f64| crate::volume::distance::percentile(v.to_vec(), f).unwrap_or(0.0);
    Some(BoxSpread::new(
        v[0],
        q(25.0),
        q(50.0),
        q(75.0),
        v[v.len() - 1],
    ))
}

/// Box plots of per-case Dice (averaged over seeds) for each label, one box per arm.
pub fn show_dice_boxes(ui: &mut egui::Ui, result: &ExperimentResult) {
    let arms = &result.plan.arms;
    let labels = result.label_names.clone();
    let group = arms.len() as f64 + 1.0;
    Plot::new("experiment dice boxes")
        .legend(Legend::default())
        .y_axis_label("Dice per test case (mean over seeds)")
        .include_y(-0.08)
        .include_y(1.0)
        .show_x(false)
        .show(ui, |p| {
            for (l, name) in labels.iter().enumerate() {
                let centre = l as f64 * group + (group - 2.0) / 2.0;
                p.text(Text::new(
                    name.clone(),
                    PlotPoint::new(centre, -0.05),
                    egui::RichText::new(name).size(14.0),
                ));
            }
            for (a, arm) in arms.iter().enumerate() {
                let runs = runs_of(result, &arm.name);
                if !runs.iter().any(|r| r.segments()) {
                    continue;
                }
                let boxes: Vec<BoxElem> = labels
                    .iter()
                    .enumerate()
                    .filter_map(|(l, name)| {
                        let mut v: Vec<f64> = per_case_mean(result, &arm.name, |r, i| {
                            r.segments()
                                .then(|| r.cases.get(i)?.dice.get(l).copied().flatten())
                                .flatten()
                        })
                        .into_iter()
                        .flatten()
                        .collect();
                        let s = spread(&mut v)?;
                        Some(
                            BoxElem::new(l as f64 * group + a as f64, s)
                                .name(format!("{} {name}", arm.name))
                                .box_width(0.7)
                                .fill(colour(a).linear_multiply(0.3))
                                .stroke(egui::Stroke::new(1.5, colour(a))),
                        )
                    })
                    .collect();
                p.box_plot(BoxPlot::new(arm.name.clone(), boxes).color(colour(a)));
            }
        });
}

/// ROC curves of the class (positive = the last class), each arm's seeds pooled.
pub fn show_roc(ui: &mut egui::Ui, result: &ExperimentResult) {
    let arms = &result.plan.arms;
    Plot::new("experiment roc")
        .legend(Legend::default())
        .data_aspect(1.0)
        .x_axis_label("false-positive rate")
        .y_axis_label("true-positive rate")
        .include_x(0.0)
        .include_x(1.0)
        .include_y(0.0)
        .include_y(1.0)
        .show(ui, |p| {
            p.line(
                Line::new("chance", PlotPoints::from(vec![[0.0, 0.0], [1.0, 1.0]]))
                    .color(egui::Color32::from_gray(170))
                    .style(LineStyle::dashed_dense()),
            );
            for (a, arm) in arms.iter().enumerate() {
                let Some((points, auc)) = arm_roc(result, &arm.name) else {
                    continue;
                };
                let pts: PlotPoints = points.iter().map(|(x, y)| [*x, *y]).collect();
                p.line(
                    Line::new(format!("{} (AUC {auc:.3})", arm.name), pts)
                        .color(colour(a))
                        .width(2.0),
                );
            }
        });
}
