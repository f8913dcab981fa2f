//! Experiments: a declared set of trainings (arms × seeds) on one project with the same budget,
//! each evaluated on the same held-out test cases, and a report comparing them — the research's
//! questions (multi-sequence vs single, joint vs single task, resolution) asked of a project.
//!
//! A plan (`ExperimentPlan`, JSON) names the seeds, how the test cases are chosen, the settings
//! every arm shares (`base`) and what each arm changes (`set`). `run_experiment` trains and
//! evaluates every run in turn, reporting `ExperimentEvent`s through a channel (the CLI's progress
//! bar and the app's Experiment panel read them) and stopping at the next step when cancelled;
//! `report::write_report` writes `report.md` and `cases.csv` from the result.
//!
//! Invariants: the test cases are fixed by the plan before any training and are never trained or
//! validated on; every arm and seed sees the same training and validation cases; a run's folder
//! (`runs/<arm>/seed<k>/`) holds its fit.json and checkpoints; nothing is written into the
//! project.

pub mod report;
pub mod stats;

use crate::model::apply::{choose_device, evaluate_project, fit_config_for, CaseEvaluation};
use crate::model::budget::{Clock, SystemClock};
use crate::model::data::{load_samples_with, SampleSelection};
use crate::model::fit::{
    fit, split_by_case, EpochSummary, FitConfig, FitControl, FitEvent, FitResult,
};
use crate::model::training::{load_checkpoint, CheckpointError, TaskMode, TrainEvent};
use crate::model::FitOptions;
use crate::project::{Project, ProjectError};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// Largest plan file read (a plan is a few hundred bytes; anything larger is not one).
const MAX_PLAN_BYTES: u64 = 1 << 20;

/// Errors of an experiment. Each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The plan file is unreadable or invalid.
    #[error("{path}: {problem}")]
    Plan {
        /// The plan file (or `plan` for one given in memory).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The project or one of its files.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The output folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Cancelled before every run finished.
    #[error("the experiment was cancelled")]
    Cancelled,
}

/// The training settings an arm may set; unset ones come from the plan's `base`, then from the
/// defaults below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSettings {
    /// Input sequences (default: the project's first two; all of a 4D project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<Vec<String>>,
    /// Tasks: `joint`, `seg` or `class` (default joint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Epochs (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Steps per epoch (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_epoch: Option<usize>,
    /// Patch edge in voxels (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<usize>,
    /// Patches per batch (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Edge of the whole-head crop the class is learned from (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_window: Option<usize>,
    /// A whole-head class step every this many steps in joint mode (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_every: Option<usize>,
    /// Channels of the network's first level (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_channels: Option<usize>,
    /// Resample cases to this voxel size (mm) for training and prediction (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<f64>,
    /// Learning rate (default 0.002).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// A time budget per run, in minutes: the arm takes the planner's configuration for the
    /// project (patch, batch, width, foreground sampling and label weights; the settings given
    /// here override it) with its epochs and steps fitted to the budget, as `train --minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<f64>,
}

impl ArmSettings {
    /// These settings, with unset ones taken from `base`.
    pub fn over(&self, base: &ArmSettings) -> ArmSettings {
        ArmSettings {
            sequences: self.sequences.clone().or_else(|| base.sequences.clone()),
            mode: self.mode.clone().or_else(|| base.mode.clone()),
            epochs: self.epochs.or(base.epochs),
            steps_per_epoch: self.steps_per_epoch.or(base.steps_per_epoch),
            patch: self.patch.or(base.patch),
            batch: self.batch.or(base.batch),
            class_window: self.class_window.or(base.class_window),
            class_every: self.class_every.or(base.class_every),
            base_channels: self.base_channels.or(base.base_channels),
            spacing_mm: self.spacing_mm.or(base.spacing_mm),
            learning_rate: self.learning_rate.or(base.learning_rate),
            minutes: self.minutes.or(base.minutes),
        }
    }

    /// The settings given, as choices over the planner's configuration.
    pub fn choices(&self) -> crate::model::planned::PlanOverrides {
        crate::model::planned::PlanOverrides {
            epochs: self.epochs,
            steps_per_epoch: self.steps_per_epoch,
            patch: self.patch,
            batch: self.batch,
            class_window: self.class_window,
            base_channels: self.base_channels,
            spacing_mm: self.spacing_mm,
            class_every: self.class_every,
        }
    }

