//! Headless benchmarks behind `mriloop bench` (io, render, edit, train): each returns figures
//! printed as `bench: NAME = VALUE UNIT` lines, with the reference figure the issue names
//! measured in the same run where it can be. The window benchmarks (`bench loop`, `bench bold`)
//! drive the real window and live with it in `src/app/window_bench.rs`.
//!
//! Invariants: nothing here imports the window (`src/app/`); every figure is a median (or a
//! percentile) of repeated runs after a warm-up; GPU timings wait for the GPU to be idle.

use crate::model::Precision;
use crate::phantom;
use crate::render::{
    wait_idle, CaseTextures, Colormap, FlatPipeline, GpuContext, OffscreenTarget, Orientation,
    RenderError, SlicePipeline, SlicePlane, SliceStyle, ViewKey, ViewSlots, OFFSCREEN_FORMAT,
};
use crate::volume::{read_volume, write_volume, Affine, Volume, VolumeError};
use glam::DVec3;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

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
pub fn fig(name: impl Into<String>, value: f64, unit: &str) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit: unit.into(),
    }
}

/// The median of `v` (the upper one of an even count; NaN if empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Percentile `q` (0–100) of `v` (nearest rank; NaN if empty).
pub fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Milliseconds since `t`.
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The last line of a failed command's standard error, or `fallback`.
fn last_line(stderr: &[u8], fallback: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines().last().unwrap_or(fallback).to_string()
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
        times.push(ms_since(t));
        std::hint::black_box(v);
    }
    let mut figures = vec![fig(format!("nifti_load_ms_{size}"), median(times), "ms")];
    let note = match nibabel_load_ms(path, repeats) {
        Ok(ms) => {
            figures.push(fig(format!("nibabel_load_ms_{size}"), ms, "ms"));
            None
        }
        Err(why) => Some(why),
    };
    Ok((figures, note))
}

/// Median time of nibabel's `load(path).get_fdata()` over `repeats`, or why it could not run.
fn nibabel_load_ms(path: &Path, repeats: usize) -> Result<f64, String> {
    let script = format!(
        "import sys,time\nimport nibabel as nib\nts=[]\nfor _ in range({repeats}):\n    t=time.perf_counter(); d=nib.load(sys.argv[1]).get_fdata(); ts.append((time.perf_counter()-t)*1e3)\nts.sort(); print(ts[len(ts)//2])\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(path)
        .output()
        .map_err(|e| format!("python3 not found: {e}"))?;
    if !out.status.success() {
        let why = last_line(&out.stderr, "");
        return Err(format!("python3 with nibabel not usable: {why}"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("nibabel printed {text:?}"))
}

/// A `n`³ 1 mm test case: a textured sphere (radius 0.9 of the half-edge) on a dark
/// background, and a three-label blob at its centre.
fn sphere_case(n: usize) -> Result<(Volume<f32>, Volume<u8>), VolumeError> {
    let affine = Affine::from_spacing([1.0, 1.0, 1.0]);
    let c = n as f32 / 2.0;
    let mut image = Volume::filled([n, n, n, 1], affine, 0.0f32)?;
    let mut mask = Volume::filled([n, n, n, 1], affine, 0u8)?;
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
    Ok((image, mask))
}

/// Three tri-planar views of one case drawn side by side into a 1920×1080 offscreen target.
struct ThreeViews<'a> {
    gpu: &'a GpuContext,
    textures: &'a CaseTextures,
    pipeline: SlicePipeline,
    target: OffscreenTarget,
    slots: ViewSlots,
    /// Edge of the (cubic) volume in voxels.
    n: usize,
}

/// Target size of the render benchmark.
const TARGET: [u32; 2] = [1920, 1080];

impl ThreeViews<'_> {
    fn view_width(&self) -> f32 {
        TARGET[0] as f32 / 3.0
    }

    /// The style of a frame with the cursor at `cursor` (env `B_LINEAR`, `B_NOREF` vary it).
    fn style(cursor: DVec3) -> SliceStyle {
        SliceStyle {
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
        }
    }

    /// Draw frame `frame` (the cursor moves one voxel per frame) and wait for the GPU.
    fn draw(&mut self, frame: usize) -> Result<(), RenderError> {
        let (gpu, n, view_w) = (self.gpu, self.n as f64, self.view_width());
        let cursor = DVec3::splat(n / 2.0) + DVec3::splat((frame % 32) as f64 - 16.0);
        let style = Self::style(cursor);
        let half = [n * 0.5 * view_w as f64 / TARGET[1] as f64, n * 0.5];
        let key = ViewKey {
            base: 0,
            blend: None,
            linear: true,
        };
        for (slot, o) in Orientation::ALL.into_iter().enumerate() {
            let plane = SlicePlane::new(o, cursor, half);
            let b = self
                .slots
                .get_or_create(&gpu.device, &self.pipeline, self.textures, slot, key)
                .ok_or_else(|| RenderError::NoDevice("no image".into()))?;
            if let Some(u) = b.uniform(&plane, &style, [view_w, TARGET[1] as f32]) {
                b.prepare(&gpu.device, &gpu.queue, &self.pipeline, &u);
            }
        }
        let views: Vec<_> = (0..3)
            .filter_map(|slot| {
                let rect = [slot as f32 * view_w, 0.0, view_w, TARGET[1] as f32];
                self.slots.get(slot).map(|b| (b, rect))
            })
            .collect();
        self.target
            .draw(&gpu.device, &gpu.queue, &self.pipeline, &views);
        wait_idle(&gpu.device)
    }

    /// The floor: the same three viewports filled by a flat-colour shader.
    fn draw_flat(&self, flat: &FlatPipeline) -> Result<(), RenderError> {
        let view_w = self.view_width();
        self.target
            .draw_with(&self.gpu.device, &self.gpu.queue, |pass| {
                for slot in 0..3 {
                    let x = slot as f32 * view_w;
                    pass.set_viewport(x, 0.0, view_w, TARGET[1] as f32, 0.0, 1.0);
                    flat.draw(pass);
                }
            });
        wait_idle(&self.gpu.device)
    }
}

/// Frames per second of `draw` over `frames` frames, after 3 warm-up frames.
fn frames_per_second(
    frames: usize,
    mut draw: impl FnMut(usize) -> Result<(), RenderError>,
) -> Result<f64, RenderError> {
    for f in 0..3 {
        draw(f)?;
    }
    let frames = frames.max(1);
    let t = Instant::now();
    for f in 0..frames {
        draw(f)?;
    }
    Ok(frames as f64 / t.elapsed().as_secs_f64())
}

/// Median time (ms) over `repeats` to write the `[min, max)` box of `mask` into `labels` and
/// wait for the GPU.
fn upload_ms(
    gpu: &GpuContext,
    labels: &crate::render::LabelTexture,
    mask: &Volume<u8>,
    (min, max): ([usize; 3], [usize; 3]),
    repeats: usize,
) -> Result<f64, RenderError> {
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        wait_idle(&gpu.device)?;
        let t = Instant::now();
        labels.update_sub_box(&gpu.queue, mask, min, max)?;
        gpu.queue.submit([]);
        wait_idle(&gpu.device)?;
        times.push(ms_since(t));
    }
    Ok(median(times))
}

