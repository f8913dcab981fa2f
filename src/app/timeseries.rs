//! The time-series panel of a 4D case (a BOLD run): show one time point or a summary (temporal
//! mean, temporal SD), step or play through time, plot the time course at the cursor beside the
//! mean course of the reference (else predicted) region, and overlay the seed map (correlation of
//! every voxel with the cursor voxel), computed off the UI thread.
//!
//! Invariants: the whole series stays on the CPU and the GPU holds one 3D frame of it — the shown
//! time point or summary, rewritten in place (`ViewerGpu::write_image`) — so a long run never has
//! to fit in GPU memory; the series image's CPU `volume` always holds the values shown, so the
//! value under the cursor and the editing tools see what the user sees; a seed map lives in an
//! image slot after the case's sequences and is blended over them, transparent below its
//! threshold.

use super::bridge::ViewerGpu;
use super::loader::{LoadedImage, LoadedSeries};
use super::state::SequenceDisplay;
use super::{Command, MriloopApp};
use crate::project::SequenceName;
use crate::render::Colormap;
use crate::volume::timeseries::{region_mean_course, seed_correlation, time_course, SeedMapError};
use crate::volume::Volume;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

/// What the series' image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeShown {
    /// One time point (from 0).
    Frame(usize),
    /// The temporal mean of every voxel.
    Mean,
    /// The temporal standard deviation of every voxel.
    TemporalSd,
}

/// Time-series commands.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeCommand {
    /// Show a time point or a summary.
    Show(TimeShown),
    /// Step the time point (wrapping); from a summary, go to the first time point.
    Step(i32),
    /// Start or stop playing through the time points.
    Play(bool),
    /// Playing speed.
    SetFramesPerSecond(f32),
    /// Compute the seed map of the voxel under the cursor (in the background) and show it.
    SeedMapAtCursor,
    /// Show the seed map only where r is at least this.
    SetSeedThreshold(f32),
    /// Stop showing the seed map.
    HideSeedMap,
}

/// A seed map in the viewer.
#[derive(Debug, Clone)]
pub struct SeedMap {
    /// The seed voxel (on the series' grid).
    pub seed_vox: [usize; 3],
    /// The image slot it is shown from.
    pub image: usize,
    /// Pearson r per voxel.
    pub r: Volume<f32>,
}

struct SeedJob {
    seed_vox: [usize; 3],
    cancel: Arc<AtomicBool>,
    rx: Receiver<Result<Volume<f32>, SeedMapError>>,
}

/// The time-series state of an open 4D case.
pub struct TimeView {
    /// Which of the case's images is the series.
    pub image: usize,
    /// The series and its summaries.
    pub series: Arc<LoadedSeries>,
    /// What the series' image shows now.
    pub shown: TimeShown,
    /// Playing through the time points.
    pub playing: bool,
    /// Playing speed.
    pub frames_per_s: f32,
    /// Seed map threshold: r shown from here to 1.
    pub seed_threshold: f32,
    /// The seed map shown, if any.
    pub seed: Option<SeedMap>,
    /// What happened last to the seed map, in words.
    pub seed_status: String,
    next_frame_at: Option<f64>,
    job: Option<SeedJob>,
    region: Option<(MaskRevision, Option<NamedCourse>)>,
}

/// A time course with its name in the plot's legend.
type NamedCourse = (String, Vec<f32>);

/// Undo depth, redo depth and stroke length: changes whenever the mask is edited.
type MaskRevision = (usize, usize, usize);

impl TimeView {
    /// The time-series state of a case's image `image` holding `series`, showing time point 0.
    pub fn new(image: usize, series: Arc<LoadedSeries>) -> Self {
        Self {
            image,
            series,
            shown: TimeShown::Frame(0),
            playing: false,
            frames_per_s: 5.0,
            seed_threshold: 0.4,
            seed: None,
            seed_status: String::new(),
            next_frame_at: None,
            job: None,
            region: None,
        }
    }

    /// Number of time points.
    pub fn frames(&self) -> usize {
        self.series.frames.dims()[3]
    }

    /// Seconds between time points.
    pub fn time_step_s(&self) -> f64 {
        self.series.frames.time_step_s()
    }

    /// The values of what `shown` names (one 3D frame's worth).
    pub fn values_of(&self, shown: TimeShown) -> &[f32] {
        let n = self.series.frames.frame_len();
        match shown {
            TimeShown::Frame(t) => {
                let t = t.min(self.frames() - 1);
                &self.series.frames.data()[t * n..(t + 1) * n]
            }
            TimeShown::Mean => self.series.summary.mean.data(),
            TimeShown::TemporalSd => self.series.summary.sd.data(),
        }
    }

