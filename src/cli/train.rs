//! `mriloop train`, `predict` and `eval`: fit the multi-task network on a project's cases with
//! progress and per-epoch lines (and, with `--plot`, `OUT/curves.png` drawn on the CPU), predict
//! every case with a checkpoint, and evaluate a checkpoint (`metric:` lines, optional CSV).
//!
//! Invariants: training and prediction run on the device `--backend` picks (a hardware GPU only
//! when asked or found); the run files (`fit.json`, `validation.txt`) are written before the
//! first step, so `eval --held-out` finds the held-out list of any run; files are written
//! atomically.

use super::{relay_events, say, steps_bar};
use crate::model::budget::{Clock, SystemClock};
use crate::model::fingerprint::Fingerprint;
use crate::model::plan::Plan;
use crate::model::planned::PlanOverrides;
use crate::model::{self, FitConfig, FitEvent, TrainEvent};
use crate::plot::Curves;
use crate::project::shard::Shard;
use crate::project::Project;
use anyhow::{bail, Context, Result};
use burn::config::Config as _;
use std::path::{Path, PathBuf};

/// Arguments of `mriloop train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A fit configuration (JSON, as written to OUT/fit.json); flags below are ignored then,
    /// but for the schedule (`--epochs`, `--steps-per-epoch`: to fine-tune with a model's own
    /// configuration for a few steps). Without it, the dataset's plan (`mriloop plan`) decides
    /// every setting not given here.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where checkpoints go (default PROJECT/model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Epochs (default: the plan's).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Steps per epoch (default: the plan's steps over its epochs).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Input sequences, comma-separated (default: the plan's, every sequence).
    #[arg(long, value_delimiter = ',')]
    pub sequences: Vec<String>,
    /// Patch edge (voxels; default: the plan's patch and depth).
    #[arg(long)]
    pub patch: Option<usize>,
    /// Patches per batch (default: the plan's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Edge of the centre crop the class is learned and predicted from (whole head; default:
    /// the plan's).
    #[arg(long)]
    pub class_window: Option<usize>,
    /// Every this many steps a classification step on the whole-head crop (joint mode;
    /// default: the plan's).
    #[arg(long)]
    pub class_every: Option<usize>,
    /// Channels of the first level (default: the plan's).
    #[arg(long)]
    pub base_channels: Option<usize>,
    /// Resample cases to this voxel size (mm) for training and prediction (default: the plan's
    /// spacing).
    #[arg(long)]
    pub spacing: Option<f64>,
    /// Tasks: joint, seg or class.
    #[arg(long, default_value = "joint")]
    pub mode: String,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// cpu, gpu or auto (a hardware GPU if present).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Data-parallel training on this many devices: each batch split across GPUs 0..N (on the
    /// CPU, N replicas on its one device), their gradients summed by burn's multi-device
    /// optimiser step (default 1; the batch should hold at least N patches).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// f32, or mixed precision: f16 (with a dynamic loss scale) or bf16 — the convolutions in
    /// half precision on f32 weights, norms and losses in f32. For GPUs: burn's CPU backend
    /// has no half-precision kernels and runs them slower than f32. Default: f32, or the
    /// --config file's.
    #[arg(long)]
    pub precision: Option<String>,
    /// Also write the loss and validation curves to OUT/curves.png (drawn on the CPU; no GPU
    /// or display needed).
    #[arg(long)]
    pub plot: bool,
    /// Start from this checkpoint's weights (fine-tune), e.g. PROJECT/model/best.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Continue the run whose output folder this is (killed or preempted) from the end of its
    /// last finished epoch: weights, optimiser state, step, random draws and split, with its
    /// own fit.json (other settings are ignored).
    #[arg(long = "continue", value_name = "OUT")]
    pub continue_run: Option<PathBuf>,
    /// Train within this many minutes (fractions allowed): a few steps and a validation are
    /// timed on the device, epochs and steps are set to fit, and the run stops on time with
    /// its best checkpoint.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Train the promptable network (guidance channels for include/exclude points, boxes,
    /// scribbles and the mask to refine; a simulated user clicks at its errors) instead of
    /// the automatic one.
    #[arg(long)]
    pub promptable: bool,
    /// Loss weight of the voxels the user fixed after a recorded prompt's answer (a promptable
    /// run replays the prompts recorded in the training cases' prompt logs).
    #[arg(long, default_value_t = 3.0)]
    pub fixed_weight: f64,
}