    /// The fit options these settings give with `seed` (defaults filled in).
    pub fn options(&self, seed: u64) -> FitOptions {
        FitOptions {
            sequences: self.sequences.clone().unwrap_or_default(),
            epochs: self.epochs.unwrap_or(10),
            steps_per_epoch: self.steps_per_epoch.unwrap_or(50),
            patch: self.patch.unwrap_or(24),
            batch: self.batch.unwrap_or(2),
            class_window: self.class_window.unwrap_or(32),
            base_channels: self.base_channels.unwrap_or(8),
            mode: self.mode.clone().unwrap_or_else(|| "joint".into()),
            spacing_mm: self.spacing_mm,
            learning_rate: self.learning_rate.unwrap_or(2e-3),
            seed,
        }
    }
}

/// One arm of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Name in the report (letters, digits, `+ - _ .`).
    pub name: String,
    /// What this arm changes from the plan's base.
    #[serde(default)]
    pub set: ArmSettings,
    /// Set only in a result's plan, on the arms `ExperimentPlan::also_test` adds: the name of
    /// the other project these are the runs of arm `set`'s original tested on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tested_on: Option<String>,
}

/// Another project whose labelled cases every run is also tested on: a second population (the
/// subjects of another template, another site) for the same trained models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsoTest {
    /// Its name in the report: the runs tested on it appear as arms `<arm>-on-<name>`.
    pub name: String,
    /// The project folder (a relative path is taken from the experiment's project folder).
    /// Its labels and classes must be the experiment project's.
    pub project: PathBuf,
}

/// The cases an `AlsoTest` project was tested on, in a result.
#[derive(Debug, Clone, PartialEq)]
pub struct AlsoTested {
    /// The plan's name for it.
    pub name: String,
    /// Its folder.
    pub project: String,
    /// Its labelled cases, every one tested.
    pub cases: Vec<String>,
}

/// Which checkpoint of a run is evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    /// The state after the last step (default: no selection on validation data).
    #[default]
    Last,
    /// The epoch with the best validation score.
    Best,
}

/// A declared experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentPlan {
    /// Title of the report.
    pub name: String,
    /// What it asks, for the report.
    #[serde(default)]
    pub description: String,
    /// Training seeds; every arm runs once per seed.
    pub seeds: Vec<u64>,
    /// Test cases by id; when absent, `test_fraction` of the cases drawn with `split_seed`,
    /// stratified as `test_split` says.
    #[serde(default)]
    pub test_cases: Option<Vec<String>>,
    /// How a drawn test set is stratified (default: by class, covering the labels).
    #[serde(default)]
    pub test_split: TestSplit,
    /// Cases neither trained, validated nor tested on (e.g. a gap between neighbouring
    /// slices of the test block and the training slices).
    #[serde(default)]
    pub exclude_cases: Vec<String>,
    /// Share of the cases held out for testing (default 0.3).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Seed of the test and validation split (default 1).
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// Share of the remaining cases used for per-epoch validation curves (default 0.2).
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Which checkpoint is evaluated (default `last`).
    #[serde(default)]
    pub checkpoint: Checkpoint,
    /// `cpu`, `gpu` or `auto` (default auto).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Settings every arm shares.
    #[serde(default)]
    pub base: ArmSettings,
    /// The arms (paired tests compare every pair).
    pub arms: Vec<Arm>,
    /// Other projects every run is also tested on (all their labelled cases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_test: Vec<AlsoTest>,
}

/// How an experiment draws its test cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestSplit {
    /// The validation splitter's rule (`model::split::held_out`): the share of the labelled
    /// cases, each class its proportional part, and within a class first the cases that bring
    /// a label the test set lacks — so a rare label (an infarct in 3 of 40 cases) is tested.
    #[default]
    ClassAndLabels,
    /// The share of each class's cases, at least one, drawn in a shuffled order (the rule of
    /// the experiments committed before labels were covered; their plans say so).
    Class,
}

/// Whether `name` can name an arm (a folder): 1-64 letters, digits or `+ - _ .`, not `.`/`..`.
fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.".contains(c))
}

/// The report's name for the runs of arm `arm` tested on the `also_test` project `other`.
pub fn tested_arm_name(arm: &str, other: &str) -> String {
    format!("{arm}-on-{other}")
}