    /// The voxel of the series' grid nearest a world point, if inside it.
    pub fn voxel_at(&self, pos_mm: glam::DVec3) -> Option<[usize; 3]> {
        let v = self.series.frames.affine().mm_to_vox(pos_mm)?.round();
        let dims = self.series.frames.dims3();
        let idx = [v.x, v.y, v.z];
        (0..3)
            .all(|a| idx[a] >= 0.0 && (idx[a] as usize) < dims[a])
            .then(|| idx.map(|c| c as usize))
    }

    /// Whether a seed map is being computed.
    pub fn seed_busy(&self) -> bool {
        self.job.is_some()
    }
}

impl MriloopApp {
    /// The open case's time-series state (4D cases).
    pub fn time_view(&self) -> Option<&TimeView> {
        self.open.as_ref()?.time.as_ref()
    }

    /// The time course at the cursor (the series' values there over time), for a 4D case.
    pub fn time_course_at_cursor(&self) -> Option<([usize; 3], Vec<f32>)> {
        let open = self.open.as_ref()?;
        let tv = open.time.as_ref()?;
        let vox = tv.voxel_at(open.viewer.cursor_mm)?;
        Some((vox, time_course(&tv.series.frames, vox)?))
    }

    /// Apply a time-series command (nothing happens without a 4D case).
    pub(super) fn apply_time(&mut self, cmd: TimeCommand) {
        let Some(tv) = self.open.as_mut().and_then(|o| o.time.as_mut()) else {
            return;
        };
        match cmd {
            TimeCommand::Show(shown) => self.show_time(shown),
            TimeCommand::Step(k) => {
                let n = tv.frames() as i64;
                let next = match tv.shown {
                    TimeShown::Frame(t) => (t as i64 + i64::from(k)).rem_euclid(n) as usize,
                    _ => 0,
                };
                self.show_time(TimeShown::Frame(next));
            }
            TimeCommand::Play(on) => {
                tv.playing = on;
                tv.next_frame_at = None;
                if on && !matches!(tv.shown, TimeShown::Frame(_)) {
                    self.show_time(TimeShown::Frame(0));
                }
            }
            TimeCommand::SetFramesPerSecond(f) => tv.frames_per_s = f.clamp(0.5, 60.0),
            TimeCommand::SetSeedThreshold(r) => {
                tv.seed_threshold = r.clamp(-1.0, 1.0);
                if let Some(slot) = tv.seed.as_ref().map(|s| s.image) {
                    let threshold = tv.seed_threshold;
                    if let Some(d) = self
                        .open
                        .as_mut()
                        .and_then(|o| o.viewer.display.get_mut(slot))
                    {
                        d.window_low = threshold;
                        d.window_high = 1.0_f32.max(threshold + 1e-3);
                    }
                }
            }
            TimeCommand::HideSeedMap => {
                if let Some(job) = tv.job.take() {
                    job.cancel.store(true, Ordering::Relaxed);
                }
                if let Some(open) = self.open.as_mut() {
                    if let Some(slot) = open.time.as_ref().and_then(|t| t.seed.as_ref()) {
                        if open.viewer.blend.is_some_and(|(b, _)| b == slot.image) {
                            open.viewer.blend = None;
                        }
                    }
                    if let Some(t) = open.time.as_mut() {
                        t.seed_status = "seed map hidden".into();
                    }
                }
            }
            TimeCommand::SeedMapAtCursor => self.start_seed_map(),
        }
    }

