//! The time-series panel of a 4D case (a BOLD run): show one time point or a summary (temporal
//! mean, temporal SD), step or play through time, plot the time course at the cursor beside the
//! mean course of the reference (else predicted) region, and overlay the seed map. The state and
//! its changes are the session's (`crate::session::time`); this panel reads them and emits
//! commands.

use super::{Command, MriloopApp};
pub use crate::session::time::{SeedMap, TimeCommand, TimeShown, TimeView};
use crate::session::ViewCommand;

/// The time-series panel (bottom), shown while a 4D case is open.
pub fn time_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let session = app.session();
    let cursor_course = session.time_course_at_cursor();
    let Some(tv) = session.time_view() else {
        return;
    };
    let region = tv.region_course();
    let blend = app.open_case().and_then(|o| o.viewer.blend);
    egui::Panel::bottom("time series")
        .resizable(true)
        .default_size(230.0)
        .show(ui, |ui| {
            ui.horizontal(|ui| time_controls(ui, tv, out));
            ui.horizontal(|ui| seed_map_row(ui, tv, blend, out));
            time_course_plot(ui, tv, cursor_course, region);
        });
}

/// Emit a time-series command.
fn push_time(out: &mut Vec<Command>, c: TimeCommand) {
    out.push(Command::Time(c));
}

/// What is shown (a time point, the mean or the temporal SD), the time point, play / pause and
/// the playing speed.
fn time_controls(ui: &mut egui::Ui, tv: &TimeView, out: &mut Vec<Command>) {
    let dt = tv.time_step_s();
    ui.heading("Time series");
    ui.label(format!("{} time points, TR {:.2} s", tv.frames(), dt));
    ui.separator();
    let frame = match tv.shown {
        TimeShown::Frame(t) => Some(t),
        _ => None,
    };
    if ui.radio(frame.is_some(), "time point").clicked() && frame.is_none() {
        push_time(out, TimeCommand::Show(TimeShown::Frame(0)));
    }
    if ui.radio(tv.shown == TimeShown::Mean, "mean").clicked() {
        push_time(out, TimeCommand::Show(TimeShown::Mean));
    }
    if ui
        .radio(tv.shown == TimeShown::TemporalSd, "temporal SD")
        .clicked()
    {
        push_time(out, TimeCommand::Show(TimeShown::TemporalSd));
    }
    ui.separator();
    let mut t = frame.unwrap_or(0);
    let slider = egui::Slider::new(&mut t, 0..=tv.frames() - 1).text("t");
    if ui.add_enabled(frame.is_some(), slider).changed() {
        push_time(out, TimeCommand::Show(TimeShown::Frame(t)));
    }
    if let Some(t) = frame {
        ui.label(format!("{:.1} s", t as f64 * dt));
    }
    let play = if tv.playing { "Pause" } else { "Play" };
    if ui.button(play).clicked() {
        push_time(out, TimeCommand::Play(!tv.playing));
    }
    let mut fps = tv.frames_per_s;
    if ui
        .add(
            egui::DragValue::new(&mut fps)
                .range(0.5..=60.0)
                .suffix(" /s"),
        )
        .changed()
    {
        push_time(out, TimeCommand::SetFramesPerSecond(fps));
    }
}

/// The seed map: compute it at the cursor, its threshold, show or hide it (as the blended
/// image), and its status.
fn seed_map_row(
    ui: &mut egui::Ui,
    tv: &TimeView,
    blend: Option<(usize, f32)>,
    out: &mut Vec<Command>,
) {
    if ui
        .button("Seed map at cursor")
        .on_hover_text("correlation of every voxel's time course with the cursor voxel's")
        .clicked()
    {
        push_time(out, TimeCommand::SeedMapAtCursor);
    }
    let mut r = tv.seed_threshold;
    if ui
        .add(egui::Slider::new(&mut r, 0.0..=0.95).text("show r >="))
        .changed()
    {
        push_time(out, TimeCommand::SetSeedThreshold(r));
    }
    if let Some(seed) = &tv.seed {
        if blend.is_some_and(|(b, _)| b == seed.image) {
            if ui.button("Hide seed map").clicked() {
                push_time(out, TimeCommand::HideSeedMap);
            }
        } else if ui.button("Show seed map").clicked() {
            out.push(Command::View(ViewCommand::SetBlend(Some((
                seed.image, 0.8,
            )))));
        }
    }
    if tv.seed_busy() {
        ui.spinner();
    }
    ui.label(&tv.seed_status);
}

/// The time course at the cursor and the region's mean course, with the shown time point.
fn time_course_plot(
    ui: &mut egui::Ui,
    tv: &TimeView,
    cursor: Option<([usize; 3], Vec<f32>)>,
    region: Option<&crate::session::time::NamedCourse>,
) {
    use egui_plot::{Legend, Line, Plot, PlotPoints, VLine};
    let dt = tv.time_step_s();
    let points = |c: &[f32]| -> PlotPoints<'static> {
        c.iter()
            .enumerate()
            .map(|(t, v)| [t as f64 * dt, f64::from(*v)])
            .collect()
    };
    Plot::new("time course")
        .legend(Legend::default())
        .x_axis_label("time (s)")
        .allow_scroll(false)
        .show(ui, |plot| {
            if let Some((vox, c)) = &cursor {
                plot.line(Line::new(
                    format!("voxel [{}, {}, {}]", vox[0], vox[1], vox[2]),
                    points(c),
                ));
            }
            if let Some((name, c)) = region {
                plot.line(Line::new(name.clone(), points(c)));
            }
            if let TimeShown::Frame(t) = tv.shown {
                plot.vline(VLine::new("now", t as f64 * dt));
            }
        });
}
