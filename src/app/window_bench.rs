//! The window benchmarks behind `mriloop bench loop` and `mriloop bench bold`: the real review
//! window driven headless (`HeadlessWindow`, 1280×800) through its commands, timed per frame,
//! with its memory read from `/proc`. They print with the headless benchmarks' `Figure`s.
//!
//! Invariants: each benchmark works in its own temporary folder, removed afterwards whether it
//! succeeded or not; a wait for the window (a case opening, training starting) has a deadline
//! and fails with the window's error instead of hanging.

use super::headless::HeadlessWindow;
use super::timeseries::{TimeCommand, TimeShown};
use super::training::{TrainCommand, TrainSettings};
use super::{Command, Startup, ViewCommand};
use crate::bench::{fig, median, percentile, Figure};
use crate::render::Orientation;
use std::time::{Duration, Instant};

/// Run frames (one per `poll_ms` at least) until `done` holds (true) or `timeout_s` passes
/// (false).
fn wait(
    w: &mut HeadlessWindow,
    done: &dyn Fn(&HeadlessWindow) -> bool,
    (timeout_s, poll_ms): (u64, u64),
) -> bool {
    w.run_until(
        done,
        Duration::from_secs(timeout_s),
        Duration::from_millis(poll_ms),
    )
}

/// (frame ms, layout ms) of `frames` frames, each paging the axial view one slice.
fn measure_frames(w: &mut HeadlessWindow, frames: usize) -> (Vec<f64>, Vec<f64>) {
    (0..frames.max(1))
        .map(|k| {
            let step = if k % 2 == 0 { 1 } else { -1 };
            let page = ViewCommand::StepSlice(Orientation::Axial, step);
            w.app_mut().push(Command::View(page));
            let pointer = egui::pos2(300.0 + (k % 50) as f32, 300.0);
            let t = w.frame(vec![egui::Event::PointerMoved(pointer)]);
            (t.as_secs_f64() * 1e3, w.last_layout().as_secs_f64() * 1e3)
        })
        .unzip()
}

/// Frame and layout times idle, then while training on the CPU; and the steps trained then.
type LoopTimes = ((Vec<f64>, Vec<f64>), (Vec<f64>, Vec<f64>), usize);

/// Open the demo copy at `root`, measure idle frames, start CPU training, measure again.
fn loop_times(
    root: std::path::PathBuf,
    frames: usize,
) -> Result<(LoopTimes, wgpu::AdapterInfo), String> {
    let mut w = HeadlessWindow::new([1280, 800], Startup::Project(root))?;
    let adapter = w.adapter_info();
    if !wait(
        &mut w,
        &|w| w.app().open_case().is_some() && !w.app().is_loading(),
        (120, 5),
    ) {
        return Err(format!("the demo case did not open: {:?}", w.app().error()));
    }
    for _ in 0..10 {
        w.frame(Vec::new());
    }
    let idle = measure_frames(&mut w, frames);
    let settings = TrainSettings {
        fine_tune: false,
        choices: crate::model::planned::PlanOverrides {
            epochs: Some(1000),
            ..Default::default()
        },
        backend: "cpu".into(),
        only_reviewed: false,
        reinfer_after: false,
        ..TrainSettings::default()
    };
    let train = |c| Command::Train(c);
    w.app_mut().push(train(TrainCommand::Settings(settings)));
    w.app_mut().push(train(TrainCommand::Start));
    if !wait(
        &mut w,
        &|w| !w.app().training().curves.loss.is_empty(),
        (120, 5),
    ) {
        return Err(format!("training did not start: {:?}", w.app().error()));
    }
    let steps_before = w.app().training().curves.loss.len();
    let training = measure_frames(&mut w, frames);
    let steps = w.app().training().curves.loss.len() - steps_before;
    w.app_mut().push(train(TrainCommand::Cancel));
    wait(&mut w, &|w| w.app().training().run.is_none(), (120, 5));
    Ok(((idle, training, steps), adapter))
}