    /// Put `shown` on the series' texture (one frame's upload) and in its CPU volume.
    fn show_time(&mut self, shown: TimeShown) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        let shown = match shown {
            TimeShown::Frame(t) => TimeShown::Frame(t.min(tv.frames() - 1)),
            s => s,
        };
        let (image, previous) = (tv.image, tv.shown);
        tv.shown = shown;
        let values = tv.values_of(shown);
        let Some(rs) = &self.render_state else {
            return;
        };
        let range = {
            let mut renderer = rs.renderer.write();
            match renderer.callback_resources.get_mut::<ViewerGpu>() {
                Some(gpu) => gpu.write_image(&rs.queue, image, values),
                None => return,
            }
        };
        let range = match range {
            Ok(r) => r,
            Err(e) => {
                self.error = Some(format!("case {}: {e}", open.loaded.case_id));
                return;
            }
        };
        if let Some(g) = open.image_grids.get_mut(image) {
            g.value_range = range;
        }
        if let Some(img) = open.loaded.images.get_mut(image) {
            img.volume.data_mut().copy_from_slice(values);
        }
        // The temporal SD is on another scale than the signal: its window starts afresh, and
        // so does the signal's when coming back from it.
        let sd = |s: TimeShown| s == TimeShown::TemporalSd;
        if sd(shown) != sd(previous) {
            if let Some(d) = open.viewer.display.get_mut(image) {
                let colormap = d.colormap;
                *d = SequenceDisplay::new(values, colormap);
            }
        }
    }

    fn start_seed_map(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let cursor = open.viewer.cursor_mm;
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        let Some(seed_vox) = tv.voxel_at(cursor) else {
            tv.seed_status = "the cursor is outside the series' grid".into();
            return;
        };
        if let Some(job) = tv.job.take() {
            job.cancel.store(true, Ordering::Relaxed);
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let (series, stop, ctx) = (tv.series.clone(), cancel.clone(), self.ctx.clone());
        let spawned = std::thread::Builder::new()
            .name("mriloop-seed-map".into())
            .spawn(move || {
                let _ = tx.send(seed_correlation(&series.frames, seed_vox, &stop));
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => {
                tv.seed_status = format!(
                    "computing the seed map of voxel [{}, {}, {}]…",
                    seed_vox[0], seed_vox[1], seed_vox[2]
                );
                tv.job = Some(SeedJob {
                    seed_vox,
                    cancel,
                    rx,
                });
            }
            Err(e) => tv.seed_status = format!("could not start the seed map: {e}"),
        }
    }

    /// Once per frame: advance playback, and take a finished seed map.
    pub(super) fn poll_time(&mut self, now_s: f64) {
        let Some(tv) = self.open.as_mut().and_then(|o| o.time.as_mut()) else {
            return;
        };
        if tv.playing {
            let period = 1.0 / f64::from(tv.frames_per_s.max(0.5));
            match tv.next_frame_at {
                Some(at) if now_s >= at => {
                    tv.next_frame_at = Some(at.max(now_s - period) + period);
                    self.commands.push(Command::Time(TimeCommand::Step(1)));
                }
                Some(_) => {}
                None => tv.next_frame_at = Some(now_s + period),
            }
            if let Some(at) = tv.next_frame_at {
                self.ctx
                    .request_repaint_after(std::time::Duration::from_secs_f64(
                        (at - now_s).max(0.0),
                    ));
            }
        }
        let Some(job) = &tv.job else {
            return;
        };
        let result = match job.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err(SeedMapError::Cancelled),
        };
        let seed_vox = job.seed_vox;
        tv.job = None;
        match result {
            Ok(r) => self.show_seed_map(seed_vox, r),
            Err(SeedMapError::Cancelled) => {}
            Err(e) => tv.seed_status = format!("no seed map: {e}"),
        }
    }

    fn show_seed_map(&mut self, seed_vox: [usize; 3], r: Volume<f32>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(rs) = &self.render_state else {
            return;
        };
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        let slot = tv
            .seed
            .as_ref()
            .map_or(open.loaded.images.len(), |s| s.image);
        let range = {
            let mut renderer = rs.renderer.write();
            match renderer.callback_resources.get_mut::<ViewerGpu>() {
                Some(gpu) => gpu.set_image(&rs.device, &rs.queue, slot, &r),
                None => return,
            }
        };
        let range = match range {
            Ok(range) => range,
            Err(e) => {
                tv.seed_status = format!("the seed map could not be shown: {e}");
                return;
            }
        };
        let mut display = SequenceDisplay::new(r.data(), Colormap::Hot);
        display.window_low = tv.seed_threshold;
        display.window_high = 1.0_f32.max(tv.seed_threshold + 1e-3);
        display.transparent_below_window = true;
        let grid = crate::render::GridInfo {
            affine: *r.affine(),
            dims: r.dims3(),
            value_range: range,
        };
        let image = LoadedImage {
            name: SequenceName::from(format!(
                "seed r [{},{},{}]",
                seed_vox[0], seed_vox[1], seed_vox[2]
            )),
            volume: r.clone(),
            series: None,
        };
        if slot < open.loaded.images.len() {
            open.loaded.images[slot] = image;
            open.viewer.display[slot] = display;
            open.image_grids[slot] = grid;
        } else {
            open.loaded.images.push(image);
            open.viewer.display.push(display);
            open.image_grids.push(grid);
        }
        tv.seed_status = format!(
            "seed map of voxel [{}, {}, {}]",
            seed_vox[0], seed_vox[1], seed_vox[2]
        );
        tv.seed = Some(SeedMap {
            seed_vox,
            image: slot,
            r,
        });
        open.viewer.blend = Some((slot, 0.8));
    }

    /// The mean course of the reference region (else the predicted one), cached until the
    /// mask is edited.
    fn region_course(&mut self) -> Option<NamedCourse> {
        let open = self.open.as_mut()?;
        let e = &open.edits;
        let key = (e.undo.undo_depth(), e.undo.redo_depth(), e.stroke.len());
        let tv = open.time.as_mut()?;
        if let Some((k, course)) = &tv.region {
            if *k == key {
                return course.clone();
            }
        }
        let pick = |m: &Option<Volume<u8>>, what: &str| {
            m.as_ref()
                .and_then(|m| region_mean_course(&tv.series.frames, m))
                .map(|c| (format!("{what} region mean"), c))
        };
        let course = pick(&open.loaded.reference, "reference")
            .or_else(|| pick(&open.loaded.predicted, "predicted"));
        tv.region = Some((key, course.clone()));
        course
    }
}