/// Arguments of `mriloop predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A checkpoint folder (config.json + model.bpk); default: the project's active version
    /// (its predictions then name the version).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Only shard I of N (I from 0, e.g. a Slurm array index): the cases whose manifest index
    /// is I modulo N; their results are written per case and `merge-shards` puts them in the
    /// manifest, so shards running at once never race on it.
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// f32, f16 or bf16: the precision the network's windows run in on a GPU (f16/bf16: each
    /// pass's features in half precision on the f32 weights, the windows' probabilities summed
    /// in f32). Default: the precision the model was trained in. The CPU predicts in f32.
    #[arg(long)]
    pub precision: Option<String>,
}

/// Arguments of `mriloop add-model`.
#[derive(clap::Args, Debug)]
pub struct AddModelArgs {
    /// The project folder.
    pub project: PathBuf,
    /// The checkpoint folder (config.json + model.bpk), e.g. OUT/best of `train --out OUT`.
    #[arg(long)]
    pub model: PathBuf,
    /// Make it the project's active model (an automatic model; a promptable one is the
    /// Prompt tool's and never the active one).
    #[arg(long)]
    pub activate: bool,
}

/// Arguments of `mriloop merge-shards`.
#[derive(clap::Args, Debug)]
pub struct MergeShardsArgs {
    /// The project folder.
    pub project: PathBuf,
}

/// Arguments of `mriloop eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Only the cases held out from training (listed in the model's ../validation.txt).
    #[arg(long)]
    pub held_out: bool,
    /// Write per-case figures to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

/// `mriloop train`.
pub fn train(mut args: TrainArgs) -> Result<()> {
    // A time budget counts from here: planning and loading are part of it.
    let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(SystemClock::start());
    // `--resume` may name a run's or a version's folder: its best (else last) checkpoint.
    args.resume = args.resume.as_deref().map(crate::model::checkpoint_dir);
    let p = Project::open(&args.project)?;
    if let Some(out) = &args.continue_run {
        let path = out.join("fit.json");
        let config =
            FitConfig::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return train_project(&p, &config, out, (&args.backend, args.plot), Run::Continued);
    }
    let (config, planned) = fit_config(&p, &args)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.project.join("model"));
    if let Some((fp, plan)) = &planned {
        write_plan(&out, fp, plan)?;
    }
    let run = match args.minutes {
        Some(m) => Run::Budget(m, clock),
        None => Run::Planned,
    };
    train_project(&p, &config, &out, (&args.backend, args.plot), run)
}

/// The fit configuration: from `--config`, else from the flags, the dataset's plan deciding
/// what they leave unset (the plan is returned to be written beside the model).
fn fit_config(p: &Project, args: &TrainArgs) -> Result<(FitConfig, Option<(Fingerprint, Plan)>)> {
    let (config, planned) = match &args.config {
        Some(path) => {
            let mut config =
                FitConfig::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            config.epochs = args.epochs.unwrap_or(config.epochs);
            config.steps_per_epoch = args.steps_per_epoch.unwrap_or(config.steps_per_epoch);
            (config, None)
        }
        None => {
            let fp = Fingerprint::of(p)?;
            let plan = crate::model::plan::plan(&fp, model::apply::device_class(&args.backend));
            let plan = match args.promptable && !resumes_a_promptable_network(args) {
                true => plan.for_prompting(),
                false => plan,
            };
            let config = planned_config(p, args, &plan)?;
            note_tasks(&args.mode, &config.training);
            (config, Some((fp, plan)))
        }
    };
    let mut config = match args.promptable && config.training.prompt.is_none() {
        true => model::prompt_train::promptable(config, Default::default()),
        false => config,
    };
    if config.training.prompt.is_some() {
        config.changed_weight = args.fixed_weight;
    }
    let config = match &args.resume {
        Some(dir) => config.with_resume_from(Some(dir.display().to_string())),
        None => config,
    };
    let mut config = config.with_devices(args.devices.max(1));
    if let Some(name) = &args.precision {
        config.training.precision = model::Precision::parse(name)?;
    }
    Ok((config, planned))
}