/// UI frame times of the review window (the real app, headless, 1280×800, the demo case,
/// every frame paging a slice so the views redraw), idle and while a CPU training run goes on
/// in the background; `frames` frames each. Returns the figures and notes.
pub fn ui_loop(frames: usize) -> Result<(Vec<Figure>, Vec<String>), String> {
    super::prepare_for_window();
    let dir = std::env::temp_dir().join(format!("mriloop-bench-loop-{}", std::process::id()));
    let root = crate::project::demo::demo_project_copy(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = loop_times(root, frames);
    let _ = std::fs::remove_dir_all(&dir);
    let (((idle, idle_layout), (training, training_layout), steps), adapter) = result?;
    let figures = vec![
        fig("ui_layout_ms_p99_idle", percentile(idle_layout, 99.0), "ms"),
        fig(
            "ui_layout_ms_p99_training",
            percentile(training_layout, 99.0),
            "ms",
        ),
        fig("ui_frame_ms_p50_idle", percentile(idle.clone(), 50.0), "ms"),
        fig("ui_frame_ms_p99_idle", percentile(idle, 99.0), "ms"),
        fig(
            "ui_frame_ms_p50_training",
            percentile(training.clone(), 50.0),
            "ms",
        ),
        fig("ui_frame_ms_p99_training", percentile(training, 99.0), "ms"),
        fig("train_steps_during_measure", steps as f64, "steps"),
    ];
    let notes = vec![format!(
        "window rendered on {} ({:?}, LP_NUM_THREADS={}); training on the CPU backend with {} \
         of {} cores in the background (Linux SCHED_IDLE, niceness {})",
        adapter.name,
        adapter.device_type,
        std::env::var("LP_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        rayon::current_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::background::BACKGROUND_NICENESS
    )];
    Ok((figures, notes))
}

/// This process's resident memory now and its peak (high-water mark), in MiB (Linux).
fn rss_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What `bench bold` measured in the window.
struct BoldTimes {
    /// Resident MiB before opening, once open, the peak; GPU texture MiB of the case.
    memory: [f64; 4],
    open_s: f64,
    switch_ms: f64,
    seed_ms: f64,
    adapter: wgpu::AdapterInfo,
}

/// Open the 4D project at `root`, show 20 time points, compute a seed map; time each.
fn bold_times(root: std::path::PathBuf, frames: usize) -> Result<BoldTimes, String> {
    // The phantom's own peak is not the viewer's: reset the high-water mark (Linux).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_before, _) = rss_mib().unwrap_or((f64::NAN, f64::NAN));
    let t = Instant::now();
    let mut w = HeadlessWindow::new([1280, 800], Startup::Project(root))?;
    let opened =
        |w: &HeadlessWindow| w.app().session().time_view().is_some() && !w.app().is_loading();
    if !wait(&mut w, &opened, (300, 2)) {
        return Err(format!("the 4D case did not open: {:?}", w.app().error()));
    }
    let open_s = t.elapsed().as_secs_f64();
    let mut switch_ms = Vec::new();
    for k in 0..20 {
        let shown = TimeShown::Frame((k * 7) % frames.max(1));
        w.app_mut().push(Command::Time(TimeCommand::Show(shown)));
        switch_ms.push(w.frame(Vec::new()).as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    w.app_mut()
        .push(Command::Time(TimeCommand::SeedMapAtCursor));
    let seeded = |w: &HeadlessWindow| {
        let view = w.app().session().time_view();
        view.is_some_and(|t| t.seed.is_some() && !t.seed_busy())
    };
    if !wait(&mut w, &seeded, (300, 2)) {
        return Err("the seed map did not finish".into());
    }
    let seed_ms = t.elapsed().as_secs_f64() * 1e3;
    w.frame(Vec::new());
    let (rss_open, peak) = rss_mib().unwrap_or((f64::NAN, f64::NAN));
    let gpu = w.case_gpu_bytes() as f64 / (1 << 20) as f64;
    Ok(BoldTimes {
        memory: [rss_before, rss_open, peak, gpu],
        open_s,
        switch_ms: median(switch_ms),
        seed_ms,
        adapter: w.adapter_info(),
    })
}

/// Memory and speed of a 4D case in the review window (headless, 1280×800): a phantom BOLD run
/// of `size`³ voxels × `frames` time points is written, then opened; reports the resident memory
/// before and the peak while opening, the GPU memory of the case's textures (one 3D frame per
/// series, not the whole run), the time to open, to show another time point and to compute a
/// seed map.
pub fn bold(size: usize, frames: usize) -> Result<(Vec<Figure>, Vec<String>), String> {
    super::prepare_for_window();
    let dir = std::env::temp_dir().join(format!("mriloop-bench-bold-{}", std::process::id()));
    let cfg = crate::phantom::PhantomConfig {
        cases: 1,
        seed: 1,
        form: crate::project::InputForm::TimeSeries4d,
        grid: size,
        frames,
        ..Default::default()
    };
    let result = (|| {
        let project = crate::phantom::generate_project(&dir, &cfg, |_, _| {})
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let file_bytes: u64 = project
            .manifest
            .cases
            .iter()
            .flat_map(|c| c.sequences.iter())
            .filter_map(|s| std::fs::metadata(project.resolve(&s.path)).ok())
            .map(|m| m.len())
            .sum();
        Ok::<_, String>((
            bold_times(project.root().to_path_buf(), frames)?,
            file_bytes,
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (times, file_bytes) = result?;
    Ok(bold_report(&times, size, frames, file_bytes))
}

/// The figures and notes of `bench bold`.
fn bold_report(
    times: &BoldTimes,
    size: usize,
    frames: usize,
    file_bytes: u64,
) -> (Vec<Figure>, Vec<String>) {
    let [rss_before, rss_open, peak, gpu] = times.memory;
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    let series_mib = mib(size * size * size * frames * 4);
    let whole_on_gpu = mib(size * size * size * frames * 2);
    let figures = vec![
        fig("bold_rss_before_open_mib", rss_before, "MiB"),
        fig("bold_peak_rss_mib", peak, "MiB"),
        fig("bold_rss_open_mib", rss_open, "MiB"),
        fig("bold_gpu_textures_mib", gpu, "MiB"),
        fig("bold_open_s", times.open_s, "s"),
        fig("bold_time_point_switch_ms", times.switch_ms, "ms"),
        fig("bold_seed_map_ms", times.seed_ms, "ms"),
    ];
    let adapter = &times.adapter;
    let notes = vec![
        format!(
            "{size}x{size}x{size} x {frames} BOLD phantom: {:.1} MiB on disk (int16, gzip), {series_mib:.1} MiB as f32 on the CPU",
            file_bytes as f64 / (1 << 20) as f64
        ),
        format!(
            "the whole run as 2-byte texels would take {whole_on_gpu:.1} MiB of GPU memory; the viewer keeps one frame of it (plus masks and, once made, the seed map)"
        ),
        format!("window rendered on {} ({:?})", adapter.name, adapter.device_type),
    ];
    (figures, notes)
}
