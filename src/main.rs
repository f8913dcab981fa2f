//! `mriloop`: the command line. A thin layer over the library; errors are reported here once.

use anyhow::{bail, Context, Result};
use burn::config::Config as _;
use clap::{Parser, Subcommand, ValueEnum};
use mriloop::project::{nnunet, InputForm, Project};
use mriloop::volume::{read_header, read_volume};
use mriloop::{app, bench, model, phantom};
use std::path::{Path, PathBuf};

/// Review, correct and train a multi-task brain-MRI network in one native app.
#[derive(Parser)]
#[command(name = "mriloop", version, about)]
struct Cli {
    /// With no command, the review window opens on the built-in demo case.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the review window on a project folder, or on loose NIfTI files (first = main image).
    Open {
        /// A project folder (or its mriloop.json), or one or more .nii/.nii.gz images.
        paths: Vec<PathBuf>,
        /// A label file to show as the mask over loose images (ITK-SNAP's -s).
        #[arg(long, visible_alias = "seg")]
        mask: Option<PathBuf>,
        /// Open the training panel and start training at once, on every case with a reference
        /// (fine-tuning the active model version if there is one).
        #[arg(long)]
        train: bool,
    },
    /// Write a ready project of synthetic brain cases (deterministic from the seed).
    Phantom {
        /// Project folder to create.
        #[arg(long)]
        out: PathBuf,
        /// Number of cases.
        #[arg(long, default_value_t = 10)]
        cases: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Input form: multi-sequence 3D, single 2D slices, or a 4D BOLD time series.
        #[arg(long, value_enum, default_value_t = Form::ThreeD)]
        form: Form,
        /// Nominal voxels per axis (field of view: this many mm in 3D/2D, 3 mm each in 4D).
        #[arg(long, default_value_t = 64)]
        grid: usize,
        /// Time points of a 4D case.
        #[arg(long, default_value_t = 100)]
        frames: usize,
        /// Voxel size (mm, isotropic) of 3D/2D cases (default: random 0.7–1.2 mm per axis).
        #[arg(long)]
        voxel_mm: Option<f64>,
        /// Lesions are all white-matter lesions, each visible on only one of T1, T2 and FLAIR.
        #[arg(long)]
        sequence_specific_lesions: bool,
    },
    /// Describe a NIfTI file: dims, spacing, affine, datatype, orientation, intensity range.
    Info {
        /// A .nii or .nii.gz file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import an nnU-Net v2 raw dataset as a new project.
    Import {
        /// The dataset folder (holding dataset.json, imagesTr, labelsTr).
        dataset: PathBuf,
        /// Project folder to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a project as an nnU-Net v2 raw dataset (classes go to classes.csv beside it).
    Export {
        /// The project folder.
        project: PathBuf,
        /// Dataset folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the multi-task network on a project's cases (reference mask + class), validating
    /// on held-out cases after every epoch; writes OUT/best and OUT/last checkpoints.
    Train {
        /// The project folder.
        project: PathBuf,
        /// A fit configuration (JSON, as written to OUT/fit.json); flags below are ignored then.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where checkpoints go (default PROJECT/model).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Epochs.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Steps per epoch.
        #[arg(long, default_value_t = 50)]
        steps_per_epoch: usize,
        /// Input sequences, comma-separated (default: the project's first two).
        #[arg(long, value_delimiter = ',')]
        sequences: Vec<String>,
        /// Patch edge (voxels).
        #[arg(long, default_value_t = 32)]
        patch: usize,
        /// Patches per batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Edge of the centre crop the class is learned and predicted from (whole head).
        #[arg(long, default_value_t = 64)]
        class_window: usize,
        /// Every this many steps a classification step on the whole-head crop (joint mode)
        #[arg(long, default_value_t = 3)]
        class_every: usize,
        /// Channels of the first level.
        #[arg(long, default_value_t = 8)]
        base_channels: usize,
        /// Resample cases to this voxel size (mm) for training and prediction (default: each
        /// case's own grid).
        #[arg(long)]
        spacing: Option<f64>,
        /// Tasks: joint, seg or class.
        #[arg(long, default_value = "joint")]
        mode: String,
        /// Learning rate.
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// cpu, gpu or auto (a hardware GPU if present).
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Also write the loss and validation curves to OUT/curves.png.
        #[arg(long)]
        plot: bool,
        /// Start from this checkpoint's weights (fine-tune), e.g. PROJECT/model/best.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Predict every case of a project with a trained model (mask, probability, class).
    Predict {
        /// The project folder.
        project: PathBuf,
        /// A checkpoint folder (config.json + model.bpk).
        #[arg(long)]
        model: PathBuf,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// Evaluate a model on a project's cases with reference masks: per-case and cohort Dice,
    /// volume error, class AUC (`metric:` lines), optionally as CSV.
    Eval {
        /// The project folder.
        project: PathBuf,
        /// A checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// Only the cases held out from training (listed in the model's ../validation.txt).
        #[arg(long)]
        held_out: bool,
        /// Write per-case figures to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// The closed loop scripted end to end on a phantom: a weak first model, predictions
    /// accepted and corrected with the editing tools on some cases, fine-tuning on the
    /// corrections (the training panel's code path), re-inference; prints the held-out Dice
    /// before and after as `metric:` lines.
    Loop {
        /// A new folder for the phantom project and its truth masks.
        #[arg(long)]
        out: PathBuf,
        /// Phantom cases in all.
        #[arg(long, default_value_t = 8)]
        cases: usize,
        /// Phantom grid (mm field of view).
        #[arg(long, default_value_t = 32)]
        grid: usize,
        /// Cases annotated by hand before the first model.
        #[arg(long, default_value_t = 2)]
        seed_cases: usize,
        /// Cases corrected from the first model's predictions.
        #[arg(long, default_value_t = 4)]
        corrected: usize,
        /// Steps of the first model.
        #[arg(long, default_value_t = 5)]
        first_steps: usize,
        /// Fine-tuning epochs.
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        /// Fine-tuning steps per epoch.
        #[arg(long, default_value_t = 80)]
        steps_per_epoch: usize,
        /// Patch edge (voxels).
        #[arg(long, default_value_t = 16)]
        patch: usize,
        /// Channels of the first level.
        #[arg(long, default_value_t = 8)]
        base_channels: usize,
        /// Loss weight of corrected voxels.
        #[arg(long, default_value_t = 3.0)]
        changed_weight: f64,
        /// Tasks: joint, seg or class.
        #[arg(long, default_value = "seg")]
        mode: String,
        /// Learning rate.
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
    },
    /// Scripted editing session on one case (of a project, or loose files with `--files`),
    /// each step given to the session as the window gives it and journaled, printing
    /// `committed N` (used by the crash-recovery tests).
    #[command(hide = true)]
    EditScript {
        /// The project folder.
        project: Option<PathBuf>,
        /// The case id (with a project).
        #[arg(long)]
        case: Option<String>,
        /// Loose image files instead of a project.
        #[arg(long, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The loose files' label file.
        #[arg(long)]
        seg: Option<PathBuf>,
        /// Where loose files' working copies go (default: mriloop's data folder).
        #[arg(long)]
        loose_root: Option<PathBuf>,
        /// Steps to run.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the script.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Save every this many steps (0: never).
        #[arg(long, default_value_t = 0)]
        save_every: usize,
        /// Pause between steps (ms).
        #[arg(long, default_value_t = 10)]
        pause_ms: u64,
    },
    /// Make a 2D project from one 3D volume: every slice (third voxel axis) where chosen labels
    /// of a label volume on the same grid appear becomes a single-slice case with those labels
    /// (renumbered 1..n) as its reference
    Slices {
        /// The 3D image.
        #[arg(long)]
        image: PathBuf,
        /// A label volume on the image's grid (e.g. an atlas parcellation).
        #[arg(long)]
        labels: PathBuf,
        /// Labels to keep, as VALUE:NAME pairs, comma-separated (e.g. 71:caudate_L,72:caudate_R).
        #[arg(long)]
        keep: String,
        /// The project folder to create.
        #[arg(long)]
        out: PathBuf,
        /// Sequence name of the image.
        #[arg(long, default_value = "T1")]
        sequence: String,
        /// Keep slices with at least this many voxels of the kept labels.
        #[arg(long, default_value_t = 20)]
        min_voxels: usize,
        /// The class every case gets.
        #[arg(long, default_value = "slice")]
        class: String,
    },
    /// Import a folder of DICOM files: group into series, build each volume, then list them, add
    /// the chosen ones to a project case as named sequences (--project, --case), or write them as
    /// NIfTI files (--out). Files and series that cannot be imported are listed with the reason.
    ImportDicom {
        /// The folder (searched with its sub-folders).
        dir: PathBuf,
        /// A project to add the series to (created if the folder holds none).
        #[arg(long, requires = "case")]
        project: Option<PathBuf>,
        /// The case the series become sequences of (created if new).
        #[arg(long)]
        case: Option<String>,
        /// The series to import, by their number in the listing (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        series: Vec<usize>,
        /// Write each chosen series as OUT/<name>.nii.gz.
        #[arg(long, conflicts_with = "project")]
        out: Option<PathBuf>,
    },
    /// Run an experiment: the plan's arms × seeds trained with the same budget, each evaluated on
    /// the same held-out test cases; writes OUT/report.md, OUT/cases.csv and PNG plots, and
    /// prints `metric:` lines per arm
    Experiment {
        /// The project folder.
        project: PathBuf,
        /// The plan (JSON): seeds, test split, base settings and arms.
        #[arg(long)]
        plan: PathBuf,
        /// The report folder (created; runs go to OUT/runs).
        #[arg(long)]
        out: PathBuf,
        /// Override the plan's backend: cpu, gpu or auto.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Run a benchmark and print `bench:` lines.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: BenchKind,
        /// Volume edge length.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// io: the file to open; generated there (and kept) if it does not exist. Default: a
        /// generated file in a temporary folder, removed afterwards.
        #[arg(long)]
        file: Option<PathBuf>,
        /// train: also measure wgpu on a software Vulkan device (lavapipe) when no hardware GPU
        /// is present (its first step compiles shaders for minutes).
        #[arg(long)]
        software_gpu: bool,
        /// bold: time points of the BOLD run.
        #[arg(long, default_value_t = 300)]
        frames: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Form {
    #[value(name = "3d")]
    ThreeD,
    #[value(name = "2d")]
    TwoD,
    #[value(name = "4d")]
    FourD,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchKind {
    /// Open a size³ f32 .nii.gz, beside nibabel.
    Io,
    /// Redraw three views of a size³ volume with overlay at 1920×1080; mask sub-box vs full upload.
    Render,
    /// Brush event to mask texture updated (5 mm radius, size³ mask), beside a full upload.
    Edit,
    /// Training steps per second of the 3D network (patch = --size, batch 2), burn vs PyTorch.
    Train,
    /// UI frame times (p50, p99) of the review window, idle and while training on the CPU
    /// (--repeats frames each).
    Loop,
    /// Memory (peak RSS, GPU textures) and speed of a --size³ × --frames BOLD case in the window.
    Bold,
}

fn main() -> Result<()> {
    let Some(command) = Cli::parse().command else {
        return app::run(app::Startup::Project(demo()?), Vec::new());
    };
    match command {
        Command::Open { paths, mask, train } => {
            let startup = match paths.as_slice() {
                [] => app::Startup::Project(demo()?),
                [one]
                    if mask.is_none()
                        && (one.is_dir()
                            || one.file_name().is_some_and(|n| n == "mriloop.json")) =>
                {
                    app::Startup::Project(one.clone())
                }
                _ => app::Startup::Files {
                    images: paths,
                    mask,
                },
            };
            let mut first = Vec::new();
            if train {
                use app::training::{TrainCommand, TrainSettings};
                let settings = TrainSettings {
                    only_reviewed: false,
                    ..TrainSettings::default()
                };
                first.push(app::Command::Train(TrainCommand::Settings(settings)));
                first.push(app::Command::Train(TrainCommand::TogglePanel));
                first.push(app::Command::Train(TrainCommand::StartWhenOpen));
            }
            app::run(startup, first)?;
        }
        Command::Phantom {
            out,
            cases,
            seed,
            form,
            grid,
            frames,
            voxel_mm,
            sequence_specific_lesions,
        } => {
            if grid < 8 {
                bail!("--grid must be at least 8");
            }
            if voxel_mm.is_some_and(|v| !(0.2..=5.0).contains(&v)) {
                bail!("--voxel-mm must be between 0.2 and 5");
            }
            let cfg = phantom::PhantomConfig {
                cases,
                seed,
                form: match form {
                    Form::ThreeD => InputForm::Volume3d,
                    Form::TwoD => InputForm::Slice2d,
                    Form::FourD => InputForm::TimeSeries4d,
                },
                grid,
                frames,
                voxel_mm,
                sequence_specific_lesions,
            };
            let bar = indicatif::ProgressBar::new(cases as u64);
            let project =
                phantom::generate_project(&out, &cfg, |done, _| bar.set_position(done as u64))?;
            bar.finish_and_clear();
            println!(
                "wrote {} cases to {}",
                project.manifest.cases.len(),
                project.manifest_path().display()
            );
        }
        Command::Info { file, json } => info(&file, json)?,
        Command::Train {
            project,
            config,
            out,
            epochs,
            steps_per_epoch,
            sequences,
            patch,
            batch,
            class_window,
            class_every,
            base_channels,
            spacing,
            mode,
            lr,
            seed,
            backend,
            plot,
            resume,
        } => {
            let p = Project::open(&project)?;
            let from_file = config.is_some();
            let fit_config = match config {
                Some(path) => model::FitConfig::load(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => model::fit_config_for(
                    &p,
                    &model::FitOptions {
                        sequences,
                        epochs,
                        steps_per_epoch,
                        patch,
                        batch,
                        class_window,
                        base_channels,
                        mode,
                        spacing_mm: spacing,
                        learning_rate: lr,
                        seed,
                    },
                )?,
            };
            let fit_config = if from_file {
                fit_config
            } else {
                fit_config.with_class_every(class_every.max(1))
            };
            let fit_config = match resume {
                Some(dir) => fit_config.with_resume_from(Some(dir.display().to_string())),
                None => fit_config,
            };
            train_cli(
                &p,
                &fit_config,
                out.unwrap_or_else(|| project.join("model")),
                &backend,
                plot,
            )?;
        }
        Command::Predict {
            project,
            model: dir,
            backend,
        } => {
            let (device, about) = model::choose_device(&backend);
            eprintln!("running on {about}");
            let (cfg, net) = model::load_checkpoint(&dir, &device)?;
            let mut p = Project::open(&project)?;
            let bar = indicatif::ProgressBar::new(p.manifest.cases.len() as u64);
            let n = model::predict_project(&mut p, &net, &cfg, &device, |d, _| {
                bar.set_position(d as u64)
            })?;
            bar.finish_and_clear();
            println!("predicted {n} cases into {}", p.root().display());
        }
        Command::Eval {
            project,
            model: dir,
            held_out,
            csv,
            backend,
        } => eval_cli(&project, &dir, held_out, csv, &backend)?,
        Command::Loop {
            out,
            cases,
            grid,
            seed_cases,
            corrected,
            first_steps,
            epochs,
            steps_per_epoch,
            patch,
            base_channels,
            changed_weight,
            mode,
            lr,
        } => {
            let cfg = mriloop::closed_loop::LoopConfig {
                cases,
                grid,
                seed_cases,
                corrected_cases: corrected,
                first_steps,
                fine_tune_epochs: epochs,
                fine_tune_steps: steps_per_epoch,
                options: model::FitOptions {
                    sequences: vec!["T1".into(), "T2".into(), "FLAIR".into()],
                    epochs: 1,
                    steps_per_epoch: 1,
                    patch,
                    batch: 2,
                    class_window: grid.next_power_of_two().clamp(16, 64),
                    base_channels,
                    mode,
                    spacing_mm: None,
                    learning_rate: lr,
                    seed: 1,
                },
                changed_weight,
                seed: 1,
            };
            let r = mriloop::closed_loop::run_closed_loop(&out, &cfg)?;
            println!(
                "versions: {} (first) -> {} (fine-tuned on {corrected} corrected cases, {} voxels corrected)",
                r.versions.0, r.versions.1, r.voxels_corrected
            );
            println!("held-out cases: {}", r.held_out.join(", "));
            for (l, name) in r.labels.iter().enumerate() {
                let f = |d: Option<f64>| d.map_or("n/a".into(), |d| format!("{d:.4}"));
                println!("metric: dice_{name}_before = {}", f(r.dice_before[l]));
                println!("metric: dice_{name}_after = {}", f(r.dice_after[l]));
            }
            println!(
                "metric: dice_foreground_before = {:.4}",
                r.foreground_before
            );
            println!("metric: dice_foreground_after = {:.4}", r.foreground_after);
        }
        Command::EditScript {
            project,
            case,
            files,
            seg,
            loose_root,
            steps,
            seed,
            save_every,
            pause_ms,
        } => {
            use mriloop::session::script::{run_edit_script, ScriptTarget};
            use std::io::Write;
            let target = match (project, case) {
                (Some(dir), Some(case_id)) => ScriptTarget::Project { dir, case_id },
                (None, None) if !files.is_empty() => ScriptTarget::Files {
                    images: files,
                    mask: seg,
                    loose_root: loose_root
                        .unwrap_or_else(mriloop::session::Session::default_loose_root),
                },
                _ => bail!("give a project folder and --case, or --files (and --seg)"),
            };
            run_edit_script(
                &target,
                steps,
                seed,
                save_every,
                pause_ms,
                |n| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "committed {n}");
                    let _ = out.flush();
                },
            )
            .map_err(anyhow::Error::msg)?;
        }
        Command::Import { dataset, out } => {
            let p = nnunet::import_nnunet(&dataset, &out)?;
            println!(
                "imported {} cases into {}",
                p.manifest.cases.len(),
                p.root().display()
            );
        }
        Command::Export { project, out } => {
            let p = Project::open(&project)?;
            let s = nnunet::export_nnunet(&p, &out)?;
            println!(
                "exported {} training and {} test cases to {}",
                s.training,
                s.test,
                out.display()
            );
        }
        Command::Slices {
            image,
            labels,
            keep,
            out,
            sequence,
            min_voxels,
            class,
        } => {
            let keep = keep
                .split(',')
                .map(|pair| {
                    let (v, n) = pair
                        .split_once(':')
                        .with_context(|| format!("--keep: {pair:?} is not VALUE:NAME"))?;
                    let v: u32 = v
                        .trim()
                        .parse()
                        .with_context(|| format!("--keep: {v:?} is not a label value"))?;
                    Ok((v, n.trim().to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let p = mriloop::project::slices::slice_project(
                &image,
                &labels,
                &out,
                &mriloop::project::slices::SliceOptions {
                    keep,
                    sequence,
                    min_voxels,
                    class,
                },
            )?;
            println!(
                "wrote {} slice cases to {}",
                p.manifest.cases.len(),
                p.manifest_path().display()
            );
        }
        Command::ImportDicom {
            dir,
            project,
            case,
            series,
            out,
        } => import_dicom(
            &dir,
            project.as_deref(),
            case.as_deref(),
            &series,
            out.as_deref(),
        )?,
        Command::Experiment {
            project,
            plan,
            out,
            backend,
        } => experiment_cli(&project, &plan, &out, backend)?,
        Command::Bench {
            which,
            size,
            repeats,
            file,
            software_gpu,
            frames,
        } => match which {
            BenchKind::Io => {
                let dir =
                    std::env::temp_dir().join(format!("mriloop-bench-{}", std::process::id()));
                let result = match file {
                    Some(path) => bench::io(&path, size, repeats),
                    None => {
                        std::fs::create_dir_all(&dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
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
                    println!(
                        "bench: nifti_load_ratio_vs_nibabel_{size} = {:.2} x",
                        ours.value / theirs.value
                    );
                }
                if let Some(n) = note {
                    println!("note: {n}");
                }
            }
            BenchKind::Render => {
                let (figures, adapter) = bench::render(size, 60, repeats)?;
                println!("adapter: {adapter}");
                for f in &figures {
                    println!("{f}");
                }
                println!("reference: goal render_fps >= 30 on lavapipe at 256 (>= 60 on a GPU at 512); sub-box >= 20 x faster than a full upload");
            }
            BenchKind::Edit => {
                let (figures, adapter) = bench::edit(size, 5.0, repeats.max(20))?;
                println!("adapter: {adapter}");
                for f in &figures {
                    println!("{f}");
                }
                println!("reference: goal brush_to_texture_ms < 16 ms on lavapipe (a 60 Hz frame)");
            }
            BenchKind::Loop => {
                let (figures, notes) = bench::ui_loop(repeats).map_err(anyhow::Error::msg)?;
                for f in &figures {
                    println!("{f}");
                }
                for n in notes {
                    println!("note: {n}");
                }
                println!(
                    "reference: goal ui_frame_ms_p99_training < 33 ms (training on the other core)"
                );
            }
            BenchKind::Bold => {
                let (figures, notes) = bench::bold(size, frames).map_err(anyhow::Error::msg)?;
                for f in &figures {
                    println!("{f}");
                }
                for n in notes {
                    println!("note: {n}");
                }
                println!(
                    "reference: issue 9 asks for the memory of a 64³ × 300 float BOLD case (peak RSS, GPU memory); streamed, the GPU holds one frame"
                );
            }
            BenchKind::Train => {
                let (figures, notes) = bench::train(size, 2, repeats, software_gpu);
                for f in &figures {
                    println!("{f}");
                }
                for n in notes {
                    println!("note: {n}");
                }
                println!(
                    "reference: 3D net, 2 sequences, base 8, depth 3, patch {size}³, batch 2; goal: burn on GPU >= PyTorch eager on the same GPU"
                );
            }
        },
    }
    Ok(())
}

/// Hand each event from `rx` to `on` until `worker` has finished (or dropped its sender) and
/// nothing is left to receive.
fn relay_events<E, T>(
    rx: &std::sync::mpsc::Receiver<E>,
    worker: &std::thread::ScopedJoinHandle<'_, T>,
    mut on: impl FnMut(E),
) {
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(event) => on(event),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if worker.is_finished() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn experiment_cli(
    project: &Path,
    plan_path: &Path,
    out: &Path,
    backend: Option<String>,
) -> Result<()> {
    use mriloop::experiment::{self, ExperimentEvent, ExperimentPlan};
    let mut plan = ExperimentPlan::load(plan_path)?;
    if let Some(b) = backend {
        plan.backend = b;
    }
    let p = Project::open(project)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let total = plan.total_steps();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let control = model::FitControl::default();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| experiment::run_experiment(&p, &plan, out, &tx, &control));
        let (mut done, mut run_label, mut runs) = (0u64, String::new(), 0);
        relay_events(&rx, &worker, |event| match event {
            ExperimentEvent::Started {
                runs: n,
                test_cases,
                device,
            } => {
                runs = n;
                say(format!(
                    "{n} runs on {device}; test cases: {}",
                    test_cases.join(", ")
                ));
            }
            ExperimentEvent::RunStarted {
                index, arm, seed, ..
            } => {
                run_label = format!("run {}/{runs}: {arm} seed {seed}", index + 1);
                bar.set_message(run_label.clone());
            }
            ExperimentEvent::Fit(model::FitEvent::Train(model::TrainEvent::Step { .. })) => {
                done += 1;
                bar.set_position(done);
            }
            ExperimentEvent::Evaluating { .. } => {
                bar.set_message(format!("{run_label}: evaluating"));
            }
            ExperimentEvent::RunFinished { seconds, .. } => {
                say(format!("{run_label}: done in {seconds:.0} s"));
            }
            _ => {}
        });
        worker.join()
    });
    bar.finish_and_clear();
    let result = result.map_err(|_| anyhow::anyhow!("the experiment thread panicked"))??;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    app::experiment_plots::write_report_with_plots(&result, out, &command)
        .map_err(anyhow::Error::msg)?;
    for arm in &result.plan.arms {
        for (name, value) in experiment::report::headline(&result, &arm.name) {
            println!("metric: {}_{name} = {value:.4}", arm.name);
        }
    }
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

fn train_cli(
    project: &Project,
    config: &model::FitConfig,
    out: PathBuf,
    backend: &str,
    plot: bool,
) -> Result<()> {
    let mut curves = app::curves::Curves::default();
    let mut last_step = 0;
    let (device, about) = model::choose_device(backend);
    eprintln!("training on {about}");
    let samples = model::load_samples_with(
        project,
        &model::SampleSelection::for_training(&config.training),
    )?;
    if samples.len() < 2 {
        bail!(
            "{}: training needs at least two cases with a reference mask and a class; found {}",
            project.manifest_path().display(),
            samples.len()
        );
    }
    let (train, val) =
        model::split_by_case(samples, config.validation_fraction, config.training.seed);
    model::session::write_run_files(&out, config, &val)?;
    let ids: Vec<String> = val.iter().map(|s| s.case_id.clone()).collect();
    eprintln!(
        "{} training cases, {} validation cases ({})",
        train.len(),
        val.len(),
        ids.join(", ")
    );
    let total = (config.epochs * config.steps_per_epoch) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let control = model::FitControl::default();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| model::fit(config, train, &val, &device, &out, &tx, &control));
        relay_events(&rx, &worker, |event| {
            match event {
                model::FitEvent::Train(model::TrainEvent::Step { step, loss }) => {
                    curves.push_step(step, &loss);
                    last_step = step;
                    bar.set_position(step as u64);
                    bar.set_message(format!("loss {:.3}", loss.total));
                }
                model::FitEvent::Epoch(e) => {
                    let dice = curves
                        .push_epoch(last_step, &e.validation, |l| config.training.label_name(l));
                    let line = format!(
                        "epoch {:>3}: train loss {:.4}; validation Dice {}; class accuracy {:.3}, AUC {}{}",
                        e.epoch,
                        e.train_loss,
                        dice.join(", "),
                        e.validation.class_accuracy,
                        e.validation.class_auc.map_or("n/a".into(), |a| format!("{a:.3}")),
                        if e.best { " (best)" } else { "" }
                    );
                    // A hidden bar (output not a terminal) drops println: print plainly then.
                    if bar.is_hidden() {
                        println!("{line}");
                    } else {
                        bar.println(line);
                    }
                }
                _ => {}
            }
        });
        worker.join()
    });
    bar.finish_and_clear();
    let result = result.map_err(|_| anyhow::anyhow!("the training thread panicked"))??;
    if plot {
        let png = out.join("curves.png");
        app::curves::write_png(&curves, [1400, 500], &png)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", png.display()))?;
        println!("curves: {}", png.display());
    }
    println!(
        "trained {} epochs; best checkpoint {}, last {}",
        result.epochs.len(),
        result.best.display(),
        result.last.display()
    );
    Ok(())
}

fn eval_cli(
    project: &std::path::Path,
    dir: &std::path::Path,
    held_out: bool,
    csv: Option<PathBuf>,
    backend: &str,
) -> Result<()> {
    let (device, about) = model::choose_device(backend);
    eprintln!("evaluating on {about}");
    let (cfg, net) = model::load_checkpoint(dir, &device)?;
    let p = Project::open(project)?;
    let only: Option<Vec<String>> = if held_out {
        let list = dir
            .parent()
            .map(|d| d.join("validation.txt"))
            .ok_or_else(|| anyhow::anyhow!("{}: no parent folder", dir.display()))?;
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading the held-out list {}", list.display()))?;
        Some(
            text.lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
        )
    } else {
        None
    };
    let bar = indicatif::ProgressBar::new(p.manifest.cases.len() as u64);
    let (cases, cohort) =
        model::evaluate_project(&p, &net, &cfg, &device, only.as_deref(), |d, n| {
            bar.set_length(n as u64);
            bar.set_position(d as u64)
        })?;
    bar.finish_and_clear();
    let name = |l: usize| cfg.label_name(l + 1);
    let mut rows = vec![String::from(
        "case,label,dice,hd95_mm,volume_error_mm3,class,p_predicted",
    )];
    for c in &cases {
        let class = c.class.map_or(String::new(), |k| k.to_string());
        let pmax = c.class_probabilities.iter().copied().fold(0.0f32, f32::max);
        for (l, d) in c.dice.iter().enumerate() {
            rows.push(format!(
                "{},{},{},{},{:.1},{class},{pmax:.4}",
                c.case_id,
                name(l),
                d.map_or(String::new(), |d| format!("{d:.4}")),
                c.hd95_mm[l].map_or(String::new(), |h| format!("{h:.2}")),
                c.volume_error_mm3[l]
            ));
        }
    }
    if let Some(path) = csv {
        mriloop::atomic::write_atomic(&path, (rows.join("\n") + "\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("evaluated {} cases", cases.len());
    for (l, d) in cohort.dice.iter().enumerate() {
        if let Some(d) = d {
            println!("metric: dice_{} = {d:.4}", name(l));
        }
        let hd: Vec<f64> = cases.iter().filter_map(|c| c.hd95_mm[l]).collect();
        if !hd.is_empty() {
            println!(
                "metric: hd95_mm_{} = {:.2}",
                name(l),
                hd.iter().sum::<f64>() / hd.len() as f64
            );
        }
    }
    if let Some(a) = cohort.class_auc {
        println!("metric: class_auc = {a:.4}");
    }
    println!("metric: class_accuracy = {:.4}", cohort.class_accuracy);
    Ok(())
}

/// The user's writable copy of the built-in demo project (made on first use).
fn demo() -> Result<PathBuf> {
    let dir = app::user_demo_dir();
    app::demo_project_copy(&dir)
        .with_context(|| format!("cannot copy the demo project to {}", dir.display()))
}

fn info(file: &std::path::Path, json: bool) -> Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let h = read_header(file)?;
    let vol = read_volume(file)?;
    let spacing = h.affine.spacing_mm();
    let range = vol.range();
    let dims: Vec<usize> = h.dims[..h.ndim.clamp(3, 4)].to_vec();
    if json {
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "nifti_version": h.version,
            "dims": dims,
            "spacing": spacing,
            "affine": h.affine.rows(),
            "datatype": h.datatype.name(),
            "orientation": h.orientation_code(),
            "qform_code": h.geometry.qform_code,
            "sform_code": h.geometry.sform_code,
            "scl_slope": h.scl_slope,
            "scl_inter": h.scl_inter,
            "time_step_s": if h.dims[3] > 1 { Some(h.time_step_s()) } else { None },
            "range": range.map(|(a, b)| [a, b]),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return emit(&out);
    }
    writeln!(out, "file:        {}", file.display())?;
    writeln!(
        out,
        "format:      NIfTI-{} ({}-endian)",
        h.version,
        if h.big_endian { "big" } else { "little" }
    )?;
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    writeln!(out, "dims:        {}", d.join(" × "))?;
    write!(
        out,
        "spacing:     {:.4} × {:.4} × {:.4} mm",
        spacing[0], spacing[1], spacing[2]
    )?;
    if h.dims[3] > 1 {
        write!(out, ", {:.4} s per frame", h.time_step_s())?;
    }
    writeln!(out)?;
    write!(out, "datatype:    {}", h.datatype.name())?;
    if h.is_scaled() {
        write!(
            out,
            " (scaled: slope {}, inter {} → float32)",
            h.scl_slope, h.scl_inter
        )?;
    }
    writeln!(out)?;
    writeln!(out, "orientation: {}", h.orientation_code())?;
    let source = if h.geometry.sform_code > 0 {
        "sform"
    } else if h.geometry.qform_code > 0 {
        "qform"
    } else {
        "spacing only"
    };
    writeln!(
        out,
        "affine:      voxel → world mm, from the {source} (qform_code {}, sform_code {})",
        h.geometry.qform_code, h.geometry.sform_code
    )?;
    for row in h.affine.rows().iter().take(3) {
        writeln!(
            out,
            "             [{:10.4} {:10.4} {:10.4} {:10.4}]",
            row[0], row[1], row[2], row[3]
        )?;
    }
    match range {
        Some((lo, hi)) => writeln!(out, "range:       {lo} .. {hi}")?,
        None => writeln!(out, "range:       (all NaN)")?,
    }
    emit(&out)
}

/// Write to standard output; a closed pipe (e.g. `| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `mriloop import-dicom`: scan, list, then import the chosen series.
fn import_dicom(
    dir: &Path,
    project: Option<&Path>,
    case: Option<&str>,
    chosen: &[usize],
    out: Option<&Path>,
) -> Result<()> {
    use mriloop::volume::dicom::scan_dir;
    let scan = scan_dir(dir)?;
    println!(
        "{}: {} files, {} series",
        dir.display(),
        scan.files_seen,
        scan.series.len()
    );
    for (k, s) in scan.series.iter().enumerate() {
        let [nx, ny, nz, nt] = s.volume.dims();
        let sp = s.volume.spacing_mm();
        let time = if nt > 1 {
            format!(" x {nt}")
        } else {
            String::new()
        };
        println!(
            "  {}: \"{}\" {} {nx}x{ny}x{nz}{time} voxels of {:.2}x{:.2}x{:.2} mm, {} files, {}",
            k + 1,
            s.description,
            s.modality,
            sp[0],
            sp[1],
            sp[2],
            s.files.len(),
            s.volume.affine().orientation_code()
        );
    }
    for p in &scan.problems {
        println!("  not imported: {p}");
    }
    if let Some(bad) = chosen.iter().find(|k| **k == 0 || **k > scan.series.len()) {
        bail!(
            "--series {bad}: the listing has series 1 to {}",
            scan.series.len()
        );
    }
    let picked: Vec<_> = if chosen.is_empty() {
        scan.series.iter().collect()
    } else {
        chosen.iter().map(|k| &scan.series[k - 1]).collect()
    };
    if (project.is_some() || out.is_some()) && picked.is_empty() {
        bail!("{}: no series could be imported", dir.display());
    }
    if let (Some(root), Some(case)) = (project, case) {
        let mut p = if root.join("mriloop.json").exists() || root.is_file() {
            Project::open(root)?
        } else {
            let name = root
                .file_name()
                .map_or_else(|| "imported".into(), |n| n.to_string_lossy().into_owned());
            Project::create(root, mriloop::project::Manifest::new(name))?
        };
        let names = mriloop::project::dicom_import::add_series_to_case(&mut p, case, &picked)?;
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        println!(
            "added to case {case} of {}: {}",
            p.manifest_path().display(),
            names.join(", ")
        );
    } else if let Some(out) = out {
        for path in mriloop::project::dicom_import::write_series_files(out, &picked)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
