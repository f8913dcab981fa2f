//! Benchmarks behind `mriloop bench`: each prints `bench: NAME = VALUE UNIT` lines, with the
//! reference figure the issue names measured in the same run where it can be.

use crate::phantom;
use crate::volume::{read_volume, write_volume, Volume, VolumeError};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Name, e.g. `nifti_load_ms_256`.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit, e.g. `ms`.
    pub unit: String,
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bench: {} = {:.2} {}", self.name, self.value, self.unit)
    }
}

/// A figure from its parts.
fn fig(name: String, value: f64, unit: &str) -> Figure {
    Figure {
        name,
        value,
        unit: unit.into(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Open-time benchmark on `path`: a `size`³ f32 phantom T1 is written there first unless the
/// file exists. Times `read_volume` (median of `repeats`) and, where `python3` with nibabel is
/// present, `nib.load(path).get_fdata()` on the same file in the same run.
/// Returns the figures and, when nibabel was not found, why.
pub fn io(
    path: &Path,
    size: usize,
    repeats: usize,
) -> Result<(Vec<Figure>, Option<String>), VolumeError> {
    let repeats = repeats.max(1);
    if !path.exists() {
        let vol: Volume<f32> = phantom::benchmark_t1(size, 7)?;
        write_volume(path, &vol)?;
    }
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let v = read_volume(path)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(v);
    }
    let mut figures = vec![Figure {
        name: format!("nifti_load_ms_{size}"),
        value: median(times),
        unit: "ms".into(),
    }];
    let script = format!(
        "import sys,time\nimport nibabel as nib\nts=[]\nfor _ in range({repeats}):\n    t=time.perf_counter(); d=nib.load(sys.argv[1]).get_fdata(); ts.append((time.perf_counter()-t)*1e3)\nts.sort(); print(ts[len(ts)//2])\n"
    );
    let note = match Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text.trim().parse::<f64>() {
                Ok(ms) => {
                    figures.push(Figure {
                        name: format!("nibabel_load_ms_{size}"),
                        value: ms,
                        unit: "ms".into(),
                    });
                    None
                }
                Err(_) => Some(format!("nibabel printed {text:?}")),
            }
        }
        Ok(out) => Some(format!(
            "python3 with nibabel not usable: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Some(format!("python3 not found: {e}")),
    };
    Ok((figures, note))
}

/// Redraw benchmark on the default wgpu adapter (lavapipe where there is no GPU): a `size`³
/// image with a mask overlay, three views (axial, coronal, sagittal) tiled across a 1920×1080
/// target, the cursor moving one slice per frame; frames per second over `frames` frames, and
/// beside it the same viewports filled by a flat-colour shader (the device's own floor). Then
/// the time to write a 32³ mask sub-box beside rewriting the whole mask texture (median of
/// `repeats`), each waited for on the GPU. Returns the figures and the adapter's name.
pub fn render(
    size: usize,
    frames: usize,
    repeats: usize,
) -> Result<(Vec<Figure>, String), crate::render::RenderError> {
    use crate::render::{
        wait_idle, CaseTextures, Colormap, FlatPipeline, GpuContext, OffscreenTarget, Orientation,
        SlicePipeline, SlicePlane, SliceStyle, ViewKey, ViewSlots, OFFSCREEN_FORMAT,
    };
    use crate::volume::Affine;
    use glam::DVec3;
    let bad = |e: VolumeError| crate::render::RenderError::NoDevice(e.to_string());
    let gpu = GpuContext::headless()?;
    let n = size.max(8);
    let affine = Affine::from_spacing([1.0, 1.0, 1.0]);
    let c = n as f32 / 2.0;
    let mut image = Volume::filled([n, n, n, 1], affine, 0.0f32).map_err(bad)?;
    let mut mask = Volume::filled([n, n, n, 1], affine, 0u8).map_err(bad)?;
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                let (x, y, z) = (i as f32 - c, j as f32 - c, k as f32 - c);
                let r = (x * x + y * y + z * z).sqrt() / c;
                let at = image.linear_index(i, j, k, 0);
                image.data_mut()[at] = if r < 0.9 {
                    600.0 + 300.0 * (x * 0.2).sin() * (y * 0.15).cos()
                } else {
                    20.0
                };
                if r < 0.2 {
                    mask.data_mut()[at] = 1 + (i % 3) as u8;
                }
            }
        }
    }
    let mut colours = [[0u8; 4]; 256];
    colours[1] = [255, 0, 0, 255];
    colours[2] = [0, 255, 0, 255];
    colours[3] = [0, 0, 255, 255];
    let textures = CaseTextures::upload(
        &gpu.device,
        &gpu.queue,
        &[&image],
        Some(&mask),
        None,
        &colours,
    )?;
    let pipeline = SlicePipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let target_size = [1920u32, 1080u32];
    let target = OffscreenTarget::new(&gpu.device, target_size);
    let mut slots = ViewSlots::default();
    let key = ViewKey {
        base: 0,
        blend: None,
        linear: true,
    };
    let view_w = target_size[0] as f32 / 3.0;
    let half = [
        n as f64 * 0.5 * view_w as f64 / target_size[1] as f64,
        n as f64 * 0.5,
    ];
    let mut draw = |frame: usize| -> Result<(), crate::render::RenderError> {
        let cursor = DVec3::splat(c as f64) + DVec3::splat((frame % 32) as f64 - 16.0);
        let style = SliceStyle {
            window_low: 0.0,
            window_high: 1000.0,
            colormap: Colormap::Grey,
            linear: std::env::var("B_LINEAR").is_ok(),
            reference_opacity: if std::env::var("B_NOREF").is_ok() {
                0.0
            } else {
                0.5
            },
            reference_outline: false,
            predicted_opacity: 0.0,
            crosshair_mm: Some(cursor),
            blend: None,
        };
        for (slot, o) in Orientation::ALL.into_iter().enumerate() {
            let plane = SlicePlane::new(o, cursor, half);
            let b = slots
                .get_or_create(&gpu.device, &pipeline, &textures, slot, key)
                .ok_or_else(|| crate::render::RenderError::NoDevice("no image".into()))?;
            if let Some(u) = b.uniform(&plane, &style, [view_w, target_size[1] as f32]) {
                b.prepare(&gpu.device, &gpu.queue, &pipeline, &u);
            }
        }
        let views: Vec<_> = (0..3)
            .filter_map(|slot| {
                slots.get(slot).map(|b| {
                    (
                        b,
                        [slot as f32 * view_w, 0.0, view_w, target_size[1] as f32],
                    )
                })
            })
            .collect();
        target.draw(&gpu.device, &gpu.queue, &pipeline, &views);
        wait_idle(&gpu.device)
    };
    for f in 0..3 {
        draw(f)?;
    }
    let t = Instant::now();
    let frames = frames.max(1);
    for f in 0..frames {
        draw(f)?;
    }
    let fps = frames as f64 / t.elapsed().as_secs_f64();
    // The floor: the same three viewports filled by a flat-colour shader.
    let flat = FlatPipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let draw_flat = || -> Result<(), crate::render::RenderError> {
        target.draw_with(&gpu.device, &gpu.queue, |pass| {
            for slot in 0..3 {
                pass.set_viewport(
                    slot as f32 * view_w,
                    0.0,
                    view_w,
                    target_size[1] as f32,
                    0.0,
                    1.0,
                );
                flat.draw(pass);
            }
        });
        wait_idle(&gpu.device)
    };
    draw_flat()?;
    let t = Instant::now();
    for _ in 0..frames {
        draw_flat()?;
    }
    let flat_fps = frames as f64 / t.elapsed().as_secs_f64();

    let labels = textures
        .reference()
        .ok_or_else(|| crate::render::RenderError::NoDevice("no mask".into()))?;
    let time_box = |min: [usize; 3], max: [usize; 3]| -> Result<f64, crate::render::RenderError> {
        let mut times = Vec::new();
        for _ in 0..repeats.max(1) {
            wait_idle(&gpu.device)?;
            let t = Instant::now();
            labels.update_sub_box(&gpu.queue, &mask, min, max)?;
            gpu.queue.submit([]);
            wait_idle(&gpu.device)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(times))
    };
    let b = 32.min(n);
    let lo = (n - b) / 2;
    let sub_ms = time_box([lo; 3], [lo + b; 3])?;
    let full_ms = time_box([0; 3], [n; 3])?;
    Ok((
        vec![
            fig(format!("render_fps_{n}"), fps, "fps"),
            fig("flat_fill_fps_1080p".into(), flat_fps, "fps"),
            fig("subbox_update_ms_32".into(), sub_ms, "ms"),
            fig(format!("full_mask_upload_ms_{n}"), full_ms, "ms"),
            fig(
                "subbox_vs_full_upload_speedup".into(),
                full_ms / sub_ms.max(1e-9),
                "x",
            ),
        ],
        format!("{} ({:?})", gpu.adapter_info.name, gpu.adapter_info.backend),
    ))
}

