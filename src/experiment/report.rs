//! An experiment's report: `report.md` (the plan, the split, per-arm tables of Dice, HD95 and
//! volume error per label and class AUC and accuracy as mean ± sd over seeds, paired tests
//! between every pair of arms, the plots) and `cases.csv` (one row per run and test case).
//!
//! Invariants: every figure is computed from the `ExperimentResult` alone; per-arm figures are
//! first averaged over the test cases of one run, then summarised over seeds; paired tests pair
//! the same test case, its figures averaged over seeds; both files are written atomically.

use super::stats::{mean_sd, paired_permutation_test};
use super::{ExperimentResult, RunResult};
use crate::model::fit::auc;
use std::fmt::Write as _;
use std::path::Path;

/// Dice of label `l` on one case of a run (`None` where the reference lacks the label or the
/// run did not train the segmentation).
fn dice(run: &RunResult, case: usize, l: usize) -> Option<f64> {
    if !run.segments() {
        return None;
    }
    run.cases.get(case)?.dice.get(l).copied().flatten()
}

/// Mean Dice over the labels the case's reference has.
fn mean_foreground_dice(run: &RunResult, case: usize) -> Option<f64> {
    let labels = run.cases.get(case)?.dice.len();
    let v: Vec<f64> = (0..labels).filter_map(|l| dice(run, case, l)).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Probability the run gave to the case's true class.
fn true_class_probability(run: &RunResult, case: usize) -> Option<f64> {
    if !run.classifies() {
        return None;
    }
    let c = run.cases.get(case)?;
    c.class_probabilities.get(c.class?).map(|p| f64::from(*p))
}

/// Class AUC (one-vs-rest, averaged) and accuracy of one run over its test cases.
pub fn class_figures(run: &RunResult, classes: usize) -> (Option<f64>, Option<f64>) {
    if !run.classifies() {
        return (None, None);
    }
    let with: Vec<(&[f32], usize)> = run
        .cases
        .iter()
        .filter_map(|c| Some((c.class_probabilities.as_slice(), c.class?)))
        .filter(|(p, _)| !p.is_empty())
        .collect();
    if with.is_empty() {
        return (None, None);
    }
    let probs: Vec<&[f32]> = with.iter().map(|(p, _)| *p).collect();
    let truth: Vec<usize> = with.iter().map(|(_, c)| *c).collect();
    let (accuracy, auc) = crate::model::fit::class_figures(&probs, &truth, classes.max(2));
    (auc, Some(accuracy))
}

/// Score of the positive (last) class and whether the case is positive, per test case of a
/// run, for ROC curves of two-class projects.
pub fn positive_scores(run: &RunResult) -> (Vec<f64>, Vec<bool>) {
    run.cases
        .iter()
        .filter_map(|c| {
            let k = c.class_probabilities.len().checked_sub(1)?;
            Some((f64::from(c.class_probabilities[k]), c.class? == k))
        })
        .unzip()
}

/// The ROC curve of arm `name`'s class (positive = the last class), its seeds' test cases
/// pooled, and its AUC; `None` when the arm does not classify or the curve is undefined.
pub fn arm_roc(result: &ExperimentResult, name: &str) -> Option<(Vec<(f64, f64)>, f64)> {
    let (mut scores, mut positive) = (Vec::new(), Vec::new());
    for run in runs_of(result, name).into_iter().filter(|r| r.classifies()) {
        let (s, t) = positive_scores(run);
        scores.extend(s);
        positive.extend(t);
    }
    let points = super::stats::roc_curve(&scores, &positive)?;
    Some((points, crate::model::auc(&scores, &positive).unwrap_or(0.0)))
}

/// The runs of arm `name`.
pub fn runs_of<'a>(result: &'a ExperimentResult, name: &str) -> Vec<&'a RunResult> {
    result.runs.iter().filter(|r| r.arm == name).collect()
}

/// Per test case of the arm (`ExperimentResult::cases_of`, in order), `f` averaged over the
/// arm's seeds.
pub fn per_case_mean(
    result: &ExperimentResult,
    arm: &str,
    f: impl Fn(&RunResult, usize) -> Option<f64>,
) -> Vec<Option<f64>> {
    let runs = runs_of(result, arm);
    result
        .cases_of(arm)
        .iter()
        .map(|id| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    let i = r.cases.iter().position(|c| &c.case_id == id)?;
                    f(r, i)
                })
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// A figure of one run's test case `i` and label `l`.
type CaseLabelFigure = dyn Fn(&RunResult, usize, usize) -> Option<f64>;

