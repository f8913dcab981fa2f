//! Experiments: plan checks, the statistics and distances of the report, and a tiny two-arm plan
//! run end to end on a phantom project on the CPU backend (report, per-case CSV and plots).

use mriloop::experiment::stats::{mean_sd, paired_permutation_test, roc_curve};
use mriloop::experiment::{choose_test_cases, run_experiment, run_experiment_on, ExperimentPlan};
use mriloop::phantom::{generate_project, PhantomConfig};
use mriloop::volume::distance::{hd95_mm, squared_distance_mm2};
use mriloop::volume::{Affine, Volume};

/// A phantom project of `cases` small (24³) cases from `seed` at `dir`.
fn small_project(dir: &std::path::Path, cases: usize, seed: u64) -> mriloop::project::Project {
    let cfg = PhantomConfig {
        cases,
        seed,
        grid: 24,
        ..PhantomConfig::default()
    };
    generate_project(dir, &cfg, |_, _| {}).unwrap()
}

#[test]
fn permutation_test_and_roc_match_hand_computed_values() {
    // Three positive differences: only the all-positive and all-negative patterns are as
    // extreme, 2 of 8.
    let a = [Some(0.5), Some(0.5), Some(0.5), None];
    let b = [Some(0.6), Some(0.7), Some(0.8), Some(0.9)];
    let t = paired_permutation_test(&a, &b).unwrap();
    assert_eq!(t.n, 3);
    assert!((t.mean_difference - 0.2).abs() < 1e-12);
    assert!((t.p_value - 0.25).abs() < 1e-12 && t.exact);
    // Differences of both signs that cancel: every pattern is as extreme.
    let t = paired_permutation_test(&[Some(0.0), Some(0.0)], &[Some(1.0), Some(-1.0)]).unwrap();
    assert!((t.p_value - 1.0).abs() < 1e-12);
    // 20 pairs: sampled, and a clear shift is significant.
    let a: Vec<Option<f64>> = (0..20).map(|i| Some(i as f64 * 0.01)).collect();
    let b: Vec<Option<f64>> = (0..20).map(|i| Some(i as f64 * 0.01 + 0.1)).collect();
    let t = paired_permutation_test(&a, &b).unwrap();
    assert!(!t.exact && t.p_value < 0.001, "{t:?}");
    let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]).unwrap();
    assert!((m - 2.0).abs() < 1e-12 && (sd - 1.0).abs() < 1e-12);
    let roc = roc_curve(&[0.9, 0.8, 0.3, 0.1], &[true, true, false, false]).unwrap();
    assert_eq!(
        roc,
        vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
    );
    assert!(roc_curve(&[0.1], &[true]).is_none());
}