/// Brush latency on the default wgpu adapter: from a brush event (a 2D round dab of `radius_mm`
/// in an axial slice of a `size`³ 1 mm mask) to the mask texture updated on the GPU (the dab's
/// sub-box written and the GPU idle), median of `repeats` dabs at moving positions; beside the
/// time to rewrite the whole mask texture. Returns the figures and the adapter's name.
pub fn edit(
    size: usize,
    radius_mm: f64,
    repeats: usize,
) -> Result<(Vec<Figure>, String), crate::render::RenderError> {
    use crate::edit::tools::{brush_dab, Brush, BrushShape, BrushSpace, EditPlane, PaintRules};
    use crate::render::{wait_idle, GpuContext, LabelTexture};
    use crate::volume::Affine;
    use glam::DVec3;
    let gpu = GpuContext::headless()?;
    let n = size.max(16);
    let mut mask = Volume::filled([n, n, n, 1], Affine::from_spacing([1.0; 3]), 0u8)
        .map_err(|e| crate::render::RenderError::NoDevice(e.to_string()))?;
    let texture = LabelTexture::upload(&gpu.device, &gpu.queue, &mask)?;
    wait_idle(&gpu.device)?;
    let rules = PaintRules::default();
    let c = n as f64 / 2.0;
    let mut dab_ms = Vec::new();
    for k in 0..repeats.max(1) {
        let at = DVec3::new(c + (k % 20) as f64 - 10.0, c + (k % 7) as f64, c);
        let brush = Brush {
            shape: BrushShape::Round,
            radius_mm,
            space: BrushSpace::Plane(EditPlane {
                origin_mm: at,
                right: DVec3::NEG_X,
                up: DVec3::Y,
                thickness_mm: 1.0,
            }),
            value: 1 + (k % 3) as u8,
        };
        let t = Instant::now();
        if let Some(d) = brush_dab(&mut mask, &brush, at, &rules, None) {
            texture.update_sub_box(&gpu.queue, &mask, d.region.min, d.region.max)?;
        }
        gpu.queue.submit([]);
        wait_idle(&gpu.device)?;
        dab_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut full_ms = Vec::new();
    for _ in 0..repeats.clamp(1, 5) {
        let t = Instant::now();
        texture.update_sub_box(&gpu.queue, &mask, [0; 3], [n; 3])?;
        gpu.queue.submit([]);
        wait_idle(&gpu.device)?;
        full_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((
        vec![
            fig("brush_to_texture_ms".into(), median(dab_ms), "ms"),
            fig(format!("full_mask_upload_ms_{n}"), median(full_ms), "ms"),
        ],
        format!("{} ({:?})", gpu.adapter_info.name, gpu.adapter_info.backend),
    ))
}

/// Training speed of the 3D network (2 input sequences, 3 labels, 2 classes, base 8, depth 3) at
/// `patch`³ and `batch`, on the CPU (burn flex) and, when a hardware GPU is present, on wgpu;
/// beside the same architecture in PyTorch (`benches/reference/train_torch.py`) when python3 with
/// torch is installed. Returns the figures and notes on what was skipped.
pub fn train(
    patch: usize,
    batch: usize,
    steps: usize,
    software_gpu: bool,
) -> (Vec<Figure>, Vec<String>) {
    use crate::model::{train_step, Batch, MultiTaskUNetConfig, TrainingConfig};
    use burn::prelude::*;
    use burn::tensor::{Distribution, Int};
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let config = TrainingConfig::new(MultiTaskUNetConfig::new(2, 3, 2).with_base_channels(8));
    let run = |device: Device| -> f64 {
        let ad = device.autodiff();
        let mut model = config.model.init(&ad);
        let mut optim = burn::optim::AdamConfig::new().init();
        let p = patch;
        let b = Batch {
            images: Tensor::<5>::random([batch, 2, p, p, p], Distribution::Normal(0.0, 1.0), &ad),
            masks: Tensor::<4, Int>::random([batch, p, p, p], Distribution::Uniform(0.0, 3.0), &ad),
            classes: Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, 2.0), &ad),
            weights: None,
        };
        // The warm-up step compiles kernels (wgpu) and allocates.
        let (m, _) = train_step(model, &mut optim, &b, &config);
        model = m;
        let t = Instant::now();
        for _ in 0..steps.max(1) {
            let (m, _) = train_step(model, &mut optim, &b, &config);
            model = m;
        }
        steps.max(1) as f64 / t.elapsed().as_secs_f64()
    };
    figures.push(fig(
        "train_steps_per_s_cpu".into(),
        run(Device::flex()),
        "steps/s",
    ));
    let (device, about) = crate::model::choose_device("auto");
    if about.starts_with("GPU") {
        figures.push(fig("train_steps_per_s_gpu".into(), run(device), "steps/s"));
    } else if software_gpu {
        // wgpu on the software Vulkan device (lavapipe): the same burn code path as a GPU.
        figures.push(fig(
            "train_steps_per_s_wgpu_software".into(),
            run(Device::wgpu(DeviceKind::DefaultDevice)),
            "steps/s",
        ));
    } else {
        notes.push(format!(
            "wgpu skipped: {about} (on lavapipe the first step alone compiles shaders for minutes; --software-gpu measures it)"
        ));
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/train_torch.py");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (dev, name) in [
        ("cpu", "torch_train_steps_per_s_cpu"),
        ("cuda", "torch_train_steps_per_s_gpu"),
    ] {
        let out = Command::new("python3")
            .arg(&script)
            .args([
                "--device",
                dev,
                "--patch",
                &patch.to_string(),
                "--batch",
                &batch.to_string(),
            ])
            .args([
                "--steps",
                &steps.max(1).to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("torch_train_steps_per_s = "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    figures.push(fig(name.into(), v, "steps/s"));
                }
            }
            Ok(o) => notes.push(format!(
                "PyTorch on {dev} skipped: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("the reference script failed")
            )),
            Err(e) => notes.push(format!("PyTorch skipped: cannot run python3: {e}")),
        }
    }
    (figures, notes)
}