/// A figure's name and its per-case values in two arms.
type PairedFigure = (String, Vec<Option<f64>>, Vec<Option<f64>>);

/// Per run, the mean of `f` over its test cases (runs where `f` gives nothing are left out).
fn per_run_means(runs: &[&RunResult], f: impl Fn(&RunResult, usize) -> Option<f64>) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let v: Vec<f64> = (0..r.cases.len()).filter_map(|i| f(r, i)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// Per-run means over test cases of `f`, summarised over the arm's seeds as "m ± sd".
fn summary(
    runs: &[&RunResult],
    f: impl Fn(&RunResult, usize) -> Option<f64>,
    digits: usize,
) -> String {
    seed_summary(&per_run_means(runs, f), digits)
}

fn seed_summary(values: &[f64], digits: usize) -> String {
    match mean_sd(values) {
        Some((m, sd)) => format!("{m:.digits$} ± {sd:.digits$}"),
        None => "—".into(),
    }
}

/// The headline figures of an arm: mean Dice per label and class AUC (means over seeds), for
/// `metric:` lines and the app's panel.
pub fn headline(result: &ExperimentResult, arm: &str) -> Vec<(String, f64)> {
    let runs = runs_of(result, arm);
    let mut out = Vec::new();
    for (l, name) in result.label_names.iter().enumerate() {
        if let Some((m, _)) = mean_sd(&per_run_means(&runs, |r, i| dice(r, i, l))) {
            out.push((format!("dice_{name}"), m));
        }
    }
    let aucs: Vec<f64> = runs
        .iter()
        .filter_map(|r| class_figures(r, result.class_names.len()).0)
        .collect();
    if let Some((m, _)) = mean_sd(&aucs) {
        out.push(("class_auc".into(), m));
    }
    out
}

/// The report's Markdown. `plots`: (title, file name) of the images written beside it.
pub fn report_markdown(
    result: &ExperimentResult,
    command: &str,
    plots: &[(String, String)],
) -> String {
    let mut md = String::new();
    write_overview(&mut md, result, command);
    write_arms_table(&mut md, result);
    write_label_tables(&mut md, result);
    write_classification_table(&mut md, result);
    if result.plan.arms.len() > 1 {
        write_paired_tests(&mut md, result);
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for (title, file) in plots {
            let _ = writeln!(md, "**{title}**\n\n![{title}]({file})\n");
        }
    }
    let _ = writeln!(
        md,
        "\nPer-case figures: `cases.csv` (one row per run and test case)."
    );
    md
}

/// The report's title, description, command and the list of project, device, seeds, split and
/// evaluated checkpoint.
fn write_overview(md: &mut String, result: &ExperimentResult, command: &str) {
    let plan = &result.plan;
    let _ = writeln!(md, "# Experiment: {}\n", plan.name);
    if !plan.description.is_empty() {
        let _ = writeln!(md, "{}\n", plan.description);
    }
    let _ = writeln!(md, "Command: `{command}`\n");
    let _ = writeln!(md, "- Project: `{}`", result.project);
    let _ = writeln!(md, "- Device: {}", result.device);
    let _ = writeln!(
        md,
        "- Seeds: {} (each arm trained once per seed; split seed {})",
        plan.seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        plan.split_seed
    );
    let _ = writeln!(
        md,
        "- Test cases ({}, never trained or validated on): {}",
        result.test_cases.len(),
        result.test_cases.join(", ")
    );
    let _ = writeln!(
        md,
        "- Training cases: {}; validation cases (per-epoch curves): {}",
        result.training_cases.len(),
        result.validation_cases.len()
    );
    for t in &result.also_tested {
        let _ = writeln!(
            md,
            "- Also tested on `{}` (`{}`, arms `<arm>-on-{}`: the same runs), its {} cases: {}",
            t.name,
            t.project,
            t.name,
            t.cases.len(),
            t.cases.join(", ")
        );
    }
    if !plan.exclude_cases.is_empty() {
        let _ = writeln!(
            md,
            "- Excluded from training and testing: {}",
            plan.exclude_cases.join(", ")
        );
    }
    let _ = writeln!(md, "- Evaluated checkpoint: {:?}\n", plan.checkpoint);
}

/// The "Arms" section: each arm's settings over the base, what its runs trained (the plan may
/// read the class from the mask where the settings say joint), the steps they took (mean over
/// seeds: a budgeted run's steps follow the clock) and mean wall time per run.
fn write_arms_table(md: &mut String, result: &ExperimentResult) {
    let plan = &result.plan;
    let _ = writeln!(md, "## Arms\n");
    let _ = writeln!(
        md,
        "| arm | settings (over the base) | trained | steps | mean wall time per run (s) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (i, arm) in plan.arms.iter().enumerate() {
        let s = plan.settings(i);
        let runs = runs_of(result, &arm.name);
        let secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        let steps: Vec<f64> = runs.iter().map(|r| r.loss.len() as f64).collect();
        let steps = mean_sd(&steps).map_or(plan.steps_per_run(i) as f64, |(m, _)| m);
        let settings = match &arm.tested_on {
            Some(other) => format!("the runs above, tested on `{other}`"),
            None => serde_json::to_string(&s)
                .unwrap_or_default()
                .replace('|', "/"),
        };
        let trained = runs.first().map_or("—".into(), |r| r.tasks());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            arm.name,
            settings,
            trained,
            steps.round(),
            mean_sd(&secs).map_or("—".into(), |(m, _)| format!("{m:.0}"))
        );
    }
}