#[test]
fn distance_transform_is_exact_and_hd95_measures_a_shift() {
    let dims = [9, 7, 5];
    let spacing = [0.7, 1.0, 2.5];
    let n = dims.iter().product::<usize>();
    let feature: Vec<bool> = (0..n).map(|i| i % 17 == 3 || i == 200).collect();
    let d2 = squared_distance_mm2(&feature, dims, spacing);
    let coord = |i: usize| [i % 9, (i / 9) % 7, i / 63];
    for (i, d) in d2.iter().enumerate() {
        let p = coord(i);
        let brute = (0..n)
            .filter(|j| feature[*j])
            .map(|j| {
                let q = coord(j);
                (0..3)
                    .map(|a| ((p[a] as f64 - q[a] as f64) * spacing[a]).powi(2))
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min);
        assert!((d - brute).abs() < 1e-9, "voxel {p:?}: {} vs {brute}", d);
    }
    assert!(squared_distance_mm2(&vec![false; n], dims, spacing)
        .iter()
        .all(|v| v.is_infinite()));
    // A cube and the same cube 3 voxels (1.5 mm) along x: HD95 = 1.5 mm.
    let g = [20usize, 20, 20];
    let affine = Affine::from_spacing([0.5, 0.5, 0.5]);
    let cube = |x0: usize| {
        let data = (0..8000)
            .map(|i| {
                let (x, y, z) = (i % 20, (i / 20) % 20, i / 400);
                u8::from((x0..x0 + 8).contains(&x) && (5..13).contains(&y) && (5..13).contains(&z))
            })
            .collect();
        Volume::new([g[0], g[1], g[2], 1], affine, data).unwrap()
    };
    let h = hd95_mm(&cube(4), &cube(7), 1).unwrap();
    assert!((h - 1.5).abs() < 1e-9, "{h}");
    assert_eq!(hd95_mm(&cube(4), &cube(4), 1), Some(0.0));
    assert_eq!(hd95_mm(&cube(4), &cube(4), 2), None);
}

#[test]
fn bad_plans_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let cases = [
        ("{ not json", "key must be a string"),
        (
            r#"{"name":"x","seeds":[1],"arms":[{"name":"a","set":{"epoch":2}}]}"#,
            "unknown field",
        ),
        (
            r#"{"name":"x","seeds":[1],"arms":[{"name":"a"},{"name":"a"}]}"#,
            "used twice",
        ),
        (
            r#"{"name":"x","seeds":[],"arms":[{"name":"a"}]}"#,
            "no seed",
        ),
        (
            r#"{"name":"x","seeds":[1],"arms":[{"name":"../a"}]}"#,
            "arm name",
        ),
        (
            r#"{"name":"x","seeds":[1],"arms":[{"name":"a"},{"name":"a-on-b"}],
                "also_test":[{"name":"b","project":"../b"}]}"#,
            "clashes",
        ),
        (
            r#"{"name":"x","seeds":[1],"arms":[{"name":"a","tested_on":"b"}]}"#,
            "tested_on",
        ),
    ];
    for (text, problem) in cases {
        std::fs::write(&path, text).unwrap();
        let e = ExperimentPlan::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("plan.json") && e.contains(problem),
            "{text}: {e}"
        );
    }
}

