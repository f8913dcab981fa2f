//! `mriloop experiment`: run a plan's arms × seeds on a project with one progress bar over all
//! their steps, then write the report with its plots (drawn on the CPU) and print `metric:`
//! lines per arm.
//!
//! Invariants: the report folder is created before the first run; the report is written only
//! after every run finished; the report names the command line that made it.

use super::{relay_events, say, steps_bar};
use crate::experiment::{self, ExperimentEvent, ExperimentPlan, ExperimentResult};
use crate::model::{FitControl, FitEvent, TrainEvent};
use crate::project::Project;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `mriloop experiment`.
#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// The project folder.
    pub project: PathBuf,
    /// The plan (JSON): seeds, test split, base settings and arms.
    #[arg(long)]
    pub plan: PathBuf,
    /// The report folder (created; runs go to OUT/runs).
    #[arg(long)]
    pub out: PathBuf,
    /// Override the plan's backend: cpu, gpu or auto.
    #[arg(long)]
    pub backend: Option<String>,
}

/// `mriloop experiment`.
pub fn run(args: ExperimentArgs) -> Result<()> {
    let mut plan = ExperimentPlan::load(&args.plan)?;
    if let Some(b) = args.backend {
        plan.backend = b;
    }
    let p = Project::open(&args.project)?;
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let result = run_with_progress(&p, &plan, &args.out)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    crate::plot::write_report_with_plots(&result, out, &command)?;
    for arm in &result.plan.arms {
        for (name, value) in experiment::report::headline(&result, &arm.name) {
            println!("metric: {}_{name} = {value:.4}", arm.name);
        }
    }
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Run `plan` on a worker thread, following its events on a progress bar.
fn run_with_progress(
    p: &Project,
    plan: &ExperimentPlan,
    out: &std::path::Path,
) -> Result<ExperimentResult> {
    let bar = steps_bar(plan.total_steps() as u64);
    let (tx, rx) = std::sync::mpsc::channel();
    let control = FitControl::default();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| experiment::run_experiment(p, plan, out, &tx, &control));
        let mut progress = Progress::default();
        relay_events(&rx, &worker, |event| progress.on(event, &bar));
        worker.join()
    });
    bar.finish_and_clear();
    Ok(crate::worker::joined("the experiment", result)??)
}

/// What the progress display knows of the experiment so far.
#[derive(Default)]
struct Progress {
    /// Steps done over all runs.
    done: u64,
    /// "run k/n: arm seed s" of the current run.
    run_label: String,
    /// Runs in all.
    runs: usize,
}

impl Progress {
    fn on(&mut self, event: ExperimentEvent, bar: &indicatif::ProgressBar) {
        match event {
            ExperimentEvent::Started {
                runs,
                test_cases,
                device,
            } => {
                self.runs = runs;
                let cases = test_cases.join(", ");
                say(bar, format!("{runs} runs on {device}; test cases: {cases}"));
            }
            ExperimentEvent::RunStarted {
                index, arm, seed, ..
            } => {
                self.run_label = format!("run {}/{}: {arm} seed {seed}", index + 1, self.runs);
                bar.set_message(self.run_label.clone());
            }
            ExperimentEvent::Fit(FitEvent::Train(TrainEvent::Step { .. })) => {
                self.done += 1;
                bar.set_position(self.done);
            }
            ExperimentEvent::Evaluating { .. } => {
                bar.set_message(format!("{}: evaluating", self.run_label));
            }
            ExperimentEvent::RunFinished { seconds, .. } => {
                say(bar, format!("{}: done in {seconds:.0} s", self.run_label));
            }
            _ => {}
        }
    }
}