/// The adapter's name and backend, for the report.
fn adapter_name(gpu: &GpuContext) -> String {
    format!("{} ({:?})", gpu.adapter_info.name, gpu.adapter_info.backend)
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
) -> Result<(Vec<Figure>, String), RenderError> {
    let gpu = GpuContext::headless()?;
    let n = size.max(8);
    let (image, mask) = sphere_case(n).map_err(|e| RenderError::NoDevice(e.to_string()))?;
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
    let mut views = ThreeViews {
        gpu: &gpu,
        textures: &textures,
        pipeline: SlicePipeline::new(&gpu.device, OFFSCREEN_FORMAT),
        target: OffscreenTarget::new(&gpu.device, TARGET),
        slots: ViewSlots::default(),
        n,
    };
    let fps = frames_per_second(frames, |f| views.draw(f))?;
    let flat = FlatPipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let flat_fps = frames_per_second(frames, |_| views.draw_flat(&flat))?;
    let labels = textures
        .reference()
        .ok_or_else(|| RenderError::NoDevice("no mask".into()))?;
    let (b, lo) = (32.min(n), (n - 32.min(n)) / 2);
    let sub_ms = upload_ms(&gpu, labels, &mask, ([lo; 3], [lo + b; 3]), repeats)?;
    let full_ms = upload_ms(&gpu, labels, &mask, ([0; 3], [n; 3]), repeats)?;
    let speedup = full_ms / sub_ms.max(1e-9);
    let figures = vec![
        fig(format!("render_fps_{n}"), fps, "fps"),
        fig("flat_fill_fps_1080p", flat_fps, "fps"),
        fig("subbox_update_ms_32", sub_ms, "ms"),
        fig(format!("full_mask_upload_ms_{n}"), full_ms, "ms"),
        fig("subbox_vs_full_upload_speedup", speedup, "x"),
    ];
    Ok((figures, adapter_name(&gpu)))
}

/// Brush latency on the default wgpu adapter: from a brush event (a 2D round dab of `radius_mm`
/// in an axial slice of a `size`³ 1 mm mask) to the mask texture updated on the GPU (the dab's
/// sub-box written and the GPU idle), median of `repeats` dabs at moving positions; beside the
/// time to rewrite the whole mask texture. Returns the figures and the adapter's name.
pub fn edit(
    size: usize,
    radius_mm: f64,
    repeats: usize,
) -> Result<(Vec<Figure>, String), RenderError> {
    use crate::edit::tools::{brush_dab, PaintRules};
    let gpu = GpuContext::headless()?;
    let n = size.max(16);
    let mut mask = Volume::filled([n, n, n, 1], Affine::from_spacing([1.0; 3]), 0u8)
        .map_err(|e| RenderError::NoDevice(e.to_string()))?;
    let texture = crate::render::LabelTexture::upload(&gpu.device, &gpu.queue, &mask)?;
    wait_idle(&gpu.device)?;
    let rules = PaintRules::default();
    let c = n as f64 / 2.0;
    let mut dab_ms = Vec::new();
    for k in 0..repeats.max(1) {
        let at = DVec3::new(c + (k % 20) as f64 - 10.0, c + (k % 7) as f64, c);
        let brush = axial_round_brush(at, radius_mm, 1 + (k % 3) as u8);
        let t = Instant::now();
        if let Some(d) = brush_dab(&mut mask, &brush, at, &rules, None) {
            texture.update_sub_box(&gpu.queue, &mask, d.region.min, d.region.max)?;
        }
        gpu.queue.submit([]);
        wait_idle(&gpu.device)?;
        dab_ms.push(ms_since(t));
    }
    let full_ms = upload_ms(&gpu, &texture, &mask, ([0; 3], [n; 3]), repeats.clamp(1, 5))?;
    let figures = vec![
        fig("brush_to_texture_ms", median(dab_ms), "ms"),
        fig(format!("full_mask_upload_ms_{n}"), full_ms, "ms"),
    ];
    Ok((figures, adapter_name(&gpu)))
}

