//! Training curves with egui_plot: the training loss per step (total and each task's term) and
//! the validation figures per epoch, drawn into any `Ui` (the app's live panel) or rendered
//! offscreen through egui-wgpu to a PNG (`mriloop train --plot`; `write_ui_png` does the same for
//! any drawing, e.g. an experiment's plots).
//!
//! Invariants: the offscreen render uses the same plot code as the app; a PNG is written
//! atomically.

use egui_plot::{Legend, Line, Plot, PlotPoints};

/// What the curves show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Training loss per step: (step, total loss).
    pub loss: Vec<(usize, f64)>,
    /// Segmentation loss (soft Dice + cross-entropy) of the steps that trained it.
    pub segmentation: Vec<(usize, f64)>,
    /// Classification cross-entropy of the steps that trained it.
    pub classification: Vec<(usize, f64)>,
    /// Per epoch (at its last step): (step, name, value) for validation figures.
    pub validation: Vec<(usize, String, f64)>,
}

impl Curves {
    /// Record a step's losses (each task's term where the step trained it).
    pub fn push_step(&mut self, step: usize, loss: &crate::model::LossTerms) {
        use crate::model::TaskMode;
        self.loss.push((step, loss.total));
        if loss.mode != TaskMode::ClassificationOnly {
            self.segmentation.push((step, loss.dice + loss.seg_ce));
        }
        if loss.mode != TaskMode::SegmentationOnly {
            self.classification.push((step, loss.class_ce));
        }
    }

    /// Record an epoch's validation figures at `step`: Dice per label (named by `label_name`)
    /// and class AUC. Returns the Dice values as `name value` texts for a report line.
    pub fn push_epoch(
        &mut self,
        step: usize,
        validation: &crate::model::Metrics,
        label_name: impl Fn(usize) -> String,
    ) -> Vec<String> {
        let mut dice = Vec::new();
        for (l, d) in validation.dice.iter().enumerate() {
            if let Some(d) = d {
                let name = label_name(l + 1);
                self.validation.push((step, format!("Dice {name}"), *d));
                dice.push(format!("{name} {d:.3}"));
            }
        }
        if let Some(a) = validation.class_auc {
            self.validation.push((step, "class AUC".into(), a));
        }
        dice
    }
}

pub(crate) const PALETTE: [egui::Color32; 8] = [
    egui::Color32::from_rgb(220, 60, 60),
    egui::Color32::from_rgb(60, 130, 230),
    egui::Color32::from_rgb(230, 180, 20),
    egui::Color32::from_rgb(20, 180, 160),
    egui::Color32::from_rgb(200, 40, 200),
    egui::Color32::from_rgb(30, 30, 30),
    egui::Color32::from_rgb(120, 200, 60),
    egui::Color32::from_rgb(150, 90, 40),
];

/// Moving average of `w` points.
pub(crate) fn smooth(points: &[(usize, f64)], w: usize) -> Vec<[f64; 2]> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, (s, v)) in points.iter().enumerate() {
        sum += v;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push([*s as f64, sum / (i + 1).min(w) as f64]);
    }
    out
}

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
                let w = (curves.loss.len() / 25).max(6);
                p.line(
                    Line::new(
                        "total (moving mean)",
                        PlotPoints::from(smooth(&curves.loss, w)),
                    )
                    .color(egui::Color32::from_rgb(40, 70, 160))
                    .width(2.0),
                );
                for (name, series, colour) in [
                    ("segmentation", &curves.segmentation, PALETTE[0]),
                    ("classification", &curves.classification, PALETTE[2]),
                ] {
                    if !series.is_empty() {
                        let w = (series.len() / 25).max(3);
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
                let mut names: Vec<&str> = Vec::new();
                for (_, n, _) in &curves.validation {
                    if !names.contains(&n.as_str()) {
                        names.push(n);
                    }
                }
                for (k, name) in names.iter().enumerate() {
                    let pts: PlotPoints = curves
                        .validation
                        .iter()
                        .filter(|(_, n, _)| n == name)
                        .map(|(s, _, v)| [*s as f64, *v])
                        .collect();
                    p.line(
                        Line::new(name.to_string(), pts)
                            .color(PALETTE[k % PALETTE.len()])
                            .width(2.0),
                    );
                }
            });
    });
}

/// Render the curves offscreen (`size` pixels) and write them as a PNG.
pub fn write_png(curves: &Curves, size: [u32; 2], path: &std::path::Path) -> Result<(), String> {
    write_ui_png(size, path, |ui| show(ui, curves))
}

/// Render `draw` (any egui drawing, e.g. plots) offscreen on a light background at `size`
/// pixels and write it as a PNG (atomically).
pub fn write_ui_png(
    size: [u32; 2],
    path: &std::path::Path,
    draw: impl Fn(&mut egui::Ui),
) -> Result<(), String> {
    let gpu = crate::render::GpuContext::headless().map_err(|e| e.to_string())?;
    let format = crate::render::OFFSCREEN_FORMAT;
    let ctx = egui::Context::default();
    ctx.set_visuals(egui::Visuals::light());
    let input = egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(size[0] as f32, size[1] as f32),
        )),
        ..Default::default()
    };
    // Two passes: the first lays out fonts and plot bounds, the second draws them settled.
    let mut first = ctx.run_ui(input.clone(), |ui| {
        egui::CentralPanel::default().show(ui, |ui| draw(ui));
    });
    let mut output = ctx.run_ui(input, |ui| {
        egui::CentralPanel::default().show(ui, |ui| draw(ui));
    });
    let mut renderer = egui_wgpu::Renderer::new(&gpu.device, format, Default::default());
    for delta in [&mut first.textures_delta, &mut output.textures_delta] {
        for (id, images) in &delta.set {
            for image in images {
                renderer.update_texture(&gpu.device, &gpu.queue, *id, image);
            }
        }
        // Applied above; egui wants that said before the delta is dropped.
        delta.clear();
    }
    let jobs = ctx.tessellate(output.shapes, 1.0);
    let screen = egui_wgpu::ScreenDescriptor {
        size_in_pixels: size,
        pixels_per_point: 1.0,
    };
    let target = crate::render::OffscreenTarget::new(&gpu.device, size);
    super::headless::paint_jobs(
        &mut renderer,
        (&gpu.device, &gpu.queue),
        &jobs,
        &screen,
        target.view(),
        wgpu::Color::WHITE,
    );
    let pixels = target
        .read_pixels(&gpu.device, &gpu.queue)
        .map_err(|e| e.to_string())?;
    let img = image::RgbaImage::from_raw(size[0], size[1], pixels)
        .ok_or("the rendered image has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    crate::atomic::write_atomic(path, &png).map_err(|e| format!("{}: {e}", path.display()))
}
