//! `mriloop bench`: run a headless benchmark (io, render, edit, train) and print its `bench:`
//! lines, notes and the reference figure the issue asks for. The window benchmarks (loop,
//! bold) are dispatched by `main` to the window's `src/app/window_bench.rs` and printed with
//! [`print_figures`].
//!
//! Invariants: the io benchmark's generated file lives in a temporary folder removed afterwards
//! (unless `--file` names one to keep); a benchmark with a goal ends with its `reference:` line.

use crate::bench::{self, Figure};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Which benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Open a size³ f32 .nii.gz, beside nibabel.
    Io,
    /// Redraw three views of a size³ volume with overlay at 1920×1080; mask sub-box vs full
    /// upload.
    Render,
    /// Brush event to mask texture updated (5 mm radius, size³ mask), beside a full upload.
    Edit,
    /// Training steps per second of the 3D network (--config small, nnunet or all), burn vs
    /// PyTorch, with the TFLOP/s they are and the utilisation of --peak-tflops.
    Train,
    /// Whole-volume sliding-window prediction of a --size³ case with the shipped network,
    /// burn vs PyTorch (same network, windows, overlap and Gaussian weighting).
    Predict,
    /// UI frame times (p50, p99) of the review window, idle and while training on the CPU
    /// (--repeats frames each).
    Loop,
    /// Memory (peak RSS, GPU textures) and speed of a --size³ × --frames BOLD case in the window.
    Bold,
    /// Latency of single prompt clicks on a --size³ case (p50, p95) and the window predicted,
    /// with --model or random weights of the default promptable configuration.
    Prompt,
    /// Label surfaces of a --size³ mask (the 3D view's): re-meshing after each dab of a 5 mm
    /// brush stroke, beside meshing the whole mask anew (CPU).
    Surface,
    /// The 3D view's frame rate on the GPU (--repeats × 10 frames, a turning camera) with a
    /// --size³ mask's surfaces, then the surface benchmark's figures.
    View3d,
}

impl BenchKind {
    /// Drives the review window (dispatched to `src/app/window_bench.rs`).
    pub fn in_window(self) -> bool {
        matches!(self, Self::Loop | Self::Bold)
    }
}

/// Arguments of `mriloop bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub which: BenchKind,
    /// Volume edge length.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// io: the file to open; generated there (and kept) if it does not exist. Default: a
    /// generated file in a temporary folder, removed afterwards.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// train, predict: also measure wgpu on a software Vulkan device (lavapipe) when no
    /// hardware GPU is present (a training run's first step compiles shaders for minutes).
    #[arg(long)]
    pub software_gpu: bool,
    /// bold: time points of the BOLD run.
    #[arg(long, default_value_t = 300)]
    pub frames: usize,
    /// prompt: a promptable checkpoint folder (default: random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// train: which networks — small (the shipped one: base 8, depth 3, 32³, batch 2), nnunet
    /// (base 32, depth 4, 128³, batch 2) or all (default: all with a hardware GPU, else small).
    #[arg(long)]
    pub config: Option<String>,
    /// train: the device's peak TFLOP/s (the GPU's when one is present, else the CPU's), for
    /// the model FLOPs utilisation figures (`train_mfu_…`; none without it).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// train: the precisions to train in, comma-separated: f32, f16, bf16 (f16/bf16: mixed
    /// precision, beside PyTorch's autocast), e.g. `f32,f16`; predict: the precisions the GPU
    /// backends predict in (the CPU's in f32).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// train: rounds of every backend in turn (burn, PyTorch, burn, …); each figure is the
    /// median of its rounds, so a machine whose speed drifts slows both sides alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// train, predict: only these backends, comma-separated: cpu, wgpu, cuda (burn's),
    /// torch_cpu, torch_cuda (PyTorch's), e.g. `wgpu,torch_cuda` on a GPU machine (default:
    /// every one present).
    #[arg(long)]
    pub backends: Option<String>,
}

impl BenchArgs {
    /// The backends `--backends` names (all present without it).
    fn backends(&self) -> Result<bench::Backends> {
        match &self.backends {
            Some(list) => {
                bench::Backends::parse(list).map_err(|e| anyhow::anyhow!("--backends: {e}"))
            }
            None => Ok(bench::Backends::all()),
        }
    }

    /// The precisions `--precision` names.
    fn precisions(&self) -> Result<Vec<crate::model::Precision>> {
        let parse = |p: &str| crate::model::Precision::parse(p.trim());
        Ok(self
            .precision
            .split(',')
            .map(parse)
            .collect::<Result<_, _>>()?)
    }
}

/// The training benchmark's networks for `--config` (`None`: all on a GPU, else small).
fn train_shapes(config: Option<&str>) -> Result<Vec<bench::TrainShape>> {
    let gpu = crate::model::choose_device("auto").1.starts_with("GPU");
    match config {
        Some("small") => Ok(vec![bench::SMALL]),
        Some("nnunet") => Ok(vec![bench::NNUNET]),
        Some("all") => Ok(vec![bench::SMALL, bench::NNUNET]),
        None if gpu => Ok(vec![bench::SMALL, bench::NNUNET]),
        None => Ok(vec![bench::SMALL]),
        Some(other) => anyhow::bail!("--config {other}: use small, nnunet or all"),
    }
}