/// A round 2D brush of `radius_mm` painting `value` in the axial slice through `at`.
fn axial_round_brush(at: DVec3, radius_mm: f64, value: u8) -> crate::edit::tools::Brush {
    use crate::edit::tools::{Brush, BrushShape, BrushSpace, EditPlane};
    let plane = EditPlane {
        origin_mm: at,
        right: DVec3::NEG_X,
        up: DVec3::Y,
        thickness_mm: 1.0,
    };
    Brush {
        shape: BrushShape::Round,
        radius_mm,
        space: BrushSpace::Plane(plane),
        value,
    }
}

/// The surface benchmarks' `size`³ (at least 32³) 1 mm mask: a ball of half the grid's radius
/// (label 1) and a small one beside it (label 2).
fn surface_bench_mask(size: usize) -> Option<Volume<u8>> {
    let n = size.max(32);
    let c = n as f64 / 2.0;
    let data: Vec<u8> = (0..n * n * n)
        .map(|i| {
            let p = DVec3::new((i % n) as f64, ((i / n) % n) as f64, (i / (n * n)) as f64);
            let big = (p - DVec3::splat(c)).length() <= c / 2.0;
            let small = (p - DVec3::new(c / 4.0, c / 4.0, c)).length() <= 6.0;
            u8::from(big) + 2 * u8::from(small && !big)
        })
        .collect();
    Volume::new([n, n, n, 1], Affine::from_spacing([1.0; 3]), data).ok()
}

/// The 3D view's frame rate on the default wgpu adapter: the surfaces of the surface
/// benchmarks' `size`³ mask (both labels opaque, the large one again translucent as a
/// prediction) rendered into a 960×540 view (the 2×2 layout's cell at 1080p), the camera turned
/// 3° every frame so each frame renders anew, the GPU waited for each time. Returns the
/// figures and the adapter's name.
pub fn view3d(size: usize, frames: usize) -> Result<(Vec<Figure>, String), RenderError> {
    use crate::render::{OrbitCamera, SurfaceMesh, SurfacePipeline, SurfaceTarget};
    use crate::volume::surface::LabelSurfaces;
    let gpu = GpuContext::headless()?;
    let mask = surface_bench_mask(size).ok_or_else(|| RenderError::Shape("no mask".into()))?;
    let n = mask.dims3()[0];
    let surfaces = LabelSurfaces::new(mask.data(), [n; 3], *mask.affine());
    let pipeline = SurfacePipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let drawn = [
        (1, [0.9, 0.2, 0.2, 1.0]),
        (2, [0.2, 0.9, 0.2, 1.0]),
        (1, [0.9, 0.9, 0.2, 0.35]),
    ];
    let meshes: Vec<SurfaceMesh> = drawn
        .iter()
        .filter_map(|(l, c)| SurfaceMesh::upload(&gpu.device, &pipeline, &surfaces.mesh(*l), *c))
        .collect();
    let refs: Vec<&SurfaceMesh> = meshes.iter().collect();
    let target = SurfaceTarget::new(&gpu.device, [960, 540]);
    let centre = [n as f32 / 2.0; 3];
    let fps = frames_per_second(frames, |f| {
        let camera = OrbitCamera::new(centre, 3.0 * f as f32, 20.0, 0.9 * n as f32);
        target.render(
            &gpu.device,
            &gpu.queue,
            &pipeline,
            &refs,
            (&camera, wgpu::Color::BLACK),
        );
        wait_idle(&gpu.device)
    })?;
    let triangles: usize = drawn
        .iter()
        .map(|(l, _)| surfaces.mesh(*l).triangles())
        .sum();
    let figures = vec![
        fig(format!("view3d_fps_{n}"), fps, "fps"),
        fig("view3d_triangles", triangles as f64, "triangles"),
    ];
    Ok((figures, adapter_name(&gpu)))
}

/// Label-surface upkeep on the CPU (no adapter needed): a `size`³ 1 mm mask holding a large
/// structure (a ball of half the grid's radius) and a smaller one; a brush stroke of `repeats`
/// round dabs of `radius_mm` dragged across the large one's border, each dab's sub-box re-meshed
/// (`LabelSurfaces::update`) — median per dab — beside meshing the whole mask anew.
pub fn surface(size: usize, radius_mm: f64, repeats: usize) -> Vec<Figure> {
    use crate::edit::tools::{brush_dab, PaintRules};
    use crate::volume::surface::LabelSurfaces;
    let Some(mut mask) = surface_bench_mask(size) else {
        return Vec::new();
    };
    let n = mask.dims3()[0];
    let c = n as f64 / 2.0;
    let t = Instant::now();
    let mut surfaces = LabelSurfaces::new(mask.data(), [n; 3], *mask.affine());
    let full_ms = ms_since(t);
    let rules = PaintRules::default();
    let mut dab_ms = Vec::new();
    for k in 0..repeats.max(1) {
        // Along the big ball's edge at mid-height, a voxel further each dab.
        let at = DVec3::new(c + c / 2.0, c - 10.0 + k as f64, c);
        let brush = axial_round_brush(at, radius_mm, 1);
        let t = Instant::now();
        if let Some(d) = brush_dab(&mut mask, &brush, at, &rules, None) {
            surfaces.update(mask.data(), d.region.min, d.region.max);
        }
        dab_ms.push(ms_since(t));
    }
    // What the window does next with each dab's blocks: join the label's mesh to upload it.
    let mut join_ms = Vec::new();
    for _ in 0..repeats.clamp(1, 5) {
        let t = Instant::now();
        std::hint::black_box(surfaces.mesh(1));
        join_ms.push(ms_since(t));
    }
    vec![
        fig("surface_update_ms", median(dab_ms), "ms"),
        fig("surface_join_ms", median(join_ms), "ms"),
        fig("surface_full_remesh_ms", full_ms, "ms"),
        fig(
            "surface_triangles",
            surfaces.mesh(1).triangles() as f64,
            "triangles",
        ),
    ]
}

