//! `mriloop`: the command line. A thin layer over the library; errors are reported here once.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mriloop::project::{nnunet, InputForm, Project};
use mriloop::volume::{read_header, read_volume};
use mriloop::{app, bench, phantom};
use std::path::PathBuf;

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
    /// Scripted editing session on one case, committing each step through the journal and
    /// printing `committed N` (used by the crash-recovery test).
    #[command(hide = true)]
    EditScript {
        /// The project folder.
        project: PathBuf,
        /// The case id.
        #[arg(long)]
        case: String,
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
}

fn main() -> Result<()> {
    let Some(command) = Cli::parse().command else {
        return app::run(app::Startup::Project(demo()?));
    };
    match command {
        Command::Open { paths, mask } => {
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
            app::run(startup)?;
        }
        Command::Phantom {
            out,
            cases,
            seed,
            form,
            grid,
            frames,
        } => {
            if grid < 8 {
                bail!("--grid must be at least 8");
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
        Command::EditScript {
            project,
            case,
            steps,
            seed,
            save_every,
            pause_ms,
        } => {
            use std::io::Write;
            mriloop::project::script::run_edit_script(
                &project,
                &case,
                steps,
                seed,
                save_every,
                pause_ms,
                |n| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "committed {n}");
                    let _ = out.flush();
                },
            )?;
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
        Command::Bench {
            which,
            size,
            repeats,
            file,
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
        },
    }
    Ok(())
}

/// The user's writable copy of the built-in demo project (made on first use).
fn demo() -> Result<PathBuf> {
    let dir = app::user_demo_dir();
    app::demo_project_copy(&dir)
        .with_context(|| format!("cannot copy the demo project to {}", dir.display()))
}

fn info(file: &std::path::Path, json: bool) -> Result<()> {
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
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("file:        {}", file.display());
    println!(
        "format:      NIfTI-{} ({}-endian)",
        h.version,
        if h.big_endian { "big" } else { "little" }
    );
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    println!("dims:        {}", d.join(" × "));
    print!(
        "spacing:     {:.4} × {:.4} × {:.4} mm",
        spacing[0], spacing[1], spacing[2]
    );
    if h.dims[3] > 1 {
        print!(", {:.4} s per frame", h.time_step_s());
    }
    println!();
    print!("datatype:    {}", h.datatype.name());
    if h.is_scaled() {
        print!(
            " (scaled: slope {}, inter {} → float32)",
            h.scl_slope, h.scl_inter
        );
    }
    println!();
    println!("orientation: {}", h.orientation_code());
    let source = if h.geometry.sform_code > 0 {
        "sform"
    } else if h.geometry.qform_code > 0 {
        "qform"
    } else {
        "spacing only"
    };
    println!(
        "affine:      voxel → world mm, from the {source} (qform_code {}, sform_code {})",
        h.geometry.qform_code, h.geometry.sform_code
    );
    for row in h.affine.rows().iter().take(3) {
        println!(
            "             [{:10.4} {:10.4} {:10.4} {:10.4}]",
            row[0], row[1], row[2], row[3]
        );
    }
    match range {
        Some((lo, hi)) => println!("range:       {lo} .. {hi}"),
        None => println!("range:       (all NaN)"),
    }
    Ok(())
}