/// Say on stderr why a joint run (the default) trains one task: the project lacks the other's
/// references (the plan's own choice, reading the class from the mask, it says itself).
fn note_tasks(asked: &str, training: &model::TrainingConfig) {
    if asked != "joint" || training.class_evidence.is_some() {
        return;
    }
    match training.mode {
        model::TaskMode::SegmentationOnly => {
            eprintln!("note: no case has a class: training the segmentation only")
        }
        model::TaskMode::ClassificationOnly => {
            eprintln!("note: no case has a reference mask: training the classification only")
        }
        model::TaskMode::Joint => {}
    }
}

/// Whether `--resume` names a promptable network's checkpoint (its `config.json` has the
/// prompt settings): fine-tuning it is no new promptable network (the plan's rule 12).
fn resumes_a_promptable_network(args: &TrainArgs) -> bool {
    args.resume.as_ref().is_some_and(|dir| {
        <crate::model::TrainingConfig as burn::config::Config>::load(dir.join("config.json"))
            .is_ok_and(|c| c.prompt.is_some())
    })
}

/// The flags' settings, the plan's where a flag is not given.
fn planned_config(p: &Project, args: &TrainArgs, plan: &Plan) -> Result<FitConfig> {
    let base = model::FitOptions {
        sequences: args.sequences.clone(),
        mode: args.mode.clone(),
        learning_rate: args.lr,
        seed: args.seed,
        ..model::FitOptions::default()
    };
    let choices = PlanOverrides {
        epochs: args.epochs,
        steps_per_epoch: args.steps_per_epoch,
        patch: args.patch,
        batch: args.batch,
        class_window: args.class_window,
        base_channels: args.base_channels,
        spacing_mm: args.spacing,
        class_every: args.class_every,
    };
    Ok(model::planned::planned_config(p, &base, &choices, plan)?)
}

/// How a training run is sized.
pub enum Run {
    /// Its configuration's epochs and steps.
    Planned,
    /// Fitted to minutes, counted on a clock from 0.
    Budget(f64, std::sync::Arc<dyn Clock>),
    /// The run already in `out`, continued from its last finished epoch.
    Continued,
}

/// The device `backend` names, once it can train `config` (its data-parallel devices and
/// precision), said on stderr.
fn training_device(backend: &str, config: &FitConfig) -> Result<burn::prelude::Device> {
    let (device, about) = model::choose_device(backend);
    model::apply::check_data_parallel(&device, config.devices).map_err(anyhow::Error::msg)?;
    let precision = config.training.precision;
    precision.check(&device)?;
    let name = precision.name();
    match config.devices {
        0 | 1 => eprintln!("training on {about} in {name}"),
        n => eprintln!("training on {about} in {name}, data-parallel over {n} devices"),
    }
    if precision != model::Precision::F32 && device == burn::prelude::Device::flex() {
        eprintln!(
            "note: {name} on the CPU is slower than f32 (burn's CPU backend has no half-precision kernels)"
        );
    }
    Ok(device)
}

/// Train on `project`'s cases with `config`, checkpoints into `out`; with `plot`, the curves
/// into `out/curves.png`; sized as `run` says.
pub fn train_project(
    project: &Project,
    config: &FitConfig,
    out: &Path,
    (backend, plot): (&str, bool),
    run: Run,
) -> Result<()> {
    let device = training_device(backend, config)?;
    let selection = model::SampleSelection::for_training(&config.training);
    let samples = model::load_samples_with(project, &selection)?;
    if samples.len() < 2 {
        bail!(
            "{}: training needs at least two cases with {}; found {}",
            project.manifest_path().display(),
            config.training.mode.case_needs(),
            samples.len()
        );
    }
    let (train, val) =
        model::split_by_case(samples, config.validation_fraction, config.training.seed);
    let control = model::FitControl::default();
    let budgeted;
    // A budgeted run's bar counts seconds to its end (it is paced by time), others count steps.
    let mut time_bar = None;
    let continued = matches!(run, Run::Continued);
    let config = match run {
        Run::Budget(m, clock) => {
            time_bar = Some((clock.clone(), m * 60.0));
            budgeted = fit_to_budget(config, &val, &device, m, clock, &control)?;
            &budgeted
        }
        Run::Planned | Run::Continued => config,
    };
    if !continued {
        model::runs::write_run_files(out, config, &val)?;
    }
    report_split(&train, &val, config);
    let bar = match &time_bar {
        Some((_, budget_s)) => seconds_bar(*budget_s),
        None => steps_bar((config.epochs * config.steps_per_epoch) as u64),
    };
    let mut curves = Curves::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let (data, watch) = ((train, &val[..]), (&tx, &control));
            model::fit::fit_from(config, data, &device, out, watch, continued)
        });
        let mut last_step = 0;
        relay_events(&rx, &worker, |event| {
            if let Some((clock, _)) = &time_bar {
                bar.set_position(clock.now_s() as u64);
            }
            let by_time = time_bar.is_some();
            on_fit_event(event, config, (&bar, by_time), &mut curves, &mut last_step)
        });
        worker.join()
    });
    bar.finish_and_clear();
    let advise = crate::model::device_failure::with_memory_advice;
    let result = crate::worker::joined("the training run", result).map_err(advise)??;
    if plot {
        let png = out.join("curves.png");
        crate::plot::write_training_png(&curves, [1400, 500], &png)?;
        println!("curves: {}", png.display());
    }
    report_trained(&result, out)
}