/// A network and batch the training benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainShape {
    /// Its name in the figures.
    pub name: &'static str,
    /// Channels of the first level.
    pub base: usize,
    /// Levels below the first.
    pub depth: usize,
    /// Patch edge (voxels).
    pub patch: usize,
    /// Patches per batch.
    pub batch: usize,
}

/// The shipped configuration: base 8, depth 3, 32³ patches, batch 2.
pub const SMALL: TrainShape = TrainShape {
    name: "small",
    base: 8,
    depth: 3,
    patch: 32,
    batch: 2,
};

/// An nnU-Net-sized one: base 32, 128³ patches, batch 2 (depth 4: 32…512 channels, where
/// nnU-Net's 3d_fullres caps six stages at 320).
pub const NNUNET: TrainShape = TrainShape {
    name: "nnunet",
    base: 32,
    depth: 4,
    patch: 128,
    batch: 2,
};

impl TrainShape {
    /// The network (2 sequences, 3 labels, 2 classes).
    fn config(&self) -> crate::model::TrainingConfig {
        use crate::model::{MultiTaskUNetConfig, TrainingConfig};
        TrainingConfig::new(
            MultiTaskUNetConfig::new(2, 3, 2)
                .with_base_channels(self.base)
                .with_depth(self.depth),
        )
    }

    /// Floating-point operations of one training step (forward and backward: 3× the forward
    /// multiply-adds of each patch, 2 operations each).
    pub fn step_flops(&self) -> f64 {
        let macs = self.config().model.forward_macs(self.patch.pow(3));
        6.0 * macs * self.batch as f64
    }
}

/// Untimed steps before a training figure.
const WARM_UP_STEPS: usize = 3;
/// The least untimed time on a GPU before a training figure.
const GPU_WARM_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// Training steps per second of `shape` on `device` in `precision`: `steps` steps of a random
/// batch, after [`WARM_UP_STEPS`] untimed ones (on a GPU, for at least [`GPU_WARM_UP`]: kernel
/// compilation, tuning, allocation). On a GPU also the median time the host took to record a
/// step (`model::training::train_step_pending`, until the loss is read), in ms.
fn train_steps_per_s(
    shape: &TrainShape,
    device: burn::prelude::Device,
    steps: usize,
    precision: Precision,
) -> (f64, Option<f64>) {
    use crate::model::{train_step, Batch};
    use burn::prelude::*;
    use burn::tensor::{Distribution, Int};
    let config = shape.config().with_precision(precision);
    let gpu = device != Device::flex();
    let ad = device.autodiff();
    let mut model = config.model.init(&ad);
    let mut optim = crate::model::adam_gpu::adam();
    let mut loss_scale = precision.initial_loss_scale();
    let (p, batch) = (shape.patch, shape.batch);
    let b = Batch {
        images: Tensor::<5>::random([batch, 2, p, p, p], Distribution::Normal(0.0, 1.0), &ad),
        masks: Tensor::<4, Int>::random([batch, p, p, p], Distribution::Uniform(0.0, 3.0), &ad),
        classes: Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, 2.0), &ad),
        weights: None,
    };
    // One step, and on a GPU (where nothing splits across cores) the time until it was
    // recorded; its loss is read as `fit` reads it, while the next step is queued.
    let mut step = |model| match gpu {
        true => {
            let t = Instant::now();
            let optimiser = (&mut optim, &mut loss_scale);
            let (model, terms) = crate::model::training::train_step_pending(
                model,
                optimiser,
                &b,
                &config,
                config.learning_rate,
            );
            let recorded_ms = t.elapsed().as_secs_f64() * 1e3;
            (model, Some(recorded_ms), Some(terms.start()))
        }
        false => {
            let optimiser = (&mut optim, &mut loss_scale);
            (train_step(model, optimiser, &b, &config).0, None, None)
        }
    };
    let mut recorded_ms = Vec::new();
    // As `fit` trains: on a worker of the pool the kernels run on (`model::pool`).
    let steps_per_s = crate::model::pool::on_worker(|| {
        let mut reading = None;
        // Warm-up: the optimiser's first steps take other paths than later ones, and a GPU
        // compiles and tunes kernels over its first seconds (a 5-step figure on an H200 was
        // 4.1 steps/s, a 400-step one 20.9).
        let t = Instant::now();
        for done in 0.. {
            let terms;
            (model, _, terms) = step(model);
            finish_replaced(&mut reading, terms);
            if done + 1 >= WARM_UP_STEPS && (!gpu || t.elapsed() >= GPU_WARM_UP) {
                break;
            }
        }
        finish_replaced(&mut reading, None);
        let t = Instant::now();
        for _ in 0..steps.max(1) {
            let (recorded, terms);
            (model, recorded, terms) = step(model);
            finish_replaced(&mut reading, terms);
            recorded_ms.extend(recorded);
        }
        finish_replaced(&mut reading, None);
        steps.max(1) as f64 / t.elapsed().as_secs_f64()
    });
    let recorded = (!recorded_ms.is_empty()).then(|| median(recorded_ms));
    (steps_per_s, recorded)
}

/// Waits for the loss read in `slot` (the step before's, as `fit` waits for it once the next
/// step is queued) and puts `next` there.
fn finish_replaced(
    slot: &mut Option<crate::model::training::TermsReading>,
    next: Option<crate::model::training::TermsReading>,
) {
    if let Some(previous) = std::mem::replace(slot, next) {
        previous.finish();
    }
}