/// Percentile `q` (0–100) of `v` (nearest rank).
fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// UI frame times of the review window (the real app, headless, 1280×800, the demo case,
/// every frame paging a slice so the views redraw), idle and while a CPU training run goes on
/// in the background; `frames` frames each. Returns the figures and notes.
pub fn ui_loop(frames: usize) -> Result<(Vec<Figure>, Vec<String>), String> {
    use crate::app::headless::HeadlessWindow;
    use crate::app::training::{TrainCommand, TrainSettings};
    use crate::app::{Command, Startup, ViewCommand};
    use crate::render::Orientation;
    crate::app::prepare_for_window();
    let dir = std::env::temp_dir().join(format!("mriloop-bench-loop-{}", std::process::id()));
    let root =
        crate::app::demo_project_copy(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = (|| {
        let mut w = HeadlessWindow::new([1280, 800], Startup::Project(root))?;
        let adapter = w.adapter_info();
        let wait = |w: &mut HeadlessWindow, done: &dyn Fn(&HeadlessWindow) -> bool| {
            w.run_until(done, Duration::from_secs(120), Duration::from_millis(5))
        };
        if !wait(&mut w, &|w| {
            w.app().open_case().is_some() && !w.app().is_loading()
        }) {
            return Err(format!("the demo case did not open: {:?}", w.app().error()));
        }
        // (frame ms, layout ms) per frame.
        let measure = |w: &mut HeadlessWindow| -> (Vec<f64>, Vec<f64>) {
            (0..frames.max(1))
                .map(|k| {
                    let step = if k % 2 == 0 { 1 } else { -1 };
                    w.app_mut()
                        .push(Command::View(ViewCommand::StepSlice(Orientation::Axial, step)));
                    let t = w.frame(vec![egui::Event::PointerMoved(egui::pos2(
                        300.0 + (k % 50) as f32,
                        300.0,
                    ))]);
                    (t.as_secs_f64() * 1e3, w.last_layout().as_secs_f64() * 1e3)
                })
                .unzip()
        };
        for _ in 0..10 {
            w.frame(Vec::new());
        }
        let idle = measure(&mut w);
        let settings = TrainSettings {
            fine_tune: false,
            epochs: 1000,
            backend: "cpu".into(),
            only_reviewed: false,
            reinfer_after: false,
            ..TrainSettings::default()
        };
        w.app_mut()
            .push(Command::Train(TrainCommand::Settings(settings)));
        w.app_mut().push(Command::Train(TrainCommand::Start));
        if !wait(&mut w, &|w| !w.app().training().curves.loss.is_empty()) {
            return Err(format!("training did not start: {:?}", w.app().error()));
        }
        let steps_before = w.app().training().curves.loss.len();
        let training = measure(&mut w);
        let steps = w.app().training().curves.loss.len() - steps_before;
        w.app_mut().push(Command::Train(TrainCommand::Cancel));
        wait(&mut w, &|w| w.app().training().run.is_none());
        Ok((idle, training, steps, adapter))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let ((idle, idle_layout), (training, training_layout), steps, adapter) = result?;
    let figures = vec![
        fig(
            "ui_layout_ms_p99_idle".into(),
            percentile(idle_layout, 99.0),
            "ms",
        ),
        fig(
            "ui_layout_ms_p99_training".into(),
            percentile(training_layout, 99.0),
            "ms",
        ),
        fig(
            "ui_frame_ms_p50_idle".into(),
            percentile(idle.clone(), 50.0),
            "ms",
        ),
        fig("ui_frame_ms_p99_idle".into(), percentile(idle, 99.0), "ms"),
        fig(
            "ui_frame_ms_p50_training".into(),
            percentile(training.clone(), 50.0),
            "ms",
        ),
        fig(
            "ui_frame_ms_p99_training".into(),
            percentile(training, 99.0),
            "ms",
        ),
        fig("train_steps_during_measure".into(), steps as f64, "steps"),
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

/// Memory and speed of a 4D case in the review window (headless, 1280×800): a phantom BOLD run
/// of `size`³ voxels × `frames` time points is written, then opened; reports the resident memory
/// before and the peak while opening, the GPU memory of the case's textures (one 3D frame per
/// series, not the whole run), the time to open, to show another time point and to compute a
/// seed map.
pub fn bold(size: usize, frames: usize) -> Result<(Vec<Figure>, Vec<String>), String> {
    use crate::app::headless::HeadlessWindow;
    use crate::app::timeseries::{TimeCommand, TimeShown};
    use crate::app::{Command, Startup};
    crate::app::prepare_for_window();
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
        // The phantom's own peak is not the viewer's: reset the high-water mark (Linux).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let (rss_before, _) = rss_mib().unwrap_or((f64::NAN, f64::NAN));
        let t = Instant::now();
        let mut w =
            HeadlessWindow::new([1280, 800], Startup::Project(project.root().to_path_buf()))?;
        let wait = |w: &mut HeadlessWindow, done: &dyn Fn(&HeadlessWindow) -> bool| {
            w.run_until(done, Duration::from_secs(300), Duration::from_millis(2))
        };
        if !wait(&mut w, &|w| {
            w.app().session().time_view().is_some() && !w.app().is_loading()
        }) {
            return Err(format!("the 4D case did not open: {:?}", w.app().error()));
        }
        let open_s = t.elapsed().as_secs_f64();
        let mut switch_ms = Vec::new();
        for k in 0..20 {
            w.app_mut()
                .push(Command::Time(TimeCommand::Show(TimeShown::Frame(
                    (k * 7) % frames,
                ))));
            switch_ms.push(w.frame(Vec::new()).as_secs_f64() * 1e3);
        }
        let t = Instant::now();
        w.app_mut()
            .push(Command::Time(TimeCommand::SeedMapAtCursor));
        if !wait(&mut w, &|w| {
            w.app()
                .session().time_view()
                .is_some_and(|t| t.seed.is_some() && !t.seed_busy())
        }) {
            return Err("the seed map did not finish".into());
        }
        let seed_ms = t.elapsed().as_secs_f64() * 1e3;
        w.frame(Vec::new());
        let (rss_open, peak) = rss_mib().unwrap_or((f64::NAN, f64::NAN));
        let gpu = w.case_gpu_bytes() as f64 / (1 << 20) as f64;
        let adapter = w.adapter_info();
        let memory = [rss_before, rss_open, peak, gpu];
        Ok((
            memory,
            open_s,
            median(switch_ms),
            seed_ms,
            file_bytes,
            adapter,
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (memory, open_s, switch_ms, seed_ms, file_bytes, adapter) = result?;
    let [rss_before, rss_open, peak, gpu] = memory;
    let series_mib = (size * size * size * frames * 4) as f64 / (1 << 20) as f64;
    let whole_on_gpu = (size * size * size * frames * 2) as f64 / (1 << 20) as f64;
    let figures = vec![
        fig("bold_rss_before_open_mib".into(), rss_before, "MiB"),
        fig("bold_peak_rss_mib".into(), peak, "MiB"),
        fig("bold_rss_open_mib".into(), rss_open, "MiB"),
        fig("bold_gpu_textures_mib".into(), gpu, "MiB"),
        fig("bold_open_s".into(), open_s, "s"),
        fig("bold_time_point_switch_ms".into(), switch_ms, "ms"),
        fig("bold_seed_map_ms".into(), seed_ms, "ms"),
    ];
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
    Ok((figures, notes))
}