/// The `reference:` line of `bench loop`.
pub const LOOP_REFERENCE: &str =
    "goal ui_frame_ms_p99_training < 33 ms (training on the other core)";

/// The `reference:` line of `bench bold`.
pub const BOLD_REFERENCE: &str = "issue 9 asks for the memory of a 64³ × 300 float BOLD case (peak RSS, GPU memory); streamed, the GPU holds one frame";

/// Print `figures`, then each note as `note:` and the `reference:` line.
pub fn print_figures(figures: &[Figure], notes: &[String], reference: &str) {
    for f in figures {
        println!("{f}");
    }
    for n in notes {
        println!("note: {n}");
    }
    println!("reference: {reference}");
}

/// `mriloop bench` for the headless benchmarks.
pub fn run(args: BenchArgs) -> Result<()> {
    let size = args.size;
    match args.which {
        BenchKind::Io => io(&args),
        BenchKind::Render => {
            let (figures, adapter) = bench::render(size, 60, args.repeats)?;
            println!("adapter: {adapter}");
            print_figures(&figures, &[], "goal render_fps >= 30 on lavapipe at 256 (>= 60 on a GPU at 512); sub-box >= 20 x faster than a full upload");
            Ok(())
        }
        BenchKind::Edit => {
            let (figures, adapter) = bench::edit(size, 5.0, args.repeats.max(20))?;
            println!("adapter: {adapter}");
            print_figures(
                &figures,
                &[],
                "goal brush_to_texture_ms < 16 ms on lavapipe (a 60 Hz frame)",
            );
            Ok(())
        }
        BenchKind::Train => {
            let shapes = train_shapes(args.config.as_deref())?;
            let precisions = args.precisions()?;
            let setup = bench::TrainBench {
                steps: args.repeats,
                software_gpu: args.software_gpu,
                peak_tflops: args.peak_tflops,
                precisions,
                rounds: args.rounds,
                backends: args.backends()?,
            };
            let (figures, notes) = bench::train(&shapes, &setup);
            let reference = "3D net, 2 sequences, 3 labels; goal: burn on the GPU >= PyTorch eager on the same GPU for each network; on the CPU >= 2x PyTorch";
            print_figures(&figures, &notes, reference);
            Ok(())
        }
        BenchKind::Predict => {
            let (figures, notes) = bench::predict(
                size,
                &args.backends()?,
                args.software_gpu,
                &args.precisions()?,
            )?;
            print_figures(&figures, &notes, "goal predict_s_256_cpu <= 0.5 x predict_s_256_torch_cpu (PyTorch eager, same network, windows, overlap and weighting); the same on a GPU against torch_cuda");
            Ok(())
        }
        BenchKind::Prompt => {
            let (figures, notes) =
                bench::prompt(size, args.repeats.max(20), args.model.as_deref())?;
            print_figures(&figures, &notes, "goal prompt_latency_ms_p95 < 250 ms on this 2-core CPU, < 50 ms on a GPU (nnInteractive: 120-200 ms per prompt on an RTX 4090)");
            Ok(())
        }
        BenchKind::Surface => {
            let figures = bench::surface(size, 5.0, args.repeats.max(20));
            print_figures(&figures, &[], "goal surface_update_ms < 16 ms (a 60 Hz frame) for a 5 mm brush stroke on a 256³ mask");
            Ok(())
        }
        BenchKind::View3d => {
            let (mut figures, adapter) = bench::view3d(size, args.repeats.max(3) * 10)?;
            figures.extend(bench::surface(size, 5.0, args.repeats.max(20)));
            println!("adapter: {adapter}");
            print_figures(&figures, &[], "goal view3d_fps_256 >= 30 on lavapipe; surface_update_ms < 16 ms (a 60 Hz frame) for a 5 mm brush stroke on a 256³ mask");
            Ok(())
        }
        BenchKind::Loop | BenchKind::Bold => {
            anyhow::bail!("bench {:?} drives the review window", args.which)
        }
    }
}

/// `mriloop bench io`: on `--file`, or on a generated file in a temporary folder.
fn io(args: &BenchArgs) -> Result<()> {
    let (size, repeats) = (args.size, args.repeats);
    let result = match &args.file {
        Some(path) => bench::io(path, size, repeats),
        None => {
            let dir = std::env::temp_dir().join(format!("mriloop-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let r = bench::io(&dir.join(format!("bench_{size}.nii.gz")), size, repeats);
            let _ = std::fs::remove_dir_all(&dir);
            r
        }
    };
    let (figures, note) = result?;
    for f in &figures {
        println!("{f}");
    }
    if let [ours, theirs] = figures.as_slice() {
        let ratio = ours.value / theirs.value;
        println!("bench: nifti_load_ratio_vs_nibabel_{size} = {ratio:.2} x");
    }
    if let Some(n) = note {
        println!("note: {n}");
    }
    Ok(())
}