/// The figures of `steps_per_s` on `backend` for `shape`: steps per second, the TFLOP/s they
/// are, and with a device peak (`peak_tflops`) the model FLOPs utilisation.
fn train_figures(
    shape: &TrainShape,
    backend: &str,
    steps_per_s: f64,
    peak_tflops: Option<f64>,
) -> Vec<Figure> {
    let tflops = steps_per_s * shape.step_flops() / 1e12;
    let mut out = vec![
        fig(
            format!("train_steps_per_s_{backend}_{}", shape.name),
            steps_per_s,
            "steps/s",
        ),
        fig(
            format!("train_tflops_{backend}_{}", shape.name),
            tflops,
            "TFLOP/s",
        ),
    ];
    if let Some(peak) = peak_tflops.filter(|p| *p > 0.0) {
        let mfu = 100.0 * tflops / peak;
        out.push(fig(format!("train_mfu_{backend}_{}", shape.name), mfu, "%"));
    }
    out
}

/// What `bench train` measures beside the networks.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Timed steps per measurement (after one warm-up step).
    pub steps: usize,
    /// Also wgpu on a software Vulkan device (lavapipe) when there is no hardware GPU.
    pub software_gpu: bool,
    /// The GPU's (without one, the CPU's) peak TFLOP/s, for the utilisation figures.
    pub peak_tflops: Option<f64>,
    /// The precisions each backend trains in (f16/bf16: mixed precision; PyTorch's autocast).
    pub precisions: Vec<Precision>,
    /// Rounds of every backend in turn (burn, then PyTorch, again): each figure is the median
    /// of its rounds, so that a machine whose speed drifts over a run (a shared virtual
    /// machine's) slows both sides alike.
    pub rounds: usize,
    /// Which backends to measure.
    pub backends: Backends,
}

/// The backends a benchmark measures: `cpu`, `wgpu`, `cuda` (burn's), `torch_cpu` and
/// `torch_cuda` (PyTorch's reference); all that are present unless a list names some (a GPU
/// machine's prepared run leaves out the CPU figures, which take minutes there).
#[derive(Debug, Clone, Default)]
pub struct Backends(Option<Vec<String>>);

