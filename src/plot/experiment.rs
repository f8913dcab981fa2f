//! An experiment's figures as PNG files beside its report: training curves per arm (loss, and
//! validation Dice / class AUC per epoch), per-case Dice box plots per label and arm, and ROC
//! curves per arm; then the report itself linking them.
//!
//! Invariants: every figure is drawn from the `ExperimentResult` alone; arm `a` (the plan's
//! order) has colour `PALETTE[a % 8]` in every figure, as in the Experiment panel; class figures
//! only when some arm trains the class, Dice figures only when some arm segments.

use super::canvas::{
    legend, line_chart, quietest_corner, rgb, span, write_png, Area, Axes, DrawResult, Series, FONT,
};
use super::curves::{smooth, smoothing_window};
use super::{PlotError, PALETTE};
use crate::experiment::report::{arm_roc, per_case_mean, runs_of};
use crate::experiment::ExperimentResult;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

fn colour(arm: usize) -> [u8; 3] {
    PALETTE[arm % PALETTE.len()]
}

/// Write the figures as PNGs into `out`; returns (title, file name) of each written, for the
/// report.
pub fn write_plots(
    result: &ExperimentResult,
    out: &Path,
) -> Result<Vec<(String, String)>, PlotError> {
    let mut written = Vec::new();
    let mut add = |title: &str, file: &str| written.push((title.to_string(), file.to_string()));
    write_png(&out.join("curves.png"), [1400, 500], |root| {
        let (left, right) = root.split_horizontally(700);
        loss_chart(&left, result)?;
        validation_chart(&right, result)
    })?;
    add("Training curves per arm", "curves.png");
    if result.runs.iter().any(|r| r.segments()) && !result.label_names.is_empty() {
        write_png(&out.join("dice_boxes.png"), [1200, 500], |root| {
            dice_boxes(root, result)
        })?;
        add(
            "Per-case Dice on the test cases, per label and arm",
            "dice_boxes.png",
        );
    }
    if result.runs.iter().any(|r| r.classifies()) {
        write_png(&out.join("roc.png"), [700, 620], |root| {
            roc_chart(root, result)
        })?;
        add(
            "ROC of the class on the test cases (seeds pooled)",
            "roc.png",
        );
    }
    Ok(written)
}

/// Write the figures, then `report.md` and `cases.csv` linking them, into `out`; `command` is
/// what the report says made it.
pub fn write_report_with_plots(
    result: &ExperimentResult,
    out: &Path,
    command: &str,
) -> Result<(), PlotError> {
    let plots = write_plots(result, out)?;
    crate::experiment::report::write_report(result, out, command, &plots)?;
    Ok(())
}

/// Training loss (moving mean) of every run, one colour per arm.
fn loss_chart(area: &Area, result: &ExperimentResult) -> DrawResult {
    let mut series = Vec::new();
    for (a, arm) in result.plan.arms.iter().enumerate() {
        for run in runs_of(result, &arm.name) {
            let mean = smooth(&run.loss, smoothing_window(run.loss.len(), 6));
            let points = mean.into_iter().map(|[x, y]| (x, y)).collect();
            series.push(Series::line(arm.name.clone(), points, colour(a), 2));
        }
    }
    let axes = Axes {
        title: "Training loss per arm (every seed)",
        x: "step",
        y: "training loss (moving mean)",
        include_x: &[],
        include_y: &[0.0],
        integer_x: true,
    };
    line_chart(area, &axes, &series)
}