/// The per-label tables (Dice, HD95, absolute volume error): one row per arm, mean ± sd over
/// seeds.
fn write_label_tables(md: &mut String, result: &ExperimentResult) {
    let labels = &result.label_names;
    let hd95 = |r: &RunResult, i: usize, l: usize| {
        r.segments()
            .then(|| r.cases[i].hd95_mm.get(l).copied().flatten())
            .flatten()
    };
    let volume_error = |r: &RunResult, i: usize, l: usize| {
        dice(r, i, l)?;
        r.cases[i].volume_error_mm3.get(l).map(|v| v.abs())
    };
    let tables: [(&str, &CaseLabelFigure, usize); 3] = [
        ("Dice per label (mean ± sd over seeds)", &dice, 3),
        (
            "HD95 per label, mm (mean ± sd over seeds; cases where both masks have the label)",
            &hd95,
            2,
        ),
        (
            "Absolute volume error per label, mm³ (mean ± sd over seeds; cases whose reference has the label)",
            &volume_error,
            1,
        ),
    ];
    for (title, figure, digits) in tables {
        let _ = writeln!(md, "\n## {title}\n");
        let _ = writeln!(md, "| arm | {} |", labels.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(labels.len()));
        for arm in &result.plan.arms {
            let runs = runs_of(result, &arm.name);
            let cells: Vec<String> = (0..labels.len())
                .map(|l| summary(&runs, |r, i| figure(r, i, l), digits))
                .collect();
            let _ = writeln!(md, "| {} | {} |", arm.name, cells.join(" | "));
        }
    }
}

/// The classification table: class AUC and accuracy per arm, mean ± sd over seeds.
fn write_classification_table(md: &mut String, result: &ExperimentResult) {
    let _ = writeln!(md, "\n## Classification (mean ± sd over seeds)\n");
    let _ = writeln!(md, "| arm | class AUC | class accuracy |");
    let _ = writeln!(md, "|---|---|---|");
    for arm in &result.plan.arms {
        let runs = runs_of(result, &arm.name);
        let figs: Vec<(Option<f64>, Option<f64>)> = runs
            .iter()
            .map(|r| class_figures(r, result.class_names.len()))
            .collect();
        let aucs: Vec<f64> = figs.iter().filter_map(|f| f.0).collect();
        let accs: Vec<f64> = figs.iter().filter_map(|f| f.1).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            arm.name,
            seed_summary(&aucs, 3),
            seed_summary(&accs, 3)
        );
    }
}

