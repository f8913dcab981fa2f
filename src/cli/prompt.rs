//! `mriloop eval-prompt`: a robot user segments every object (connected region) of every
//! label of a project's cases with a promptable model — a point (and, separately, a box) at
//! the object's centre, then clicks at the centre of the largest error; the label's other
//! objects are ignored, as the field counts clicks per object — and the Dice after 1, 3 and 5
//! interactions and the interactions to reach 0.90 are printed per label (mean over objects)
//! as `metric:` lines, with the automatic model's Dice on the same objects when `--refine`
//! gives one (optionally every interaction as CSV).
//!
//! Invariants: a model that is not promptable is refused with a clear message; Dice is measured
//! on the model's grid; files are written atomically.

use crate::model::prompt::prompt_to_mm;
use crate::model::prompt_infer::{
    evaluate_prompted, interaction_record, robot_figures, Interaction, RecordSink, RobotRecord,
    Start,
};
use crate::model::{self, SampleSelection};
use crate::project::Project;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Arguments of `mriloop eval-prompt`.
#[derive(clap::Args, Debug)]
pub struct EvalPromptArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A promptable checkpoint folder (`mriloop train --promptable`).
    #[arg(long)]
    pub model: PathBuf,
    /// Only the cases held out from training (listed in the model's ../validation.txt).
    #[arg(long)]
    pub held_out: bool,
    /// Interactions per session (the start, then corrective clicks).
    #[arg(long, default_value_t = 10)]
    pub clicks: usize,
    /// Also refine this automatic model's prediction (same sequences and spacing): the robot
    /// starts with a click on its largest error (`refine_` metrics).
    #[arg(long)]
    pub refine: Option<PathBuf>,
    /// Write every interaction's Dice to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Append every robot interaction to its case's prompt log, as a user's prompts are
    /// recorded (a promptable fine-tune then learns from them).
    #[arg(long)]
    pub record: bool,
}

/// Interactions after which the mean Dice is reported.
const REPORTED: [usize; 3] = [1, 3, 5];