/// Say what a run trained and where its checkpoints are; an error when no epoch ended (no
/// checkpoint was written).
fn report_trained(result: &model::FitResult, out: &Path) -> Result<()> {
    if !result.best.join("model.bpk").is_file() {
        anyhow::bail!(
            "no epoch ended within the run, so no checkpoint was written to {} (give it more \
             time or steps)",
            out.display()
        );
    }
    println!(
        "trained {} epochs; best checkpoint {}, last {}",
        result.epochs.len(),
        result.best.display(),
        result.last.display()
    );
    Ok(())
}

/// Say which cases train and which validate, and what the validation cannot measure.
fn report_split(train: &[model::Sample], val: &[model::Sample], config: &FitConfig) {
    let ids: Vec<&str> = val.iter().map(|s| s.case_id.as_str()).collect();
    eprintln!(
        "{} training cases, {} validation cases ({})",
        train.len(),
        val.len(),
        ids.join(", ")
    );
    let t = &config.training;
    // A promptable network predicts no class.
    let classes = match t.prompt {
        Some(_) => &[][..],
        None => &t.class_names[..],
    };
    if t.prompt.is_some() {
        let cases = train.iter().filter(|s| !s.replays.is_empty()).count();
        let prompts: usize = train.iter().map(|s| s.replays.len()).sum();
        eprintln!("learning from {prompts} recorded prompts on {cases} training cases");
    }
    for gap in model::split::validation_gaps(train, val, classes, |v| t.label_name(usize::from(v)))
    {
        eprintln!("warning: {gap}");
    }
}

