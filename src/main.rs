//! `mriloop`: the command line. It only parses arguments and dispatches: the review window
//! (`open`, no command, the window benchmarks) to the window (`src/app/`), every headless
//! command to `mriloop::cli`, which never touches the window. Errors are reported here once.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mriloop::cli::bench::{print_figures, BenchArgs, BenchKind, BOLD_REFERENCE, LOOP_REFERENCE};
use mriloop::cli::{
    self, closed_loop, edit_script, exchange, experiment, gpu, info, mesh, plan, prompt, train,
};
use std::path::PathBuf;

/// Review, correct and train a multi-task brain-MRI network in one native app.
#[derive(Parser)]
#[command(name = "mriloop", version, about)]
struct Cli {
    /// With no command, the review window opens on the built-in demo case.
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once at start: the size of the largest command's arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Open the review window on a project folder, or on loose NIfTI files (first = main image).
    Open(OpenArgs),
    /// Write a ready project of synthetic brain cases (deterministic from the seed).
    Phantom(exchange::PhantomArgs),
    /// Describe a NIfTI file: dims, spacing, affine, datatype, orientation, intensity range.
    Info(info::InfoArgs),
    /// List the graphics adapters wgpu finds (for the window and GPU training), and what
    /// `--backend auto` trains on.
    Gpu(gpu::GpuArgs),
    /// The dataset fingerprint of a project and the training plan it implies for the device
    /// (written to PROJECT/plan.json).
    Plan(plan::PlanArgs),
    /// Import an nnU-Net v2 raw dataset as a new project.
    Import(exchange::ImportArgs),
    /// Export a project as an nnU-Net v2 raw dataset (classes go to classes.csv beside it).
    Export(exchange::ExportArgs),
    /// Train the multi-task network on a project's cases (reference mask + class), validating
    /// on held-out cases after every epoch; writes OUT/best and OUT/last checkpoints.
    Train(train::TrainArgs),
    /// Predict every case of a project with a trained model (mask, probability, class), or
    /// one shard of them (--shard I/N) for a cluster job array.
    Predict(train::PredictArgs),
    /// Add a checkpoint trained elsewhere (`train --out DIR`, another machine, a colleague) to
    /// a project as a model version: copied under models/, recorded with where it came from
    AddModel(train::AddModelArgs),
    /// Put the per-case results of sharded `predict` runs into the project's manifest.
    MergeShards(train::MergeShardsArgs),
    /// Evaluate a model on a project's cases with reference masks: per-case and cohort Dice,
    /// volume error, class AUC (`metric:` lines), optionally as CSV.
    Eval(train::EvalArgs),
    /// Evaluate a promptable model with a robot user: per label, Dice after 1, 3 and 5
    /// interactions and interactions to reach Dice 0.90, from a point and from a box.
    EvalPrompt(prompt::EvalPromptArgs),
    /// The closed loop scripted end to end on a phantom: a weak first model, predictions
    /// accepted and corrected with the editing tools on some cases, fine-tuning on the
    /// corrections (the training panel's code path), re-inference; prints the held-out Dice
    /// before and after as `metric:` lines.
    Loop(closed_loop::LoopArgs),
    /// Scripted editing session on one case, committing each step through the journal and
    /// printing `committed N` (used by the crash-recovery test).
    #[command(hide = true)]
    EditScript(edit_script::EditScriptArgs),
    /// Make a 2D project from one 3D volume: every slice (third voxel axis) where chosen labels
    /// of a label volume on the same grid appear becomes a single-slice case with those labels
    /// (renumbered 1..n) as its reference
    Slices(exchange::SlicesArgs),
    /// Import a folder of DICOM files: group into series, build each volume, then list them, add
    /// the chosen ones to a project case as named sequences (--project, --case), or write them as
    /// NIfTI files (--out). Files and series that cannot be imported are listed with the reason.
    ImportDicom(exchange::ImportDicomArgs),
    /// Add a case to a project (made if new) from your own files: co-registered images
    /// (--image T1=FILE, repeated), a reference mask, a prediction made elsewhere and a class;
    /// the files are copied into the project, never changed
    AddCase(exchange::AddCaseArgs),
    /// Run an experiment: the plan's arms × seeds trained with the same budget, each evaluated on
    /// the same held-out test cases; writes OUT/report.md, OUT/cases.csv and PNG plots, and
    /// prints `metric:` lines per arm
    Experiment(experiment::ExperimentArgs),
    /// Write a case's label surfaces (the 3D view's) as an STL or PLY mesh in world mm (LPS,
    /// as 3D Slicer assumes; `SPACE=LPS` in the header), from a project case or a label file
    ExportMesh(mesh::ExportMeshArgs),
    /// Run a benchmark and print `bench:` lines.
    Bench(BenchArgs),
}