#[test]
fn a_tiny_two_arm_plan_writes_a_report_with_both_arms() {
    let dir = tempfile::tempdir().unwrap();
    let project = small_project(&dir.path().join("p"), 8, 5);
    let plan_path = dir.path().join("plan.json");
    std::fs::write(
        &plan_path,
        r#"{
          "name": "tiny",
          "seeds": [1, 2],
          "test_fraction": 0.25,
          "backend": "cpu",
          "base": {"epochs": 2, "steps_per_epoch": 2, "patch": 16, "batch": 1,
                   "class_window": 16, "base_channels": 4},
          "arms": [
            {"name": "T1", "set": {"sequences": ["T1"]}},
            {"name": "T1+T2+FLAIR", "set": {"sequences": ["T1", "T2", "FLAIR"], "mode": "seg"}}
          ]
        }"#,
    )
    .unwrap();
    let plan = ExperimentPlan::load(&plan_path).unwrap();
    let out = dir.path().join("report");
    let (tx, rx) = std::sync::mpsc::channel();
    let control = mriloop::model::FitControl::default();
    let result = run_experiment(&project, &plan, &out, &tx, &control).unwrap();
    drop(tx);
    let events: Vec<_> = rx.iter().collect();
    let finished = events
        .iter()
        .filter(|e| matches!(e, mriloop::experiment::ExperimentEvent::RunFinished { .. }))
        .count();
    assert_eq!(finished, 4);
    // A quarter of the cases (rounded) held out, each class with two or more cases tested, in
    // proportion (the validation splitter's quotas).
    let n = project.manifest.cases.len();
    assert_eq!(result.test_cases.len(), (n as f64 * 0.25).round() as usize);
    for class in &project.manifest.classes {
        let of = |ids: &mut dyn Iterator<Item = &String>| {
            ids.filter(|id| {
                project
                    .manifest
                    .cases
                    .iter()
                    .any(|c| &c.id == *id && c.class_label.as_ref() == Some(class))
            })
            .count()
        };
        let all = of(&mut project.manifest.cases.iter().map(|c| &c.id));
        let held = of(&mut result.test_cases.iter());
        let share = all as f64 * result.test_cases.len() as f64 / n as f64;
        assert!(
            held >= 1 && (held as f64 - share).abs() <= 1.0,
            "{class}: {held} of {all}"
        );
    }
    for id in &result.test_cases {
        assert!(!result.training_cases.contains(id) && !result.validation_cases.contains(id));
    }
    assert_eq!(result.runs.len(), 4);
    for run in &result.runs {
        let ids: Vec<&str> = run.cases.iter().map(|c| c.case_id.as_str()).collect();
        assert_eq!(
            ids,
            result
                .test_cases
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        assert!(out
            .join("runs")
            .join(&run.arm)
            .join(format!("seed{}", run.seed))
            .join("last/model.bpk")
            .exists());
    }
    let plots = mriloop::plot::write_plots(&result, &out).unwrap();
    let files: Vec<&str> = plots.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(files, ["curves.png", "dice_boxes.png", "roc.png"]);
    for f in &files {
        let img = image::open(out.join(f)).unwrap();
        assert!(img.width() >= 700);
    }
    mriloop::experiment::report::write_report(&result, &out, "test", &plots).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let table = |title: &str| -> Vec<String> {
        let start = md
            .find(title)
            .unwrap_or_else(|| panic!("no {title} in\n{md}"));
        md[start..]
            .lines()
            .skip(4)
            .take_while(|l| l.starts_with('|'))
            .map(String::from)
            .collect()
    };
    let dice = table("## Dice per label");
    assert_eq!(dice.len(), 2, "{dice:?}");
    assert!(dice[0].starts_with("| T1 | ") && dice[1].starts_with("| T1+T2+FLAIR | "));
    // The segmentation-only arm has no class figures; the joint one has.
    let class = table("## Classification");
    assert!(
        class[0].starts_with("| T1 | ") && !class[0].contains("| — |"),
        "{class:?}"
    );
    assert!(class[1].ends_with("| — | — |"), "{class:?}");
    let n = result.test_cases.len();
    assert!(
        md.contains(&format!(
            "| T1+T2+FLAIR | T1 | mean foreground Dice | {n} |"
        )),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("cases.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * n);
    assert!(csv.starts_with("arm,seed,case,class,p_control,p_patient,dice_habenula_L"));
}

#[test]
fn each_run_is_also_tested_on_another_project_and_reported_as_its_own_arm() {
    let dir = tempfile::tempdir().unwrap();
    let project = small_project(&dir.path().join("p"), 6, 5);
    let other = small_project(&dir.path().join("q"), 3, 6);
    let plan: ExperimentPlan = serde_json::from_str(
        r#"{"name": "also", "seeds": [1], "test_fraction": 0.3, "backend": "cpu",
            "base": {"epochs": 1, "steps_per_epoch": 2, "patch": 16, "batch": 1,
                     "class_window": 16, "base_channels": 4},
            "arms": [{"name": "a", "set": {"mode": "seg"}}],
            "also_test": [{"name": "other", "project": "../q"}]}"#,
    )
    .unwrap();
    let out = dir.path().join("report");
    let (tx, _rx) = std::sync::mpsc::channel();
    let control = mriloop::model::FitControl::default();
    let result = run_experiment(&project, &plan, &out, &tx, &control).unwrap();
    // One training, two evaluations: the experiment's test cases, then every case of the other.
    let arms: Vec<(&str, Option<&str>)> = (result.plan.arms.iter())
        .map(|a| (a.name.as_str(), a.tested_on.as_deref()))
        .collect();
    assert_eq!(arms, [("a", None), ("a-on-other", Some("other"))]);
    assert_eq!(result.runs.len(), 2);
    let ids = |r: &mriloop::experiment::RunResult| -> Vec<String> {
        r.cases.iter().map(|c| c.case_id.clone()).collect()
    };
    assert_eq!(ids(&result.runs[0]), result.test_cases);
    let other_ids: Vec<String> = other.manifest.cases.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids(&result.runs[1]), other_ids);
    assert_eq!(result.cases_of("a-on-other"), other_ids.as_slice());
    assert_eq!(result.runs[0].loss, result.runs[1].loss);
    mriloop::experiment::report::write_report(&result, &out, "test", &[]).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| a-on-other | the runs above, tested on `other` |"),
        "{md}"
    );
    assert!(md.contains("- Also tested on `other`"), "{md}");
    // Different cases: no paired test between the two.
    assert!(!md.contains("| a-on-other | a |"), "{md}");
    // A project with other labels is refused, named.
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("q/mriloop.json")).unwrap())
            .unwrap();
    manifest["labels"][0]["name"] = "renamed".into();
    std::fs::write(dir.path().join("q/mriloop.json"), manifest.to_string()).unwrap();
    let e = run_experiment(&project, &plan, &out, &tx, &control).unwrap_err();
    assert!(e.to_string().contains("labels or classes"), "{e}");
}