/// The paired tests between every pair of arms tested on the same cases (a later arm against
/// each earlier one), one row per figure that has a test.
fn write_paired_tests(md: &mut String, result: &ExperimentResult) {
    let plan = &result.plan;
    let _ = writeln!(md, "\n## Paired tests between arms\n");
    let _ = writeln!(
        md,
        "Every pair of arms, on the same test cases, each figure averaged over seeds; two-sided sign-flip permutation test of the mean difference (arm − other); exact over all sign patterns up to 16 cases. Figures a run does not train (Dice of a class-only arm, class of a segmentation-only arm) are left out.\n"
    );
    let _ = writeln!(md, "| arm | other | figure | cases | mean difference | p |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (j, arm) in plan.arms.iter().enumerate() {
        // Pairs on the same cases only (an arm tested on another project pairs with its kind).
        let same_cases =
            |b: &&crate::experiment::Arm| result.cases_of(&b.name) == result.cases_of(&arm.name);
        for base in plan.arms[..j].iter().filter(same_cases) {
            for (name, a, b) in paired_figures(result, &base.name, &arm.name) {
                if let Some(t) = paired_permutation_test(&a, &b) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {:+.4} | {:.4}{} |",
                        arm.name,
                        base.name,
                        name,
                        t.n,
                        t.mean_difference,
                        t.p_value,
                        if t.exact { "" } else { " (sampled)" }
                    );
                }
            }
        }
    }
}

/// The figures compared between arm `base` and arm `arm`, per test case averaged over seeds:
/// mean foreground Dice, Dice per label, and the probability of the true class.
fn paired_figures(result: &ExperimentResult, base: &str, arm: &str) -> Vec<PairedFigure> {
    let mut figures: Vec<PairedFigure> = vec![(
        "mean foreground Dice".into(),
        per_case_mean(result, base, mean_foreground_dice),
        per_case_mean(result, arm, mean_foreground_dice),
    )];
    for (l, name) in result.label_names.iter().enumerate() {
        figures.push((
            format!("Dice {name}"),
            per_case_mean(result, base, |r, i| dice(r, i, l)),
            per_case_mean(result, arm, |r, i| dice(r, i, l)),
        ));
    }
    figures.push((
        "probability of the true class".into(),
        per_case_mean(result, base, true_class_probability),
        per_case_mean(result, arm, true_class_probability),
    ));
    figures
}

/// The per-case CSV: one row per run and test case (quoted where a field needs it).
pub fn cases_csv(result: &ExperimentResult) -> String {
    let mut header = vec![
        "arm".to_string(),
        "seed".into(),
        "case".into(),
        "class".into(),
    ];
    for c in &result.class_names {
        header.push(format!("p_{c}"));
    }
    for kind in ["dice", "hd95_mm", "volume_error_mm3"] {
        for l in &result.label_names {
            header.push(format!("{kind}_{l}"));
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(&header);
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for r in &result.runs {
        for (i, c) in r.cases.iter().enumerate() {
            let mut row = vec![
                r.arm.clone(),
                r.seed.to_string(),
                c.case_id.clone(),
                c.class
                    .and_then(|k| result.class_names.get(k).cloned())
                    .unwrap_or_default(),
            ];
            for k in 0..result.class_names.len() {
                row.push(opt(r
                    .classifies()
                    .then(|| c.class_probabilities.get(k).map(|p| f64::from(*p)))
                    .flatten()));
            }
            for l in 0..result.label_names.len() {
                row.push(opt(dice(r, i, l)));
            }
            for l in 0..result.label_names.len() {
                row.push(opt(r
                    .segments()
                    .then(|| c.hd95_mm.get(l).copied().flatten())
                    .flatten()));
            }
            for l in 0..result.label_names.len() {
                row.push(opt(r
                    .segments()
                    .then(|| c.volume_error_mm3.get(l).copied())
                    .flatten()));
            }
            let _ = w.write_record(&row);
        }
    }
    // Writing into memory cannot fail.
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Write `report.md` and `cases.csv` into `out` (atomically).
pub fn write_report(
    result: &ExperimentResult,
    out: &Path,
    command: &str,
    plots: &[(String, String)],
) -> Result<(), super::ExperimentError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| super::ExperimentError::Io { path, source }
    };
    let md = out.join("report.md");
    crate::atomic::write_atomic(&md, report_markdown(result, command, plots).as_bytes())
        .map_err(io(&md))?;
    let csv = out.join("cases.csv");
    crate::atomic::write_atomic(&csv, cases_csv(result).as_bytes()).map_err(io(&csv))?;
    Ok(())
}

/// AUC of one run's positive-class scores (two-class projects), for plots' legends.
pub fn run_auc(run: &RunResult) -> Option<f64> {
    let (scores, positive) = positive_scores(run);
    auc(&scores, &positive)
}