/// A bar for a run paced to end in `budget_s` seconds from its clock's 0: its position is the
/// clock's reading, so its ETA is the budget's end.
fn seconds_bar(budget_s: f64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(budget_s.ceil() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `config` fitted to `minutes` on `clock` (see `model::budget::fit_to_budget`), said.
fn fit_to_budget(
    config: &FitConfig,
    val: &[model::Sample],
    device: &burn::prelude::Device,
    minutes: f64,
    clock: std::sync::Arc<dyn Clock>,
    control: &model::FitControl,
) -> Result<FitConfig> {
    if !(minutes.is_finite() && minutes > 0.0) {
        bail!("--minutes {minutes}: give a positive number of minutes");
    }
    let (config, said) =
        model::budget::fit_to_budget(config, val, device, minutes * 60.0, clock, control)?;
    eprintln!("budget {minutes} min ({said})");
    Ok(config)
}

/// Follow one training event: the bar (counting steps unless `by_time`) and the curves per
/// step, a line per epoch.
fn on_fit_event(
    event: FitEvent,
    config: &FitConfig,
    (bar, by_time): (&indicatif::ProgressBar, bool),
    curves: &mut Curves,
    last_step: &mut usize,
) {
    match event {
        FitEvent::Train(TrainEvent::Step { step, loss }) => {
            curves.push_step(step, &loss);
            *last_step = step;
            if !by_time {
                bar.set_position(step as u64);
            }
            bar.set_message(format!("step {step}, loss {:.3}", loss.total));
        }
        FitEvent::Epoch(e) => {
            let dice =
                curves.push_epoch(*last_step, &e.validation, |l| config.training.label_name(l));
            let auc = e.validation.class_auc;
            let t = &config.training;
            let class = match t.prompt {
                // A promptable network's Dice is after the robot's clicks; it has no class.
                Some(_) => format!(" after {} clicks", model::prompt_infer::VALIDATION_CLICKS),
                // Segmentation only, the class not read from the mask either: no class figure.
                None if t.mode == model::TaskMode::SegmentationOnly
                    && t.class_evidence.is_none() =>
                {
                    String::new()
                }
                None => format!(
                    "; class accuracy {:.3}, AUC {}",
                    e.validation.class_accuracy,
                    auc.map_or("n/a".into(), |a| format!("{a:.3}"))
                ),
            };
            let line = format!(
                "epoch {:>3}: train loss {:.4}; validation Dice {}{class}{}",
                e.epoch,
                e.train_loss,
                dice.join(", "),
                if e.best { " (best)" } else { "" }
            );
            say(bar, line);
        }
        _ => {}
    }
}

/// `mriloop predict`.
pub fn predict(args: PredictArgs) -> Result<()> {
    let (device, about) = model::choose_device(&args.backend);
    eprintln!("running on {about}");
    let mut p = Project::open(&args.project)?;
    let (dir, model_name) = match &args.model {
        Some(dir) => (dir.clone(), dir.display().to_string()),
        None => active_checkpoint(&p)?,
    };
    let (mut cfg, net) = model::load_checkpoint(&dir, &device)?;
    model::check_model_kind(&dir, &cfg, false)?;
    if let Some(name) = &args.precision {
        cfg.precision = model::Precision::parse(name)?;
        if model::conv_gpu::on_gpu(&device) {
            cfg.precision.check(&device)?;
        }
    }
    say_prediction_precision(cfg.precision, &device);
    let bar = indicatif::ProgressBar::new(p.manifest.cases.len() as u64);
    let n = model::predict_project(
        &mut p,
        (&net, &cfg, &device),
        args.shard,
        &model_name,
        |d, total| {
            bar.set_length(total as u64);
            bar.set_position(d as u64)
        },
    )?;
    bar.finish_and_clear();
    match args.shard {
        Some(s) => println!(
            "predicted {n} cases of shard {}/{} into {} (run merge-shards when every shard is done)",
            s.index,
            s.count,
            p.root().display()
        ),
        None => println!("predicted {n} cases into {}", p.root().display()),
    }
    Ok(())
}

/// Say on stderr the precision the windows run in: half precision only on a GPU.
fn say_prediction_precision(precision: model::Precision, device: &burn::prelude::Device) {
    let name = precision.name();
    match (precision, model::conv_gpu::on_gpu(device)) {
        (model::Precision::F32, _) => {}
        (_, true) if precision.or_f32_on(device) != precision => {
            eprintln!("note: this GPU has no {name}: predicting in f32")
        }
        (_, true) => eprintln!("predicting in {name} (mixed precision)"),
        (_, false) => eprintln!("note: the CPU predicts in f32 ({name} is for GPUs)"),
    }
}

/// The project's active version's checkpoint folder and id.
fn active_checkpoint(p: &Project) -> Result<(PathBuf, String)> {
    let active = p.manifest.active_model.as_deref();
    let version = p
        .manifest
        .models
        .iter()
        .find(|v| Some(v.id.as_str()) == active);
    match version {
        Some(v) => Ok((p.resolve(&v.checkpoint), v.id.clone())),
        None => anyhow::bail!(
            "{}: no active model version; give --model DIR or add one (`mriloop add-model`)",
            p.manifest_path().display()
        ),
    }
}

/// `mriloop add-model`: a checkpoint trained elsewhere becomes a version of the project.
pub fn add_model(args: AddModelArgs) -> Result<()> {
    let mut p = Project::open(&args.project)?;
    let v = model::versions::add_checkpoint(&mut p, &args.model, args.activate)?;
    let role = match (
        v.promptable,
        p.manifest.active_model.as_deref() == Some(v.id.as_str()),
    ) {
        (true, _) => "promptable: the Prompt tool's model",
        (false, true) => "the active model",
        (false, false) => "not active",
    };
    println!(
        "added {} ({}, reads {}; {role}) to {}",
        v.id,
        v.tasks,
        v.sequences.join(", "),
        p.root().display()
    );
    Ok(())
}

/// `mriloop merge-shards`: every case's prediction record into the manifest.
pub fn merge_shards(args: MergeShardsArgs) -> Result<()> {
    let mut p = Project::open(&args.project)?;
    let report = crate::project::shard::merge_records(&mut p)?;
    for r in &report.refused {
        eprintln!("refused: {r}");
    }
    println!(
        "merged {} cases; {} without a prediction{}",
        report.merged,
        report.missing.len(),
        if report.missing.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.missing.join(", "))
        }
    );
    if !report.refused.is_empty() {
        anyhow::bail!("{} prediction records refused", report.refused.len());
    }
    Ok(())
}

