//! The time series of an open 4D case (a BOLD run): which time point or summary (temporal mean,
//! temporal SD) the series' image shows, playback, the time course at the cursor and the mean
//! course of the reference (else predicted) region, and the seed map (correlation of every voxel
//! with the cursor voxel), computed by a worker.
//!
//! Invariants: the whole series stays on the CPU; the series image's CPU `volume` always holds
//! the values shown (reported in `Changes::images_written`, so the window puts one frame on the
//! GPU), so the value under the cursor and the editing tools see what the user sees; a seed map
//! lives in an image slot after the case's sequences (`Changes::images_set`) and is blended over
//! them, transparent below its threshold.

use super::load::{LoadedImage, LoadedSeries};
use super::view::SequenceDisplay;
use super::Session;
use crate::project::SequenceName;
use crate::render::{Colormap, ImageTexture};
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
    rx: Receiver<Result<Result<Volume<f32>, SeedMapError>, super::WorkerError>>,
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
pub type NamedCourse = (String, Vec<f32>);

/// Undo depth, redo depth and stroke length (changes whenever the mask is edited), and the
/// prediction's revision.
type MaskRevision = ((usize, usize, usize), u64);

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

    /// The mean course of the reference region (else the predicted one), as last computed
    /// (kept up to date by every tick).
    pub fn region_course(&self) -> Option<&NamedCourse> {
        self.region.as_ref()?.1.as_ref()
    }

    /// When playback shows its next time point (seconds on the tick clock), if playing.
    pub fn next_frame_at(&self) -> Option<f64> {
        self.next_frame_at.filter(|_| self.playing)
    }
}

impl Session {
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
            TimeCommand::SetSeedThreshold(r) => self.set_seed_threshold(r),
            TimeCommand::HideSeedMap => self.hide_seed_map(),
            TimeCommand::SeedMapAtCursor => self.start_seed_map(),
        }
    }

    fn set_seed_threshold(&mut self, r: f32) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        tv.seed_threshold = r.clamp(-1.0, 1.0);
        if let Some(slot) = tv.seed.as_ref().map(|s| s.image) {
            let threshold = tv.seed_threshold;
            if let Some(d) = open.layers.get_mut(slot).map(|l| &mut l.display) {
                d.window_low = threshold;
                d.window_high = 1.0_f32.max(threshold + 1e-3);
            }
        }
    }

    fn hide_seed_map(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        if let Some(job) = tv.job.take() {
            job.cancel.store(true, Ordering::Relaxed);
        }
        if let Some(slot) = tv.seed.as_ref() {
            if open.viewer.blend.is_some_and(|(b, _)| b == slot.image) {
                open.viewer.blend = None;
            }
        }
        tv.seed_status = "seed map hidden".into();
    }

    /// Put `shown` in the series image's CPU volume (the window uploads that one frame).
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
        let Some(layer) = open.layers.get_mut(image) else {
            return;
        };
        if layer.volume.data().len() != values.len() {
            return;
        }
        layer.volume.data_mut().copy_from_slice(values);
        layer.grid.value_range = ImageTexture::range_of(values);
        // The temporal SD is on another scale than the signal: its window starts afresh, and
        // so does the signal's when coming back from it.
        let sd = |s: TimeShown| s == TimeShown::TemporalSd;
        if sd(shown) != sd(previous) {
            let colormap = layer.display.colormap;
            layer.display = SequenceDisplay::new(values, colormap);
        }
        self.pending.images_written.push(image);
    }

    fn start_seed_map(&mut self) {
        let wake = self.jobs.waker();
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
        let (series, stop) = (tv.series.clone(), cancel.clone());
        let spawned = std::thread::Builder::new()
            .name("mriloop-seed-map".into())
            .spawn(move || {
                let r = super::jobs::catch_worker("the seed map", || {
                    seed_correlation(&series.frames, seed_vox, &stop)
                });
                let _ = tx.send(r);
                wake();
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

    /// Once per tick: advance playback, take a finished seed map, refresh the region course.
    pub(super) fn poll_time(&mut self, now_s: f64) {
        self.refresh_region_course();
        let Some(tv) = self.open.as_mut().and_then(|o| o.time.as_mut()) else {
            return;
        };
        if tv.playing {
            let period = 1.0 / f64::from(tv.frames_per_s.max(0.5));
            match tv.next_frame_at {
                Some(at) if now_s >= at => {
                    tv.next_frame_at = Some(at.max(now_s - period) + period);
                    self.apply_time(TimeCommand::Step(1));
                }
                Some(_) => {}
                None => tv.next_frame_at = Some(now_s + period),
            }
        }
        let Some(tv) = self.open.as_mut().and_then(|o| o.time.as_mut()) else {
            return;
        };
        let Some(job) = &tv.job else {
            return;
        };
        let result = match job.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Ok(Err(SeedMapError::Cancelled)),
        };
        let seed_vox = job.seed_vox;
        tv.job = None;
        match result {
            Ok(Ok(r)) => self.show_seed_map(seed_vox, r),
            Ok(Err(SeedMapError::Cancelled)) => {}
            Ok(Err(e)) => tv.seed_status = format!("no seed map: {e}"),
            Err(e) => tv.seed_status = format!("no seed map: {e}"),
        }
    }

    fn show_seed_map(&mut self, seed_vox: [usize; 3], r: Volume<f32>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        let slot = tv.seed.as_ref().map_or(open.layers.len(), |s| s.image);
        let mut display = SequenceDisplay::new(r.data(), Colormap::Hot);
        display.window_low = tv.seed_threshold;
        display.window_high = 1.0_f32.max(tv.seed_threshold + 1e-3);
        display.transparent_below_window = true;
        let [i, j, k] = seed_vox;
        let image = LoadedImage {
            name: SequenceName::from(format!("seed r [{i},{j},{k}]")),
            volume: r.clone(),
            series: None,
        };
        let layer = super::Layer::of(image, display);
        if slot < open.layers.len() {
            open.layers[slot] = layer;
        } else {
            open.layers.push(layer);
        }
        open.viewer.layer_count = open.layers.len();
        tv.seed_status = format!("seed map of voxel [{i}, {j}, {k}]");
        tv.seed = Some(SeedMap {
            seed_vox,
            image: slot,
            r,
        });
        open.viewer.blend = Some((slot, 0.8));
        self.pending.images_set.push(slot);
    }

    /// Recompute the region's mean course when the mask was edited since it was computed.
    fn refresh_region_course(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let e = &open.edits;
        let key = (e.undo.undo_depth(), e.undo.redo_depth(), e.stroke.len());
        let predicted_key = open.predicted_revision;
        let Some(tv) = open.time.as_mut() else {
            return;
        };
        if tv
            .region
            .as_ref()
            .is_some_and(|(k, _)| *k == (key, predicted_key))
        {
            return;
        }
        let pick = |m: &Option<Volume<u8>>, what: &str| {
            m.as_ref()
                .and_then(|m| region_mean_course(&tv.series.frames, m))
                .map(|c| (format!("{what} region mean"), c))
        };
        let course =
            pick(&open.reference, "reference").or_else(|| pick(&open.predicted, "predicted"));
        tv.region = Some(((key, predicted_key), course));
    }
}