/// Validation mean Dice (solid) and class AUC (dashed) per epoch of every run.
fn validation_chart(area: &Area, result: &ExperimentResult) -> DrawResult {
    let mut series = Vec::new();
    for (a, arm) in result.plan.arms.iter().enumerate() {
        for run in runs_of(result, &arm.name) {
            let epoch = |e: &crate::model::EpochSummary| e.epoch as f64;
            if run.segments() {
                let points = run
                    .epochs
                    .iter()
                    .map(|e| (epoch(e), e.validation.mean_dice()));
                series.push(Series {
                    dots: true,
                    ..Series::line(format!("{} Dice", arm.name), points.collect(), colour(a), 2)
                });
            }
            if run.classifies() {
                let points = run
                    .epochs
                    .iter()
                    .filter_map(|e| Some((epoch(e), e.validation.class_auc?)));
                series.push(Series {
                    dashed: true,
                    dots: true,
                    ..Series::line(format!("{} AUC", arm.name), points.collect(), colour(a), 2)
                });
            }
        }
    }
    let axes = Axes {
        title: "Validation per epoch: mean Dice (solid), class AUC (dashed)",
        x: "epoch",
        y: "validation figure",
        include_x: &[],
        include_y: &[0.0, 1.0],
        integer_x: true,
    };
    line_chart(area, &axes, &series)
}

/// Minimum, quartiles and maximum of `v` (empty: none).
fn five_numbers(v: &[f64]) -> Option<[f64; 5]> {
    let q = |f: f64| crate::volume::distance::percentile(v.to_vec(), f);
    let lo = v.iter().copied().reduce(f64::min)?;
    let hi = v.iter().copied().reduce(f64::max)?;
    Some([lo, q(25.0)?, q(50.0)?, q(75.0)?, hi])
}

/// Per-case Dice (mean over the arm's seeds) of label `l` for `arm`.
fn case_dice(result: &ExperimentResult, arm: &str, l: usize) -> Vec<f64> {
    per_case_mean(result, arm, |r, i| {
        r.segments()
            .then(|| r.cases.get(i)?.dice.get(l).copied().flatten())
            .flatten()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// The box, median and whiskers of one box plot element centred at `x`.
fn box_element<DB: DrawingBackend>(
    x: f64,
    [lo, q1, med, q3, hi]: [f64; 5],
    c: RGBColor,
) -> Vec<DynElement<'static, DB, (f64, f64)>> {
    let half = 0.35;
    let stroke = c.stroke_width(2);
    vec![
        Rectangle::new([(x - half, q1), (x + half, q3)], c.mix(0.3).filled()).into_dyn(),
        Rectangle::new([(x - half, q1), (x + half, q3)], stroke).into_dyn(),
        PathElement::new(vec![(x - half, med), (x + half, med)], c.stroke_width(3)).into_dyn(),
        PathElement::new(vec![(x, lo), (x, q1)], stroke).into_dyn(),
        PathElement::new(vec![(x, q3), (x, hi)], stroke).into_dyn(),
        PathElement::new(vec![(x - half / 2.0, lo), (x + half / 2.0, lo)], stroke).into_dyn(),
        PathElement::new(vec![(x - half / 2.0, hi), (x + half / 2.0, hi)], stroke).into_dyn(),
    ]
}

/// The boxes of each arm: (x position, five numbers) per label with Dice values; labels are
/// groups of one box per arm and a gap, `group` positions wide.
fn arm_boxes(result: &ExperimentResult, group: f64) -> Vec<Vec<(f64, [f64; 5])>> {
    let labels = result.label_names.len();
    (result.plan.arms.iter().enumerate())
        .map(|(a, arm)| {
            (0..labels)
                .filter_map(|l| {
                    let five = five_numbers(&case_dice(result, &arm.name, l))?;
                    Some((l as f64 * group + a as f64, five))
                })
                .collect()
        })
        .collect()
}

/// Box plots of per-case Dice for each label (a group), one box per segmenting arm.
fn dice_boxes(area: &Area, result: &ExperimentResult) -> DrawResult {
    let group = result.plan.arms.len() as f64 + 1.0;
    let labels = &result.label_names;
    let name_style = TextStyle::from((FONT, 17).into_font());
    let widths_px: Vec<f64> = labels
        .iter()
        .map(|n| {
            area.estimate_text_size(n, &name_style)
                .map_or(0.0, |s| f64::from(s.0))
        })
        .collect();
    // The plotting width: the area less the y-label area and both margins.
    let plot_px = area
        .dim_in_pixel()
        .0
        .saturating_sub(BOX_Y_LABEL_PX + 2 * BOX_MARGIN_PX);
    let slot_px = f64::from(plot_px) / labels.len().max(1) as f64;
    let rows = label_rows(&widths_px, slot_px);
    let row_y = |row: usize| -0.05 - 0.055 * row as f64;
    let x = span([-0.5, labels.len() as f64 * group - 1.5].into_iter(), &[]);
    let y = row_y(rows - 1) - 0.05..1.04;
    let boxes = arm_boxes(result, group);
    let extents = boxes
        .iter()
        .flatten()
        .flat_map(|(x, five)| five.map(|v| (*x, v)));
    let corner = quietest_corner(extents, &x, &y);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Per-case Dice on the test cases (mean over seeds)",
            (FONT, 22),
        )
        .margin(BOX_MARGIN_PX)
        .x_label_area_size(20)
        .y_label_area_size(BOX_Y_LABEL_PX)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("Dice per test case")
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 14))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()?;
    let centred = name_style.pos(Pos::new(HPos::Center, VPos::Center));
    chart.draw_series(labels.iter().enumerate().map(|(l, name)| {
        let centre = l as f64 * group + (group - 2.0) / 2.0;
        Text::new(name.clone(), (centre, row_y(l % rows)), centred.clone())
    }))?;
    for (a, arm) in boxes.iter().enumerate().filter(|(_, b)| !b.is_empty()) {
        let c = rgb(colour(a));
        let elements = arm.iter().flat_map(|(x, five)| box_element(*x, *five, c));
        chart
            .draw_series(elements)?
            .label(result.plan.arms[a].name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], c.filled()));
    }
    legend(&mut chart, corner, boxes.iter().any(|b| !b.is_empty()))
}