/// `mriloop eval`.
pub fn eval(args: EvalArgs) -> Result<()> {
    let (device, about) = model::choose_device(&args.backend);
    eprintln!("evaluating on {about}");
    let (cfg, net) = model::load_checkpoint(&args.model, &device)?;
    model::check_model_kind(&args.model, &cfg, false)?;
    let p = Project::open(&args.project)?;
    let only = match args.held_out {
        true => Some(held_out_cases(&args.model)?),
        false => None,
    };
    let bar = indicatif::ProgressBar::new(p.manifest.cases.len() as u64);
    let (cases, cohort) =
        model::evaluate_project(&p, &net, &cfg, &device, only.as_deref(), |d, n| {
            bar.set_length(n as u64);
            bar.set_position(d as u64)
        })?;
    bar.finish_and_clear();
    let name = |l: usize| cfg.label_name(l + 1);
    if let Some(path) = &args.csv {
        crate::atomic::write_atomic(path, eval_csv(&cases, &name).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("evaluated {} cases", cases.len());
    print_eval_metrics(&cases, &cohort, &name);
    Ok(())
}

/// The case ids in the held-out list beside checkpoint `dir` (`../validation.txt`; `dir` may
/// be the run's folder, see `checkpoint_dir`).
pub(crate) fn held_out_cases(dir: &Path) -> Result<Vec<String>> {
    let dir = model::checkpoint_dir(dir);
    let list = dir
        .parent()
        .map(|d| d.join("validation.txt"))
        .ok_or_else(|| anyhow::anyhow!("{}: no parent folder", dir.display()))?;
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("reading the held-out list {}", list.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Per-case, per-label figures as CSV text.
fn eval_csv(cases: &[model::CaseEvaluation], name: &dyn Fn(usize) -> String) -> String {
    let mut rows = vec![String::from(
        "case,label,dice,hd95_mm,volume_error_mm3,class,p_predicted",
    )];
    for c in cases {
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
    rows.join("\n") + "\n"
}

/// The cohort's `metric:` lines: Dice and mean HD95 per label, class AUC and accuracy (where
/// cases have a class).
fn print_eval_metrics(
    cases: &[model::CaseEvaluation],
    cohort: &model::CohortEvaluation,
    name: &dyn Fn(usize) -> String,
) {
    for (l, d) in cohort.dice.iter().enumerate() {
        if let Some(d) = d {
            println!("metric: dice_{} = {d:.4}", name(l));
        }
        let hd: Vec<f64> = cases.iter().filter_map(|c| c.hd95_mm[l]).collect();
        if !hd.is_empty() {
            let mean = hd.iter().sum::<f64>() / hd.len() as f64;
            println!("metric: hd95_mm_{} = {mean:.2}", name(l));
        }
    }
    if let Some(a) = cohort.class_auc {
        println!("metric: class_auc = {a:.4}");
    }
    // Accuracy over no case is no figure (a project without classes, e.g. an nnU-Net dataset).
    if cases.iter().any(|c| c.class.is_some()) {
        println!("metric: class_accuracy = {:.4}", cohort.class_accuracy);
    }
}

/// The plan a run used, printed and written as `OUT/plan.json` (with its fingerprint).
fn write_plan(out: &Path, fp: &Fingerprint, plan: &Plan) -> Result<()> {
    eprint!("{}", super::plan::describe(fp, plan));
    std::fs::create_dir_all(out).with_context(|| format!("making {}", out.display()))?;
    let path = out.join("plan.json");
    let json = super::plan::plan_json(fp, plan)?;
    crate::atomic::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