#[test]
fn a_drawn_test_set_is_stratified_by_class_and_covers_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |split: &str| {
        let text = format!(
            r#"{{"name": "split", "seeds": [1], "test_fraction": 0.25, "test_split": "{split}",
                "arms": [{{"name": "a", "set": {{}}}}]}}"#
        );
        let path = dir.path().join(format!("{split}.json"));
        std::fs::write(&path, text).unwrap();
        ExperimentPlan::load(&path).unwrap()
    };
    let (mut missed_covering, mut missed_by_class) = (0, 0);
    for seed in 1..=8 {
        let project = small_project(&dir.path().join(format!("p{seed}")), 12, seed);
        let labels_of = |ids: &[String]| {
            let mut held: Vec<u8> = Vec::new();
            for id in ids {
                let case = project.manifest.case(id).unwrap();
                let mask = project.load_reference_mask(case).unwrap().unwrap();
                held.extend(mask.data().iter().copied().filter(|v| *v != 0));
                held.sort_unstable();
                held.dedup();
            }
            held
        };
        let all: Vec<String> = project
            .manifest
            .cases
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let covered = choose_test_cases(&project, &plan("class_and_labels")).unwrap();
        let by_class = choose_test_cases(&project, &plan("class")).unwrap();
        let (everything, with_cover, without) =
            (labels_of(&all), labels_of(&covered), labels_of(&by_class));
        eprintln!("seed {seed}: test labels {with_cover:?} covering, {without:?} by class only, {everything:?} in the project");
        missed_covering += everything.len() - with_cover.len();
        missed_by_class += everything.len() - without.len();
        assert_eq!(covered.len(), 3);
        // Both classes are tested, in proportion; the same seed draws the same cases.
        for class in &project.manifest.classes {
            let n = |ids: &[String]| {
                ids.iter()
                    .filter(|id| {
                        project.manifest.case(id).unwrap().class_label.as_ref() == Some(class)
                    })
                    .count()
            };
            assert!(n(&covered) >= 1, "{class}");
            assert!(n(&covered).abs_diff(n(&all) / 4) <= 1, "{class}");
        }
        assert_eq!(
            covered,
            choose_test_cases(&project, &plan("class_and_labels")).unwrap()
        );
    }
    eprintln!("labels left untested over 8 projects: {missed_covering} covering, {missed_by_class} by class only");
    assert!(
        missed_covering < missed_by_class,
        "{missed_covering} vs {missed_by_class}"
    );
}