/// The time-series panel (bottom), shown while a 4D case is open.
pub fn time_panel(ui: &mut egui::Ui, app: &mut MriloopApp, out: &mut Vec<Command>) {
    let region = app.region_course();
    let cursor_course = app.time_course_at_cursor();
    let Some(tv) = app.time_view() else {
        return;
    };
    let blend = app.open_case().and_then(|o| o.viewer.blend);
    let push = |out: &mut Vec<Command>, c: TimeCommand| out.push(Command::Time(c));
    let dt = tv.time_step_s();
    egui::Panel::bottom("time series")
        .resizable(true)
        .default_size(230.0)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Time series");
                ui.label(format!("{} time points, TR {:.2} s", tv.frames(), dt));
                ui.separator();
                let frame = match tv.shown {
                    TimeShown::Frame(t) => Some(t),
                    _ => None,
                };
                if ui.radio(frame.is_some(), "time point").clicked() && frame.is_none() {
                    push(out, TimeCommand::Show(TimeShown::Frame(0)));
                }
                if ui.radio(tv.shown == TimeShown::Mean, "mean").clicked() {
                    push(out, TimeCommand::Show(TimeShown::Mean));
                }
                if ui
                    .radio(tv.shown == TimeShown::TemporalSd, "temporal SD")
                    .clicked()
                {
                    push(out, TimeCommand::Show(TimeShown::TemporalSd));
                }
                ui.separator();
                let mut t = frame.unwrap_or(0);
                let slider = egui::Slider::new(&mut t, 0..=tv.frames() - 1).text("t");
                if ui.add_enabled(frame.is_some(), slider).changed() {
                    push(out, TimeCommand::Show(TimeShown::Frame(t)));
                }
                if let Some(t) = frame {
                    ui.label(format!("{:.1} s", t as f64 * dt));
                }
                let play = if tv.playing { "Pause" } else { "Play" };
                if ui.button(play).clicked() {
                    push(out, TimeCommand::Play(!tv.playing));
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
                    push(out, TimeCommand::SetFramesPerSecond(fps));
                }
            });
            ui.horizontal(|ui| {
                if ui
                    .button("Seed map at cursor")
                    .on_hover_text(
                        "correlation of every voxel's time course with the cursor voxel's",
                    )
                    .clicked()
                {
                    push(out, TimeCommand::SeedMapAtCursor);
                }
                let mut r = tv.seed_threshold;
                if ui
                    .add(egui::Slider::new(&mut r, 0.0..=0.95).text("show r >="))
                    .changed()
                {
                    push(out, TimeCommand::SetSeedThreshold(r));
                }
                if let Some(seed) = &tv.seed {
                    if blend.is_some_and(|(b, _)| b == seed.image) {
                        if ui.button("Hide seed map").clicked() {
                            push(out, TimeCommand::HideSeedMap);
                        }
                    } else if ui.button("Show seed map").clicked() {
                        out.push(Command::SetBlend(Some((seed.image, 0.8))));
                    }
                }
                if tv.seed_busy() {
                    ui.spinner();
                }
                ui.label(&tv.seed_status);
            });
            time_course_plot(ui, tv, cursor_course, region);
        });
}

fn time_course_plot(
    ui: &mut egui::Ui,
    tv: &TimeView,
    cursor: Option<([usize; 3], Vec<f32>)>,
    region: Option<NamedCourse>,
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
            if let Some((name, c)) = &region {
                plot.line(Line::new(name.clone(), points(c)));
            }
            if let TimeShown::Frame(t) = tv.shown {
                plot.vline(VLine::new("now", t as f64 * dt));
            }
        });
}