fn default_test_fraction() -> f64 {
    0.3
}
fn default_split_seed() -> u64 {
    1
}
fn default_validation_fraction() -> f64 {
    0.2
}
fn default_backend() -> String {
    "auto".into()
}

impl ExperimentPlan {
    /// Read and check a plan file (JSON).
    pub fn load(path: &Path) -> Result<Self, ExperimentError> {
        let bad = |problem: String| ExperimentError::Plan {
            path: path.display().to_string(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > MAX_PLAN_BYTES {
            return Err(bad(format!(
                "{} bytes: too large for a plan (at most {MAX_PLAN_BYTES})",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let plan: ExperimentPlan = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        plan.check().map_err(bad)?;
        Ok(plan)
    }

    /// Whether the plan can run: arms and seeds present, names usable as folder names and
    /// unique, fractions in range.
    pub fn check(&self) -> Result<(), String> {
        if self.arms.is_empty() {
            return Err("the plan has no arm".into());
        }
        if self.seeds.is_empty() {
            return Err("the plan has no seed".into());
        }
        for (i, a) in self.arms.iter().enumerate() {
            if !usable_name(&a.name) {
                return Err(format!(
                    "arm name {:?}: use 1-64 letters, digits or + - _ .",
                    a.name
                ));
            }
            if self.arms[..i].iter().any(|b| b.name == a.name) {
                return Err(format!("arm name {:?} is used twice", a.name));
            }
            if a.tested_on.is_some() {
                return Err(format!(
                    "arm {:?}: tested_on is written into a result by also_test, not read from a plan",
                    a.name
                ));
            }
        }
        self.check_also_test()?;
        if !(0.0..1.0).contains(&self.test_fraction)
            || !(0.0..1.0).contains(&self.validation_fraction)
        {
            return Err("test_fraction and validation_fraction must be in [0, 1)".into());
        }
        for i in 0..self.arms.len() {
            if let Some(m) = self
                .settings(i)
                .minutes
                .filter(|m| !(m.is_finite() && *m > 0.0))
            {
                return Err(format!(
                    "arm {:?}: minutes {m} is not a positive number",
                    self.arms[i].name
                ));
            }
        }
        Ok(())
    }

    /// Whether the `also_test` entries have usable, unique names whose arms clash with none.
    fn check_also_test(&self) -> Result<(), String> {
        for (i, t) in self.also_test.iter().enumerate() {
            if !usable_name(&t.name) {
                return Err(format!(
                    "also_test name {:?}: use 1-64 letters, digits or + - _ .",
                    t.name
                ));
            }
            if self.also_test[..i].iter().any(|u| u.name == t.name) {
                return Err(format!("also_test name {:?} is used twice", t.name));
            }
            let clash = self.arms.iter().find(|a| {
                let name = tested_arm_name(&a.name, &t.name);
                self.arms.iter().any(|b| b.name == name)
            });
            if let Some(a) = clash {
                return Err(format!(
                    "arm {:?} clashes with arm {:?} tested on {:?}",
                    tested_arm_name(&a.name, &t.name),
                    a.name,
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// The plan as its result reports it: after the arms, each arm again per `also_test`
    /// project, named `<arm>-on-<name>` and marked `tested_on` (the same runs, other cases).
    pub fn as_run(&self) -> ExperimentPlan {
        let mut plan = self.clone();
        for t in &self.also_test {
            plan.arms.extend(self.arms.iter().map(|a| Arm {
                name: tested_arm_name(&a.name, &t.name),
                set: a.set.clone(),
                tested_on: Some(t.name.clone()),
            }));
        }
        plan
    }

    /// Optimisation steps of one run of arm `i`.
    pub fn steps_per_run(&self, i: usize) -> usize {
        let o = self.settings(i).options(0);
        o.epochs * o.steps_per_epoch
    }

    /// Optimisation steps of the whole plan (every arm, every seed).
    pub fn total_steps(&self) -> usize {
        self.run_steps().iter().sum()
    }

    /// Optimisation steps of each run as planned, in run order (arm by arm, seed by seed); a
    /// budgeted arm's count is its recipe's until a run of it starts (`revise_run_steps`).
    pub fn run_steps(&self) -> Vec<usize> {
        (0..self.arms.len())
            .flat_map(|a| std::iter::repeat_n(self.steps_per_run(a), self.seeds.len()))
            .collect()
    }

    /// The settings of arm `i` (its own over the base).
    pub fn settings(&self, i: usize) -> ArmSettings {
        self.arms
            .get(i)
            .map_or_else(|| self.base.clone(), |a| a.set.over(&self.base))
    }
}

/// `run_steps` revised when run `index` starts with `steps` (fitted to its budget): that run's
/// count, and the same for the runs of its arm still to come (`seeds` runs an arm; the same
/// budget on the same machine takes about as many steps).
pub fn revise_run_steps(run_steps: &mut [usize], index: usize, steps: usize, seeds: usize) {
    let arm_end = (index / seeds.max(1) + 1) * seeds.max(1);
    for s in run_steps.iter_mut().take(arm_end).skip(index) {
        *s = steps;
    }
}

/// What an experiment reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentEvent {
    /// The split is made; `runs` trainings follow.
    Started {
        /// Number of runs (arms × seeds).
        runs: usize,
        /// The held-out test cases.
        test_cases: Vec<String>,
        /// The device, in words.
        device: String,
    },
    /// Run `index` (from 0) begins.
    RunStarted {
        /// Run index.
        index: usize,
        /// Arm name.
        arm: String,
        /// Seed.
        seed: u64,
        /// Its optimisation steps.
        steps: usize,
    },
    /// A step or epoch of the current run.
    Fit(FitEvent),
    /// The current run is trained and is being evaluated on the test cases.
    Evaluating {
        /// Run index.
        index: usize,
    },
    /// Run `index` is evaluated.
    RunFinished {
        /// Run index.
        index: usize,
        /// Wall time of training and evaluation (s).
        seconds: f64,
    },
}

/// One run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Arm name.
    pub arm: String,
    /// Seed.
    pub seed: u64,
    /// Tasks trained.
    pub mode: TaskMode,
    /// The labels whose predicted volume gave the class (plan rule 11), when the run read the
    /// class from its mask instead of training the class head.
    pub class_from_mask: Option<Vec<String>>,
    /// Wall time of training and evaluation (s).
    pub seconds: f64,
    /// Training loss per step.
    pub loss: Vec<(usize, f64)>,
    /// Per-epoch summaries (validation on the validation cases).
    pub epochs: Vec<EpochSummary>,
    /// Evaluation of the chosen checkpoint on each test case.
    pub cases: Vec<CaseEvaluation>,
}

impl RunResult {
    /// Whether the run trained the segmentation.
    pub fn segments(&self) -> bool {
        self.mode != TaskMode::ClassificationOnly
    }

    /// Whether the run predicts the class (by its class head, or from its mask).
    pub fn classifies(&self) -> bool {
        self.mode != TaskMode::SegmentationOnly || self.class_from_mask.is_some()
    }

    /// What the run trained and how it gave the class, in words.
    pub fn tasks(&self) -> String {
        let class = match &self.class_from_mask {
            Some(labels) => format!("class from the predicted {} volume", labels.join(" + ")),
            None => "class head".into(),
        };
        match (self.mode, &self.class_from_mask) {
            (TaskMode::ClassificationOnly, _) => class,
            (TaskMode::SegmentationOnly, None) => "segmentation".into(),
            _ => format!("segmentation + {class}"),
        }
    }
}

/// An experiment's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentResult {
    /// The plan as run (`ExperimentPlan::as_run`: with the arms its `also_test` adds).
    pub plan: ExperimentPlan,
    /// The project folder.
    pub project: String,
    /// Foreground label names (index 0 = label 1).
    pub label_names: Vec<String>,
    /// Class names.
    pub class_names: Vec<String>,
    /// Held-out test case ids, in evaluation order.
    pub test_cases: Vec<String>,
    /// Cases trained on.
    pub training_cases: Vec<String>,
    /// Cases validated on per epoch.
    pub validation_cases: Vec<String>,
    /// The device, in words.
    pub device: String,
    /// Every run, arm by arm and seed by seed (a run tested on another project too appears
    /// again, under its tested arm's name, with those cases).
    pub runs: Vec<RunResult>,
    /// The other projects every run was also tested on.
    pub also_tested: Vec<AlsoTested>,
}

impl ExperimentResult {
    /// The test case ids of arm `arm`, in evaluation order: the experiment's, or those of the
    /// other project a tested arm ran on.
    pub fn cases_of(&self, arm: &str) -> &[String] {
        let other = self
            .plan
            .arms
            .iter()
            .find(|a| a.name == arm)
            .and_then(|a| a.tested_on.as_deref());
        match other.and_then(|o| self.also_tested.iter().find(|t| t.name == o)) {
            Some(t) => &t.cases,
            None => &self.test_cases,
        }
    }
}

/// The test cases of `plan` on `project`: the listed ids, or a share of the cases drawn with the
/// split seed as the plan's `test_split` says.
pub fn choose_test_cases(
    project: &Project,
    plan: &ExperimentPlan,
) -> Result<Vec<String>, ExperimentError> {
    let cases = &project.manifest.cases;
    if let Some(ids) = &plan.test_cases {
        if let Some(missing) = ids.iter().find(|id| !cases.iter().any(|c| &c.id == *id)) {
            return Err(ExperimentError::Plan {
                path: "plan".into(),
                problem: format!("test case {missing} is not in the project"),
            });
        }
        return Ok(ids.clone());
    }
    match plan.test_split {
        TestSplit::Class => Ok(test_cases_by_class(project, plan)),
        TestSplit::ClassAndLabels => test_cases_by_class_and_labels(project, plan),
    }
}

/// The share of each class's labelled cases (at least one), in a shuffled order.
fn test_cases_by_class(project: &Project, plan: &ExperimentPlan) -> Vec<String> {
    use rand::seq::SliceRandom;
    let cases = &project.manifest.cases;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.split_seed);
    let mut chosen = Vec::new();
    for class in &project.manifest.classes {
        let mut ids: Vec<String> = cases
            .iter()
            .filter(|c| {
                c.class_label.as_ref() == Some(class) && !plan.exclude_cases.contains(&c.id)
            })
            .map(|c| c.id.clone())
            .collect();
        ids.shuffle(&mut rng);
        let n = (ids.len() as f64 * plan.test_fraction).round() as usize;
        let n = if plan.test_fraction > 0.0 {
            n.max(1)
        } else {
            0
        };
        chosen.extend(ids.into_iter().take(n));
    }
    chosen.sort();
    chosen
}

/// The validation splitter's rule on the cases with a reference mask (read to see which labels
/// each holds) or a class that are not excluded: stratified by class, covering the labels.
fn test_cases_by_class_and_labels(
    project: &Project,
    plan: &ExperimentPlan,
) -> Result<Vec<String>, ExperimentError> {
    let candidates: Vec<&crate::project::Case> = project
        .manifest
        .cases
        .iter()
        .filter(|c| crate::model::apply::is_evaluable(c))
        .filter(|c| !plan.exclude_cases.contains(&c.id))
        .collect();
    let classes: Vec<usize> = candidates
        .iter()
        .map(|c| {
            let class = c.class_label.as_ref();
            let at = project
                .manifest
                .classes
                .iter()
                .position(|k| Some(k) == class);
            at.unwrap_or(project.manifest.classes.len())
        })
        .collect();
    let mut labels = Vec::with_capacity(candidates.len());
    for case in &candidates {
        let mask = project.load_reference_mask(case)?;
        labels.push(mask.map_or_else(Vec::new, |m| {
            crate::volume::labels_present(m.data().iter().copied())
        }));
    }
    let held =
        crate::model::split::held_out(&classes, &labels, plan.test_fraction, plan.split_seed);
    let mut chosen: Vec<String> = candidates
        .iter()
        .zip(held)
        .filter(|(_, h)| *h)
        .map(|(c, _)| c.id.clone())
        .collect();
    chosen.sort();
    Ok(chosen)
}

/// Run every arm × seed of `plan` on `project`, writing each run under `out/runs/`, and
/// evaluate each on the test cases. `control` cancels at the next step.
pub fn run_experiment(
    project: &Project,
    plan: &ExperimentPlan,
    out: &Path,
    events: &Sender<ExperimentEvent>,
    control: &FitControl,
) -> Result<ExperimentResult, ExperimentError> {
    let system_clock = || -> Arc<dyn Clock> { Arc::new(SystemClock::start()) };
    run_experiment_on(project, plan, out, (events, control), &system_clock)
}

/// `run_experiment` with each budgeted run's time read on a clock of `new_clock` (made when
/// the run starts: its budget's clock).
pub fn run_experiment_on(
    project: &Project,
    plan: &ExperimentPlan,
    out: &Path,
    (events, control): (&Sender<ExperimentEvent>, &FitControl),
    new_clock: &dyn Fn() -> Arc<dyn Clock>,
) -> Result<ExperimentResult, ExperimentError> {
    plan.check().map_err(|problem| ExperimentError::Plan {
        path: "plan".into(),
        problem,
    })?;
    let test_cases = choose_test_cases(project, plan)?;
    let (device, about) = choose_device(&plan.backend);
    let total_runs = plan.arms.len() * plan.seeds.len();
    let _ = events.send(ExperimentEvent::Started {
        runs: total_runs,
        test_cases: test_cases.clone(),
        device: about.clone(),
    });
    let planner = planner_if_budgeted(project, plan)?;
    let also = open_also_tested(project, plan)?;
    let ctx = RunContext {
        project,
        plan,
        out,
        events,
        control,
        device: &device,
        test_cases: &test_cases,
        planner: planner.as_ref(),
        also: &also,
        new_clock,
    };
    let mut runs = Vec::new();
    let mut names: Option<(Vec<String>, Vec<String>)> = None;
    let mut split: Option<(Vec<String>, Vec<String>)> = None;
    for (a, arm) in plan.arms.iter().enumerate() {
        let settings = plan.settings(a);
        let (train, val) = ctx.arm_split(arm, &settings)?;
        let ids = |v: &[crate::model::Sample]| v.iter().map(|s| s.case_id.clone()).collect();
        split.get_or_insert_with(|| (ids(&train), ids(&val)));
        for (s, &seed) in plan.seeds.iter().enumerate() {
            if control.is_cancelled() {
                return Err(ExperimentError::Cancelled);
            }
            let config = ctx.budgeted(
                arm_config(project, &settings, seed, ctx.planner)?,
                &settings,
                &val,
            )?;
            names.get_or_insert_with(|| label_and_class_names(&config));
            let index = a * plan.seeds.len() + s;
            runs.extend(ctx.run_one(index, &arm.name, seed, &config, (&train, &val))?);
        }
    }
    let (label_names, class_names) = names.unwrap_or_default();
    let (training_cases, validation_cases) = split.unwrap_or_default();
    let also_tested = also
        .iter()
        .map(|(name, other)| AlsoTested {
            name: name.clone(),
            project: other.root().display().to_string(),
            cases: evaluated_cases(other),
        })
        .collect();
    Ok(ExperimentResult {
        plan: plan.as_run(),
        project: project.root().display().to_string(),
        label_names,
        class_names,
        test_cases,
        training_cases,
        validation_cases,
        device: about,
        runs,
        also_tested,
    })
}

/// The `also_test` projects of `plan`, opened (relative paths from `project`'s folder), each
/// with its name; an error names one whose labels or classes are not `project`'s.
fn open_also_tested(
    project: &Project,
    plan: &ExperimentPlan,
) -> Result<Vec<(String, Project)>, ExperimentError> {
    let mine = (
        project.manifest.labels.names_by_value(),
        &project.manifest.classes,
    );
    let mut out = Vec::new();
    for t in &plan.also_test {
        let other = Project::open(&project.root().join(&t.project))?;
        if (
            other.manifest.labels.names_by_value(),
            &other.manifest.classes,
        ) != mine
        {
            return Err(ExperimentError::Plan {
                path: "plan".into(),
                problem: format!(
                    "also_test {:?} ({}): its labels or classes are not the project's",
                    t.name,
                    other.root().display()
                ),
            });
        }
        out.push((t.name.clone(), other));
    }
    Ok(out)
}

/// The ids of the cases `evaluate_project` evaluates on `project` (a reference or a class).
fn evaluated_cases(project: &Project) -> Vec<String> {
    project
        .manifest
        .cases
        .iter()
        .filter(|c| crate::model::apply::is_evaluable(c))
        .map(|c| c.id.clone())
        .collect()
}

/// A configuration's foreground label names (background left out) and class names.
fn label_and_class_names(config: &FitConfig) -> (Vec<String>, Vec<String>) {
    (
        config
            .training
            .label_names
            .iter()
            .skip(1)
            .cloned()
            .collect(),
        config.training.class_names.clone(),
    )
}

/// What every run of an experiment shares.
struct RunContext<'a> {
    project: &'a Project,
    plan: &'a ExperimentPlan,
    /// The experiment's output folder.
    out: &'a Path,
    events: &'a Sender<ExperimentEvent>,
    control: &'a FitControl,
    /// The device runs train and evaluate on.
    device: &'a burn::prelude::Device,
    /// The held-out test cases.
    test_cases: &'a [String],
    /// The planner's plan for the project, when an arm has a time budget.
    planner: Option<&'a crate::model::Plan>,
    /// The other projects every run is also tested on, by name.
    also: &'a [(String, Project)],
    /// A budgeted run's clock, made when the run starts.
    new_clock: &'a dyn Fn() -> Arc<dyn Clock>,
}

impl RunContext<'_> {
    /// The training and validation samples of an arm: the project's cases its inputs can load
    /// (sequences, spacing; not seed-dependent), less the test and excluded cases, split by
    /// case with the plan's split seed. At least 2 cases are needed.
    fn arm_split(
        &self,
        arm: &Arm,
        settings: &ArmSettings,
    ) -> Result<(Vec<crate::model::Sample>, Vec<crate::model::Sample>), ExperimentError> {
        let plan = self.plan;
        let first = arm_config(self.project, settings, plan.seeds[0], self.planner)?;
        let samples = load_samples_with(
            self.project,
            &SampleSelection::for_training(&first.training),
        )?;
        let pool: Vec<_> = samples
            .into_iter()
            .filter(|s| {
                !self.test_cases.contains(&s.case_id) && !plan.exclude_cases.contains(&s.case_id)
            })
            .collect();
        if pool.len() < 2 {
            return Err(ExperimentError::Plan {
                path: "plan".into(),
                problem: format!(
                    "arm {}: {} training cases with {} besides the test cases; at least 2 are needed",
                    arm.name,
                    pool.len(),
                    first.training.mode.case_needs()
                ),
            });
        }
        Ok(split_by_case(
            pool,
            plan.validation_fraction,
            plan.split_seed,
        ))
    }

    /// Run `index`: train arm `arm`'s `config` (seed `seed`) on `data` (training, validation)
    /// into `out/runs/<arm>/seed<seed>/`, then evaluate the plan's checkpoint on the test cases
    /// and on each `also_test` project (one result each, the experiment's first).
    fn run_one(
        &self,
        index: usize,
        arm: &str,
        seed: u64,
        config: &FitConfig,
        data: (&[crate::model::Sample], &[crate::model::Sample]),
    ) -> Result<Vec<RunResult>, ExperimentError> {
        let (train, val) = data;
        let started = std::time::Instant::now();
        let _ = self.events.send(ExperimentEvent::RunStarted {
            index,
            arm: arm.to_string(),
            seed,
            steps: config.epochs * config.steps_per_epoch,
        });
        let dir = self.out.join("runs").join(arm).join(format!("seed{seed}"));
        crate::model::runs::write_run_files(&dir, config, val)?;
        let (result, loss) = self.fit_relayed(config, train.to_vec(), val, &dir);
        let result = result?;
        if self.control.is_cancelled() {
            return Err(ExperimentError::Cancelled);
        }
        let _ = self.events.send(ExperimentEvent::Evaluating { index });
        let ckpt = match self.plan.checkpoint {
            Checkpoint::Last => &result.last,
            Checkpoint::Best => &result.best,
        };
        let (cfg, net) = load_checkpoint(ckpt, self.device)?;
        let evaluate = |project: &Project, only: Option<&[String]>| {
            evaluate_project(project, &net, &cfg, self.device, only, |_, _| {}).map(|(c, _)| c)
        };
        let mut tested = vec![(
            arm.to_string(),
            evaluate(self.project, Some(self.test_cases))?,
        )];
        for (name, other) in self.also {
            tested.push((tested_arm_name(arm, name), evaluate(other, None)?));
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = self
            .events
            .send(ExperimentEvent::RunFinished { index, seconds });
        let run = |(arm, cases)| RunResult {
            arm,
            seed,
            mode: config.training.mode,
            class_from_mask: (config.training.class_evidence.as_ref())
                .map(|e| e.label_names.clone()),
            seconds,
            loss: loss.clone(),
            epochs: result.epochs.clone(),
            cases,
        };
        Ok(tested.into_iter().map(run).collect())
    }

    /// `config` with its epochs and steps fitted to the arm's time budget, if it has one (the
    /// budget's clock starts here, so measuring a step is inside it).
    fn budgeted(
        &self,
        config: FitConfig,
        settings: &ArmSettings,
        val: &[crate::model::Sample],
    ) -> Result<FitConfig, ExperimentError> {
        let Some(minutes) = settings.minutes else {
            return Ok(config);
        };
        let clock = (self.new_clock)();
        let end_s = minutes * 60.0;
        let (config, _) = crate::model::budget::fit_to_budget(
            &config,
            val,
            self.device,
            end_s,
            clock,
            self.control,
        )?;
        Ok(config)
    }

    /// Fit `config` into `dir`, relaying its events as `ExperimentEvent::Fit`; the fit's result
    /// and the training loss of every step.
    fn fit_relayed(
        &self,
        config: &FitConfig,
        train: Vec<crate::model::Sample>,
        val: &[crate::model::Sample],
        dir: &Path,
    ) -> (Result<FitResult, CheckpointError>, Vec<(usize, f64)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let relay = scope.spawn(|| {
                let mut loss = Vec::new();
                for e in rx {
                    if let FitEvent::Train(TrainEvent::Step { step, loss: l }) = &e {
                        loss.push((*step, l.total));
                    }
                    let _ = self.events.send(ExperimentEvent::Fit(e));
                }
                loss
            });
            let r = fit(config, train, val, self.device, dir, &tx, self.control);
            drop(tx);
            (r, relay.join().unwrap_or_default())
        })
    }
}

/// The planner's plan for `project` on the plan's device class, when an arm has a time budget.
/// (The fingerprint reads every case, test cases too: it sets sizes and sampling weights, never
/// what a model sees of a test case.)
fn planner_if_budgeted(
    project: &Project,
    plan: &ExperimentPlan,
) -> Result<Option<crate::model::Plan>, ExperimentError> {
    let budgeted = (0..plan.arms.len()).any(|a| plan.settings(a).minutes.is_some());
    if !budgeted {
        return Ok(None);
    }
    let fingerprint = crate::model::Fingerprint::of(project)?;
    let class = crate::model::apply::device_class(&plan.backend);
    Ok(Some(crate::model::plan(&fingerprint, class)))
}

/// The fit configuration of an arm's settings with `seed` on `project`: the planner's (`plan`)
/// with the settings as choices when the arm has a time budget, else the settings alone.
fn arm_config(
    project: &Project,
    settings: &ArmSettings,
    seed: u64,
    plan: Option<&crate::model::Plan>,
) -> Result<FitConfig, ExperimentError> {
    let options = settings.options(seed);
    let config = match (settings.minutes, plan) {
        (Some(_), Some(plan)) => {
            let choices = settings.choices();
            crate::model::planned::planned_config(project, &options, &choices, plan)?
        }
        _ => fit_config_for(project, &options)?,
    };
    let class_every = settings.class_every.unwrap_or(4).max(1);
    Ok(config.with_class_every(class_every))
}

#[cfg(test)]
mod tests {
    use super::revise_run_steps;

    #[test]
    fn a_started_run_revises_its_own_and_its_arms_later_step_counts_only() {
        // Two arms × three seeds, the recipe's 1000 steps each.
        let mut steps = vec![1000; 6];
        revise_run_steps(&mut steps, 0, 240, 3);
        assert_eq!(steps, [240, 240, 240, 1000, 1000, 1000]);
        revise_run_steps(&mut steps, 1, 260, 3);
        assert_eq!(steps, [240, 260, 260, 1000, 1000, 1000]);
        revise_run_steps(&mut steps, 4, 90, 3);
        assert_eq!(steps, [240, 260, 260, 1000, 90, 90]);
        revise_run_steps(&mut steps, 9, 5, 3);
        assert_eq!(
            steps,
            [240, 260, 260, 1000, 90, 90],
            "no such run: nothing changes"
        );
    }
}