impl Backends {
    /// The names a list may hold.
    pub const NAMES: [&'static str; 5] = ["cpu", "wgpu", "cuda", "torch_cpu", "torch_cuda"];

    /// Every backend that is present.
    pub fn all() -> Self {
        Self(None)
    }

    /// The backends of a comma-separated `list`; an error names an unknown one.
    pub fn parse(list: &str) -> Result<Self, String> {
        let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
        match names.iter().find(|n| !Self::NAMES.contains(&n.as_str())) {
            Some(bad) => Err(format!(
                "unknown backend {bad:?}: use {}",
                Self::NAMES.join(", ")
            )),
            None => Ok(Self(Some(names))),
        }
    }

    /// Whether `name` (its f32 name: `wgpu`, `torch_cuda`) is measured.
    pub fn wants(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

/// The backend's figure name in `precision`: `cpu` in f32, `cpu_f16` in f16.
fn with_precision(backend: &str, precision: Precision) -> String {
    match precision {
        Precision::F32 => backend.to_string(),
        p => format!("{backend}_{}", p.name()),
    }
}

/// Training speed of each of `shapes` in each of the bench's precisions: burn on the CPU (flex)
/// and, with a hardware GPU, on wgpu (`software_gpu`: on lavapipe when there is none); beside
/// the same network, loss and optimiser in PyTorch (`benches/reference/train_torch.py`, with
/// autocast and its gradient scaler in f16/bf16) on the CPU and CUDA when python3 has torch. A
/// precision a device lacks is skipped with a note. Returns the figures and notes on what was
/// skipped.
pub fn train(shapes: &[TrainShape], bench: &TrainBench) -> (Vec<Figure>, Vec<String>) {
    use burn::prelude::{Device, DeviceKind};
    let (device, about) = crate::model::choose_device("auto");
    let cuda = crate::model::apply::cuda_device();
    let gpu = about.starts_with("GPU") || cuda.is_ok();
    let (cpu_peak, gpu_peak) = match gpu {
        true => (None, bench.peak_tflops),
        false => (bench.peak_tflops, None),
    };
    let mut burn_devices = vec![("cpu", Device::flex(), cpu_peak)];
    let mut notes = Vec::new();
    if about.starts_with("GPU") {
        burn_devices.push(("wgpu", device, gpu_peak));
    } else if bench.software_gpu {
        let lavapipe = Device::wgpu(DeviceKind::DefaultDevice);
        burn_devices.push(("wgpu_software", lavapipe, None));
    } else if bench.backends.wants("wgpu") {
        notes.push(format!(
            "wgpu skipped: {about} (on lavapipe the first step alone compiles shaders for minutes; --software-gpu measures it)"
        ));
    }
    match cuda {
        Ok(device) => burn_devices.push(("cuda", device, gpu_peak)),
        Err(why) if bench.backends.wants("cuda") => notes.push(format!("burn cuda skipped: {why}")),
        Err(_) => {}
    }
    // lavapipe's `wgpu_software` is wgpu's.
    burn_devices.retain(|(name, ..)| {
        bench
            .backends
            .wants(name.strip_suffix("_software").unwrap_or(name))
    });
    let mut figures = Vec::new();
    for shape in shapes {
        for &precision in &bench.precisions {
            let mut rounds: Vec<BackendRounds> = Vec::new();
            let peaks = (cpu_peak, gpu_peak);
            for _ in 0..bench.rounds.max(1) {
                let round = train_round(shape, precision, &burn_devices, peaks, bench, &mut notes);
                for figure in round {
                    let at = match rounds.iter().position(|r| r.backend == figure.backend) {
                        Some(at) => at,
                        None => {
                            rounds.push(BackendRounds::new(figure.backend, figure.peak));
                            rounds.len() - 1
                        }
                    };
                    rounds[at].steps_per_s.push(figure.steps_per_s);
                    rounds[at].recorded_ms.extend(figure.recorded_ms);
                }
            }
            for backend in rounds {
                figures.extend(backend.figures(shape, &mut notes));
            }
        }
    }
    (figures, notes)
}

/// A backend's figures over the rounds.
struct BackendRounds {
    backend: String,
    peak: Option<f64>,
    steps_per_s: Vec<f64>,
    recorded_ms: Vec<f64>,
}

impl BackendRounds {
    fn new(backend: String, peak: Option<f64>) -> Self {
        Self {
            backend,
            peak,
            steps_per_s: Vec::new(),
            recorded_ms: Vec::new(),
        }
    }

    /// The medians' figures (the rounds' steps per second in a note when there were several).
    fn figures(self, shape: &TrainShape, notes: &mut Vec<String>) -> Vec<Figure> {
        let backend = &self.backend;
        if self.steps_per_s.len() > 1 {
            let each: Vec<String> = self.steps_per_s.iter().map(|v| format!("{v:.2}")).collect();
            let each = each.join(", ");
            notes.push(format!("{backend} {}: rounds {each} steps/s", shape.name));
        }
        let mut figures = train_figures(shape, backend, median(self.steps_per_s), self.peak);
        if !self.recorded_ms.is_empty() {
            let name = format!("train_record_ms_{backend}_{}", shape.name);
            figures.push(fig(name, median(self.recorded_ms), "ms"));
        }
        figures
    }
}

/// A backend's figures in one round.
struct RoundFigure {
    backend: String,
    /// Its device's peak TFLOP/s.
    peak: Option<f64>,
    steps_per_s: f64,
    /// On a GPU, the host's time to record a step (ms).
    recorded_ms: Option<f64>,
}

/// One round of `shape` in `precision`: each burn device's steps per second (and on a GPU the
/// host's time to record a step), then PyTorch's on the CPU and CUDA (their peak TFLOP/s:
/// `torch_peaks`); what was skipped in `notes`.
fn train_round(
    shape: &TrainShape,
    precision: Precision,
    burn_devices: &[(&str, burn::prelude::Device, Option<f64>)],
    torch_peaks: (Option<f64>, Option<f64>),
    bench: &TrainBench,
    notes: &mut Vec<String>,
) -> Vec<RoundFigure> {
    let mut out = Vec::new();
    for (name, device, peak) in burn_devices {
        let backend = with_precision(name, precision);
        if let Err(e) = precision.check(device) {
            note_once(notes, format!("{backend} skipped: {e}"));
            continue;
        }
        let (v, recorded_ms) = train_steps_per_s(shape, device.clone(), bench.steps, precision);
        out.push(RoundFigure {
            backend,
            peak: *peak,
            steps_per_s: v,
            recorded_ms,
        });
    }
    for (dev, peak) in [("cpu", torch_peaks.0), ("cuda", torch_peaks.1)] {
        if !bench.backends.wants(&format!("torch_{dev}")) {
            continue;
        }
        let backend = with_precision(&format!("torch_{dev}"), precision);
        match torch_steps_per_s(dev, shape, bench.steps, precision) {
            Ok(Some(v)) => out.push(RoundFigure {
                backend,
                peak,
                steps_per_s: v,
                recorded_ms: None,
            }),
            Ok(None) => {}
            Err(note) => note_once(notes, note),
        }
    }
    out
}

/// `note` added to `notes` unless it is there already (a skip repeats for every network).
fn note_once(notes: &mut Vec<String>, note: String) {
    if !notes.contains(&note) {
        notes.push(note);
    }
}

/// PyTorch's steps per second on `dev` (cpu or cuda) in `precision` with the reference script;
/// `None` if it printed no figure, an error note if it could not run.
fn torch_steps_per_s(
    dev: &str,
    shape: &TrainShape,
    steps: usize,
    precision: Precision,
) -> Result<Option<f64>, String> {
    let args = [
        ("--patch", shape.patch.to_string()),
        ("--batch", shape.batch.to_string()),
        ("--base", shape.base.to_string()),
        ("--depth", shape.depth.to_string()),
        ("--steps", steps.max(1).to_string()),
        ("--precision", precision.name().to_string()),
    ];
    torch_reference("train_torch.py", dev, &args, "torch_train_steps_per_s")
}

/// The figure `key` a PyTorch reference script in `benches/reference/` prints when run on `dev`
/// (cpu or cuda) with `args` and this machine's threads; `None` if it printed none, an error
/// note if it could not run (no python3, no torch, no CUDA).
fn torch_reference(
    script: &str,
    dev: &str,
    args: &[(&str, String)],
    key: &str,
) -> Result<Option<f64>, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/reference")
        .join(script);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = Command::new("python3")
        .arg(&path)
        .args(["--device", dev, "--threads", &threads.to_string()])
        .args(args.iter().flat_map(|(k, v)| [*k, v.as_str()]))
        .output()
        .map_err(|e| format!("PyTorch skipped: cannot run python3: {e}"))?;
    if !out.status.success() {
        let why = last_line(&out.stderr, "the reference script failed");
        return Err(format!("PyTorch on {dev} skipped: {why}"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{key} = ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok()))
}

/// The window and overlap of the shipped network's whole-volume prediction.
const PREDICT_WINDOW: usize = 32;
/// See [`PREDICT_WINDOW`].
const PREDICT_OVERLAP: f32 = 0.5;

/// Seconds burn takes on `device` to predict a `size`³ case of two sequences with the shipped
/// network (random weights: the time does not depend on them), after warming up on a single
/// window and on the case's first window-deep slab (a GPU's stacked windows and slabs are the
/// shapes to compile).
fn predict_seconds(
    config: &crate::model::TrainingConfig,
    size: usize,
    device: burn::prelude::Device,
    precision: Precision,
) -> Result<f64, VolumeError> {
    use crate::model::inference::segment_volume_in;
    let model = config.model.init(&device);
    let w = PREDICT_WINDOW;
    let geometry = ([w; 3], PREDICT_OVERLAP);
    let channels = prompt_case(size, &[], 0.0);
    let window = prompt_case(w, &[], 0.0);
    let first_slab: Vec<Vec<f32>> = (channels.iter())
        .map(|c| c[..size * size * w].to_vec())
        .collect();
    for (warm, dims) in [(window, [w; 3]), (first_slab, [size, size, w])] {
        segment_volume_in(&model, &warm, dims, geometry, &device, precision)?;
    }
    let t = Instant::now();
    let (mask, fg) = segment_volume_in(&model, &channels, [size; 3], geometry, &device, precision)?;
    std::hint::black_box((mask, fg));
    Ok(t.elapsed().as_secs_f64())
}

/// Whole-volume sliding-window prediction of a `size`³ case (two sequences, the shipped network:
/// base 8, depth 3, 3 labels; 32³ windows overlapping by half, Gaussian-weighted; arg-max labels
/// and foreground probability): burn on the CPU (f32) and, with a hardware GPU, on wgpu
/// (`software_gpu`: on lavapipe when there is none) in each of `precisions`; beside PyTorch with
/// the same network, windows and weighting (`benches/reference/predict_torch.py`) on the CPU
/// (f32) and on CUDA in each of `precisions` (f16/bf16: under autocast) when python3 with torch
/// has them, stacking as many windows per forward pass as burn does there (one on the CPU; on a
/// GPU `gpu_windows_per_pass`). Figures and notes on what was skipped.
pub fn predict(
    size: usize,
    backends: &Backends,
    software_gpu: bool,
    precisions: &[Precision],
) -> Result<(Vec<Figure>, Vec<String>), VolumeError> {
    use crate::model::{MultiTaskUNetConfig, TrainingConfig};
    use burn::prelude::Device;
    let size = size.max(PREDICT_WINDOW);
    let config = TrainingConfig::new(MultiTaskUNetConfig::new(2, 3, 2).with_base_channels(8));
    let name = |backend: &str| format!("predict_s_{size}_{backend}");
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let cpu = match backends.wants("cpu") {
        true => Some(predict_seconds(
            &config,
            size,
            Device::flex(),
            Precision::F32,
        )?),
        false => None,
    };
    figures.extend(cpu.map(|s| fig(name("cpu"), s, "s")));
    let (device, about) = crate::model::choose_device("auto");
    let gpu = match about.starts_with("GPU") {
        _ if !backends.wants("wgpu") => None,
        true => Some(("wgpu", device)),
        false if software_gpu => Some((
            "wgpu_software",
            Device::wgpu(burn::prelude::DeviceKind::DefaultDevice),
        )),
        false => {
            notes.push(format!(
                "wgpu skipped: {about} (--software-gpu measures lavapipe's)"
            ));
            None
        }
    };
    let cuda = match crate::model::apply::cuda_device() {
        _ if !backends.wants("cuda") => None,
        Ok(cuda) => Some(("cuda", cuda)),
        Err(why) => {
            notes.push(format!("burn cuda skipped: {why}"));
            None
        }
    };
    for (backend, device) in gpu.into_iter().chain(cuda) {
        for &precision in precisions {
            if let Err(e) = precision.check(&device) {
                notes.push(format!("{backend} {} skipped: {e}", precision.name()));
                continue;
            }
            let seconds = predict_seconds(&config, size, device.clone(), precision)?;
            figures.push(fig(name(&with_precision(backend, precision)), seconds, "s"));
        }
    }
    let torch = torch_predict(size, backends, precisions, cpu, &mut notes);
    figures.extend(torch);
    Ok((figures, notes))
}

/// PyTorch's side of [`predict`]: on the CPU in f32 (with the ratio to burn's `cpu` seconds),
/// on CUDA in each of `precisions`.
fn torch_predict(
    size: usize,
    backends: &Backends,
    precisions: &[Precision],
    cpu: Option<f64>,
    notes: &mut Vec<String>,
) -> Vec<Figure> {
    let name = |backend: &str| format!("predict_s_{size}_{backend}");
    let mut figures = Vec::new();
    let args = [
        ("--size", size.to_string()),
        ("--window", PREDICT_WINDOW.to_string()),
        ("--overlap", PREDICT_OVERLAP.to_string()),
    ];
    // PyTorch stacks as many windows per forward pass as burn does on that device.
    let gpu_batch = crate::model::inference::gpu_windows_per_pass([PREDICT_WINDOW; 3]);
    let runs = [("cpu", Precision::F32)]
        .into_iter()
        .chain(precisions.iter().map(|p| ("cuda", *p)));
    for (dev, precision) in runs.filter(|(d, _)| backends.wants(&format!("torch_{d}"))) {
        let batch = if dev == "cuda" { gpu_batch } else { 1 };
        let mut args = args.to_vec();
        args.push(("--window-batch", batch.to_string()));
        args.push(("--precision", precision.name().to_string()));
        match torch_reference("predict_torch.py", dev, &args, "torch_predict_s") {
            Ok(Some(v)) => {
                let backend = with_precision(&format!("torch_{dev}"), precision);
                figures.push(fig(name(&backend), v, "s"));
                if let (Some(cpu), "cpu") = (cpu, dev) {
                    figures.push(fig(format!("predict_time_ratio_{size}_cpu"), cpu / v, "x"));
                }
            }
            Ok(None) => {}
            Err(note) if notes.contains(&note) => {}
            Err(note) => notes.push(note),
        }
    }
    figures
}

/// A synthetic `size`³ case of two normalised sequences with bright balls of radius `radius`
/// voxels at `centres` (smooth background, deterministic).
fn prompt_case(size: usize, centres: &[[usize; 3]], radius: f64) -> Vec<Vec<f32>> {
    let n = size * size * size;
    let mut t1 = vec![0f32; n];
    for (idx, v) in t1.iter_mut().enumerate() {
        let [i, j, k] = crate::model::prompt::voxel_of(idx, [size; 3]);
        *v = ((i as f32 * 0.07).sin() + (j as f32 * 0.05).cos() + (k as f32 * 0.03).sin()) * 0.3;
    }
    for c in centres {
        let r = radius.ceil() as usize;
        for k in c[2].saturating_sub(r)..(c[2] + r + 1).min(size) {
            for j in c[1].saturating_sub(r)..(c[1] + r + 1).min(size) {
                for i in c[0].saturating_sub(r)..(c[0] + r + 1).min(size) {
                    let d2 = [i, j, k]
                        .iter()
                        .zip(c)
                        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        .sum::<f64>();
                    if d2 <= radius * radius {
                        t1[i + size * (j + size * k)] = 2.0;
                    }
                }
            }
        }
    }
    let t2 = t1.iter().map(|v| -v).collect();
    vec![t1, t2]
}

/// Random weights of the plan's promptable network for a 1 mm `size`³ case on this machine's
/// device (no window growth), and a note saying so.
fn default_promptable_network(
    size: usize,
    device: &burn::prelude::Device,
) -> (
    crate::model::TrainingConfig,
    crate::model::MultiTaskUNet,
    String,
) {
    use crate::model::plan::{depth_for, patch_for};
    use crate::model::prompt::PromptConfig;
    use crate::model::{MultiTaskUNetConfig, TrainingConfig};
    let prompt = PromptConfig {
        grow_limit: 0,
        ..PromptConfig::default()
    };
    let class = crate::model::apply::device_class("auto");
    let window = patch_for([size; 3], [1.0; 3], false, class.max_patch_voxels());
    let net = MultiTaskUNetConfig::new(2 + 3, 2, 2)
        .with_depth(depth_for(window))
        .with_base_channels(class.base_channels());
    let config = TrainingConfig::new(net)
        .with_window(window)
        .with_prompt(Some(prompt));
    let note = format!(
        "random weights of the plan's promptable network for a 1 mm case here \
         (window {window:?}, width {}), no window growth",
        class.base_channels()
    );
    let net = config.model.init(device);
    (config, net, note)
}

/// Latency of single include clicks on a `size`³ case (a structure of 20 voxels across at
/// each click), `repeats` clicks at different places: the prompt's whole path (window,
/// guidance, sliding-window prediction, growth, merge into the case's mask). With no `model`,
/// random weights of the plan's promptable network for 2 sequences at 1 mm on this device
/// (24³ windows on a CPU) without window growth (random weights would grow it at random).
pub fn prompt(
    size: usize,
    repeats: usize,
    model: Option<&Path>,
) -> Result<(Vec<Figure>, Vec<String>), crate::model::CheckpointError> {
    use crate::model::prompt::Prompt;
    use crate::model::prompt_infer::predict_prompted;
    let (device, about) = crate::model::choose_device("auto");
    let mut notes = vec![format!("device: {about}")];
    let (config, net) = match model {
        Some(dir) => {
            let (config, net) = crate::model::load_checkpoint(dir, &device)?;
            crate::model::check_model_kind(dir, &config, true)?;
            (config, net)
        }
        None => {
            let (config, net, note) = default_promptable_network(size, &device);
            notes.push(note);
            (config, net)
        }
    };
    let sequences = config.model.in_channels.saturating_sub(3).max(1);
    let size = size.max(40);
    let centres: Vec<[usize; 3]> = (0..repeats.max(1))
        .map(|r| [0, 1, 2].map(|a| 20 + (r * (7 + 5 * a) * 13) % (size - 40)))
        .collect();
    let mut channels = prompt_case(size, &centres, 10.0);
    channels.resize(sequences, channels[0].clone());
    let mut mask = vec![false; size * size * size];
    let mut times = Vec::new();
    let mut windows = Vec::new();
    for (r, c) in centres.iter().enumerate() {
        let prompts = [Prompt::Point {
            idx_vox: *c,
            include: true,
        }];
        let t = Instant::now();
        let w = predict_prompted(
            &net, &channels, [size; 3], &prompts, &mask, &config, &device,
        )
        .map_err(|e| crate::model::CheckpointError::File {
            path: "bench case".into(),
            problem: e.to_string(),
        })?;
        w.merge_into(&mut mask, [size; 3]);
        // The first click also compiles and warms the backend up: not counted.
        if r > 0 || centres.len() == 1 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
            windows.push(w.voxels() as f64);
        }
    }
    Ok((
        vec![
            fig(
                "prompt_latency_ms_p50",
                percentile(times.clone(), 50.0),
                "ms",
            ),
            fig("prompt_latency_ms_p95", percentile(times, 95.0), "ms"),
            fig("prompt_window_vox", median(windows), "vox"),
        ],
        notes,
    ))
}