/// Arguments of `mriloop open`.
#[derive(clap::Args, Default)]
struct OpenArgs {
    /// A project folder (or its mriloop.json), or one or more .nii/.nii.gz images.
    paths: Vec<PathBuf>,
    /// A label file to show as the mask over loose images (ITK-SNAP's -s).
    #[arg(long, visible_alias = "seg")]
    mask: Option<PathBuf>,
    /// Open the training panel and start training at once, on every case with a reference
    /// (fine-tuning the active model version if there is one).
    #[arg(long)]
    train: bool,
    /// Put the cursor at this world position (mm, `X,Y,Z` in the images' space; FSLeyes's
    /// `--worldLoc`) once the case is open.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    at: Option<Vec<f64>>,
}

fn main() -> Result<()> {
    mriloop::model::heap::keep_freed_tensor_memory();
    let command = Cli::parse().command;
    mriloop::model::device_failure::install(on_device_failure(command.as_ref()));
    let Some(command) = command else {
        return open_window(OpenArgs::default());
    };
    let opens_a_window = match &command {
        Command::Open(_) => true,
        Command::Bench(args) => args.which.in_window(),
        _ => false,
    };
    if !opens_a_window {
        mriloop::cli::prepare_headless_process();
    }
    match command {
        Command::Open(args) => open_window(args),
        Command::Phantom(args) => exchange::phantom(args),
        Command::Info(args) => info::run(args),
        Command::Gpu(args) => gpu::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Import(args) => exchange::import(args),
        Command::Export(args) => exchange::export(args),
        Command::Train(args) => train::train(args),
        Command::Predict(args) => train::predict(args),
        Command::AddModel(args) => train::add_model(args),
        Command::MergeShards(args) => train::merge_shards(args),
        Command::Eval(args) => train::eval(args),
        Command::EvalPrompt(args) => prompt::eval_prompt(args),
        Command::Loop(args) => closed_loop::run(args),
        Command::EditScript(args) => edit_script::run(args),
        Command::Slices(args) => exchange::slices(args),
        Command::ImportDicom(args) => exchange::import_dicom(args),
        Command::AddCase(args) => exchange::add_case_cmd(args),
        Command::Experiment(args) => experiment::run(args),
        Command::ExportMesh(args) => mesh::run(args),
        Command::Bench(args) if args.which.in_window() => window_bench(&args),
        Command::Bench(args) => cli::bench::run(args),
    }
}

/// What a failure on burn's GPU device threads does: a headless command ends with an error
/// instead of waiting forever; the window (no command, `open`, the window benchmarks) records
/// it and goes on.
fn on_device_failure(command: Option<&Command>) -> mriloop::model::device_failure::OnFailure {
    use mriloop::model::device_failure::OnFailure;
    match command {
        None | Some(Command::Open(_)) => OnFailure::Record,
        Some(Command::Bench(args)) if args.which.in_window() => OnFailure::Record,
        Some(_) => OnFailure::Exit,
    }
}

/// The user's writable copy of the built-in demo project (made on first use).
fn demo() -> Result<PathBuf> {
    use mriloop::project::demo::{demo_project_copy, user_demo_dir};
    let dir = user_demo_dir();
    demo_project_copy(&dir)
        .with_context(|| format!("cannot copy the demo project to {}", dir.display()))
}

/// The review window on a project, loose files or the demo; with `--train`, training starts.
fn open_window(args: OpenArgs) -> Result<()> {
    let is_project = |p: &PathBuf| p.is_dir() || p.file_name().is_some_and(|n| n == "mriloop.json");
    let startup = match args.paths.as_slice() {
        [] => mriloop::app::Startup::Project(demo()?),
        [one] if args.mask.is_none() && is_project(one) => {
            mriloop::app::Startup::Project(one.clone())
        }
        _ => mriloop::app::Startup::Files {
            images: args.paths,
            mask: args.mask,
        },
    };
    let mut first = Vec::new();
    if args.train {
        use mriloop::app::training::{TrainCommand, TrainSettings};
        let settings = TrainSettings {
            only_reviewed: false,
            ..TrainSettings::default()
        };
        let train = mriloop::app::Command::Train;
        first.push(train(TrainCommand::Settings(settings)));
        first.push(train(TrainCommand::TogglePanel));
        first.push(train(TrainCommand::StartWhenOpen));
    }
    if let Some(at) = &args.at {
        let [x, y, z] = at.as_slice() else {
            anyhow::bail!("--at takes three numbers, X,Y,Z (mm); got {}", at.len());
        };
        let cursor = mriloop::app::ViewCommand::SetCursor(glam::DVec3::new(*x, *y, *z));
        let view = Box::new(mriloop::app::Command::View(cursor));
        first.push(mriloop::app::Command::WhenOpen(view));
    }
    mriloop::app::run(startup, first)
}

/// `mriloop bench loop` / `bench bold`: the window benchmarks.
fn window_bench(args: &BenchArgs) -> Result<()> {
    let (result, reference) = match args.which {
        BenchKind::Bold => (
            mriloop::app::window_bench::bold(args.size, args.frames),
            BOLD_REFERENCE,
        ),
        _ => (
            mriloop::app::window_bench::ui_loop(args.repeats),
            LOOP_REFERENCE,
        ),
    };
    let (figures, notes) = result.map_err(anyhow::Error::msg)?;
    print_figures(&figures, &notes, reference);
    Ok(())
}