/// The Dice box chart's margin and y-label area (px): its plotting width places the names.
const BOX_MARGIN_PX: u32 = 14;
/// See [`BOX_MARGIN_PX`].
const BOX_Y_LABEL_PX: u32 = 62;

/// How many rows (1 to 3) names of `widths_px`, centred `slot_px` apart, need so that no two
/// on one row (every `rows`-th name) come closer than 8 px.
fn label_rows(widths_px: &[f64], slot_px: f64) -> usize {
    let fits = |rows: usize| {
        widths_px
            .windows(rows + 1)
            .all(|w| (w[0] + w[rows]) / 2.0 + 8.0 <= rows as f64 * slot_px)
    };
    (1..3).find(|r| fits(*r)).unwrap_or(3)
}

/// ROC curves of the class (positive = the last class), each arm's seeds pooled.
fn roc_chart(area: &Area, result: &ExperimentResult) -> DrawResult {
    let mut series = vec![Series {
        dashed: true,
        ..Series::line("chance", vec![(0.0, 0.0), (1.0, 1.0)], [170, 170, 170], 1)
    }];
    for (a, arm) in result.plan.arms.iter().enumerate() {
        let Some((points, auc)) = arm_roc(result, &arm.name) else {
            continue;
        };
        let name = format!("{} (AUC {auc:.3})", arm.name);
        series.push(Series::line(name, points, colour(a), 2));
    }
    let axes = Axes {
        title: "ROC of the class on the test cases",
        x: "false-positive rate",
        y: "true-positive rate",
        include_x: &[0.0, 1.0],
        include_y: &[0.0, 1.0],
        integer_x: false,
    };
    line_chart(area, &axes, &series)
}

#[cfg(test)]
mod tests {
    use super::label_rows;

    #[test]
    fn label_names_take_a_second_or_third_row_only_when_they_would_touch() {
        assert_eq!(label_rows(&[60.0; 5], 200.0), 1, "room to spare");
        assert_eq!(
            label_rows(&[100.0; 15], 74.0),
            2,
            "15 Colin27 names in 1 110 px"
        );
        assert_eq!(label_rows(&[140.0; 15], 60.0), 3, "no more than three rows");
        assert_eq!(label_rows(&[300.0], 10.0), 1, "one name overlaps nothing");
        assert_eq!(label_rows(&[], 10.0), 1);
    }
}