/// `mriloop eval-prompt`.
pub fn eval_prompt(args: EvalPromptArgs) -> Result<()> {
    let (device, about) = model::choose_device(&args.backend);
    eprintln!("evaluating prompts on {about}");
    let (cfg, net) = model::load_checkpoint(&args.model, &device)?;
    model::check_model_kind(&args.model, &cfg, true)?;
    let p = Project::open(&args.project)?;
    let only = match args.held_out {
        true => Some(super::train::held_out_cases(&args.model)?),
        false => None,
    };
    let selection = SampleSelection {
        only,
        ..SampleSelection::for_training(&cfg)
    };
    let samples = model::load_samples_with(&p, &selection)?;
    if samples.is_empty() {
        bail!(
            "{}: no case with a reference mask to evaluate",
            args.project.display()
        );
    }
    let clicks = args.clicks.max(1);
    let automatic = match &args.refine {
        Some(dir) => Some(automatic_labels(dir, &cfg, &samples, &device)?),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(samples.len() as u64);
    let source = args.model.display().to_string();
    let mut logged: Result<usize> = Ok(0);
    let mut log = |s: &model::Sample, label: u8, i: Interaction| {
        if let Ok(n) = &mut logged {
            let record = robot_prompt_record(s, label, &source, &i);
            let path = p.resolve(&crate::project::prompt_log::prompt_log_rel(&s.case_id));
            match crate::project::prompt_log::append_prompt_record(&path, &record) {
                Ok(()) => *n += 1,
                Err(e) => logged = Err(anyhow::anyhow!(e)),
            }
        }
    };
    let sink: Option<RecordSink> = match args.record {
        true => Some(&mut log),
        false => None,
    };
    let records = evaluate_prompted(
        &net,
        &samples,
        &cfg,
        clicks,
        automatic.as_deref(),
        &device,
        sink,
        |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    if args.record {
        println!("recorded {} prompts in the cases' prompt logs", logged?);
    }
    if let Some(path) = &args.csv {
        crate::atomic::write_atomic(path, robot_csv(&records, &cfg).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "evaluated {} cases, {} sessions of {clicks} interactions",
        samples.len(),
        records.len()
    );
    print_robot_metrics(&records, &cfg);
    Ok(())
}

/// A robot interaction on sample `s` as its case's prompt log keeps it (the window on the
/// sample's grid).
fn robot_prompt_record(
    s: &model::Sample,
    label: u8,
    source: &str,
    i: &Interaction,
) -> crate::project::prompt_log::PromptRecord {
    let prompts = i
        .prompts
        .iter()
        .map(|q| prompt_to_mm(q, &s.affine))
        .collect();
    interaction_record(
        source,
        label,
        prompts,
        (&s.affine, s.dims),
        i.before,
        i.window,
    )
}

/// The labels an automatic model (checkpoint `dir`) predicts on each sample's grid; it must
/// read the promptable model's sequences at its spacing.
fn automatic_labels(
    dir: &std::path::Path,
    prompted: &model::TrainingConfig,
    samples: &[model::Sample],
    device: &burn::prelude::Device,
) -> Result<Vec<Vec<u8>>> {
    let (cfg, net) = model::load_checkpoint(dir, device)?;
    if cfg.prompt.is_some()
        || cfg.sequences != prompted.sequences
        || cfg.spacing_mm != prompted.spacing_mm
    {
        bail!(
            "{}: --refine needs an automatic model with the promptable model's sequences ({}) \
             and spacing",
            dir.display(),
            prompted.sequences.join(", ")
        );
    }
    samples
        .iter()
        .map(|s| {
            model::inference::segment_volume(&net, &s.channels, s.dims, cfg.window, 0.5, device)
                .map(|(labels, _)| labels)
                .with_context(|| format!("predicting {} with {}", s.case_id, dir.display()))
        })
        .collect()
}

/// The `metric:` lines per label, from a point, from a box and refining.
fn print_robot_metrics(records: &[RobotRecord], cfg: &model::TrainingConfig) {
    let mut labels: Vec<u8> = records.iter().map(|r| r.label).collect();
    labels.sort_unstable();
    labels.dedup();
    for label in labels {
        let name = cfg.label_name(usize::from(label));
        for (start, prefix) in [
            (Start::Point, ""),
            (Start::Box, "box_"),
            (Start::Refine, "refine_"),
        ] {
            let Some((dice, noc)) = robot_figures(records, label, start, &REPORTED) else {
                continue;
            };
            for (k, d) in REPORTED.iter().zip(dice) {
                let clicks = if *k == 1 { "click" } else { "clicks" };
                println!("metric: {prefix}dice_after_{k}_{clicks}_{name} = {d:.4}");
            }
            println!("metric: {prefix}noc90_{name} = {noc:.2}");
        }
        let automatic: Vec<f64> = records
            .iter()
            .filter(|r| r.label == label && r.start == Start::Point)
            .filter_map(|r| r.automatic)
            .collect();
        if !automatic.is_empty() {
            let mean = automatic.iter().sum::<f64>() / automatic.len() as f64;
            println!("metric: automatic_dice_{name} = {mean:.4}");
        }
    }
}

/// Every interaction's Dice as CSV text.
fn robot_csv(records: &[RobotRecord], cfg: &model::TrainingConfig) -> String {
    let mut rows = vec![String::from(
        "case,label,object,start,interaction,dice,window_vox,automatic_dice",
    )];
    for r in records {
        let start = match r.start {
            Start::Point => "point",
            Start::Box => "box",
            Start::Refine => "refine",
        };
        let automatic = r.automatic.map_or(String::new(), |a| format!("{a:.4}"));
        for (i, (d, w)) in r.dice.iter().zip(&r.window_vox).enumerate() {
            rows.push(format!(
                "{},{},{},{start},{},{d:.4},{w},{automatic}",
                r.case_id,
                cfg.label_name(usize::from(r.label)),
                r.object + 1,
                i + 1
            ));
        }
    }
    rows.join("\n") + "\n"
}