#[test]
fn an_arm_with_a_time_budget_takes_the_planners_configuration_fitted_to_it() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 6: three or more cases of each class, the patients told by their lesions (rule 11).
    let project = small_project(&dir.path().join("p"), 8, 6);
    let plan_path = dir.path().join("plan.json");
    std::fs::write(
        &plan_path,
        r#"{"name": "budget", "seeds": [1, 2], "test_fraction": 0.25, "backend": "cpu",
            "base": {"mode": "seg", "minutes": 0.5, "base_channels": 4},
            "arms": [{"name": "planned", "set": {}},
                     {"name": "joint", "set": {"mode": "joint"}}]}"#,
    )
    .unwrap();
    let plan = ExperimentPlan::load(&plan_path).unwrap();
    let out = dir.path().join("report");
    let (tx, _rx) = std::sync::mpsc::channel();
    let control = mriloop::model::FitControl::default();
    // Each run's 30 s budget is read on a clock of its own that moves 1 s per reading, so
    // what the budget allows does not depend on this machine's speed or load.
    let ticking = || -> std::sync::Arc<dyn mriloop::model::budget::Clock> {
        std::sync::Arc::new(TickingClock(std::sync::atomic::AtomicU64::new(0)))
    };
    let result = run_experiment_on(&project, &plan, &out, (&tx, &control), &ticking).unwrap();
    let fit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/planned/seed1/fit.json")).unwrap(),
    )
    .unwrap();
    let planned = mriloop::model::plan(
        &mriloop::model::Fingerprint::of(&project).unwrap(),
        mriloop::model::DeviceClass::Cpu,
    );
    // The planner's patch and label weights, the arm's own width, steps fitted to 30 s.
    assert_eq!(
        fit["patch"][0].as_u64(),
        Some(planned.patch[0] as u64),
        "{fit}"
    );
    assert!(
        !fit["label_weights"].as_array().unwrap().is_empty(),
        "{fit}"
    );
    assert_eq!(fit["training"]["model"]["base_channels"].as_u64(), Some(4));
    // Every run has its own budget (the second is not cut short by the first's deadline).
    assert_eq!(result.runs.len(), 4);
    // The joint arm read the class from its mask (the plan's rule 11 for this project), and
    // the report says so beside the arm's settings.
    let evidence = planned
        .class_evidence
        .as_ref()
        .expect("class evidence planned");
    for run in &result.runs {
        let expected = (run.arm == "joint").then(|| evidence.label_names.clone());
        assert_eq!(run.class_from_mask, expected, "{}", run.arm);
        assert_eq!(run.classifies(), run.arm == "joint", "{}", run.arm);
    }
    let report = mriloop::experiment::report::report_markdown(&result, "test", &[]);
    let joint_row = report.lines().find(|l| l.starts_with("| joint |")).unwrap();
    let planned_row = report
        .lines()
        .find(|l| l.starts_with("| planned |"))
        .unwrap();
    assert!(
        joint_row.contains(&format!(
            "segmentation + class from the predicted {} volume",
            evidence.label_names.join(" + ")
        )),
        "{joint_row}"
    );
    assert!(planned_row.contains("| segmentation |"), "{planned_row}");
    // Every run has a budget of its own: the seeds of an arm, each on a fresh clock, are fitted
    // to the same steps and take the same steps (a run whose clock an earlier run had used
    // would be fitted to one step and stopped at once).
    let fitted = |run: &mriloop::experiment::RunResult| {
        let path = out.join(format!("runs/{}/seed{}/fit.json", run.arm, run.seed));
        let fit: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        fit["epochs"].as_u64().unwrap() * fit["steps_per_epoch"].as_u64().unwrap()
    };
    for run in &result.runs {
        eprintln!(
            "{} seed {}: {} steps taken of {} fitted",
            run.arm,
            run.seed,
            run.loss.len(),
            fitted(run)
        );
        assert!(run.loss.len() >= 3, "{} seed {}", run.arm, run.seed);
        assert!(!run.cases.is_empty());
    }
    for pair in result.runs.chunks(2) {
        assert_eq!(pair[0].arm, pair[1].arm);
        assert_eq!(fitted(&pair[0]), fitted(&pair[1]), "{}", pair[0].arm);
        assert_eq!(pair[0].loss.len(), pair[1].loss.len(), "{}", pair[0].arm);
    }
    // A budget that is not a positive number is refused by name.
    std::fs::write(
        &plan_path,
        r#"{"name": "b", "seeds": [1], "arms": [{"name": "a", "set": {"minutes": -1}}]}"#,
    )
    .unwrap();
    let e = ExperimentPlan::load(&plan_path).unwrap_err().to_string();
    assert!(e.contains("minutes -1"), "{e}");
}

/// A clock that moves one second each time it is read.
struct TickingClock(std::sync::atomic::AtomicU64);

impl mriloop::model::budget::Clock for TickingClock {
    fn now_s(&self) -> f64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as f64 + 1.0
    }
}
