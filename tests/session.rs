//! Pieces of the loop that need no training: the uncertainty score, the cohort table of raw
//! predictions against corrections, and "most informative" in the window choosing the
//! unreviewed case with the highest uncertainty.

mod window;

use egui_kittest::Harness;
use mriloop::app::cohort::CohortState;
use mriloop::app::training::TrainCommand;
use mriloop::app::{Command, MriloopApp, Startup};
use mriloop::model::runs::uncertainty_of;
use mriloop::phantom::{generate_project, PhantomConfig};
use mriloop::project::{Project, ReviewStatus, Uncertainty};
use std::time::Duration;

fn small_project(dir: &std::path::Path, cases: usize) -> Project {
    let cfg = PhantomConfig {
        cases,
        grid: 16,
        ..PhantomConfig::default()
    };
    generate_project(dir, &cfg, |_, _| {}).unwrap()
}

#[test]
fn uncertainty_is_zero_when_sure_and_one_at_the_boundary() {
    let sure = uncertainty_of(&[0.0, 0.999_999, 1.0, 0.0], &[0.0, 1.0]);
    assert!(
        sure.segmentation < 0.01 && sure.classification < 1e-6,
        "{sure:?}"
    );
    let unsure = uncertainty_of(&[0.5, 0.5, 0.0], &[0.5, 0.5]);
    assert!((unsure.segmentation - 1.0).abs() < 1e-6, "{unsure:?}");
    assert!((unsure.classification - 1.0).abs() < 1e-6);
    let between = uncertainty_of(&[0.9], &[0.3, 0.7]);
    assert!((between.classification - 0.6).abs() < 1e-6);
    assert!(between.segmentation > 0.4 && between.segmentation < 0.5);
    assert!(unsure.score() > between.score() && between.score() > sure.score());
}

#[test]
fn cohort_compares_raw_predictions_with_corrections_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = small_project(dir.path(), 3);
    // Case 0: the model was right (prediction = correction); case 1: it missed every label.
    for (i, version) in [(0, "v1"), (1, "v1")] {
        let case = p.manifest.cases[i].clone();
        let mut m = p.load_reference_mask(&case).unwrap().unwrap();
        if i == 1 {
            m.data_mut().iter_mut().for_each(|v| *v = 0);
        }
        let rel = format!("cases/{}/predicted_{version}.nii.gz", case.id);
        mriloop::volume::write_volume(&p.resolve(&rel), &m).unwrap();
        let c = &mut p.manifest.cases[i];
        c.predicted_mask = Some(rel);
        c.predicted_by = Some(version.into());
        c.review = ReviewStatus::Reviewed;
        c.predicted_class = Some(if c.class_label.as_deref() == Some("patient") {
            vec![0.2, 0.8]
        } else {
            vec![0.8, 0.2]
        });
    }
    p.save().unwrap();
    let mut cohort = CohortState::start(p.clone(), Box::new(|| {}));
    // Until the worker has ended, however slow this machine is (a run that never ends is the
    // test harness's timeout).
    while cohort.is_running() {
        std::thread::sleep(Duration::from_millis(10));
        cohort.poll();
    }
    assert_eq!(
        cohort.rows.len(),
        2,
        "only reviewed cases with a prediction"
    );
    let s = cohort.summaries();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].model, "v1");
    assert_eq!(s[0].cases, 2);
    // Habenula L: Dice 1 on case 0 and 0 on case 1.
    assert_eq!(s[0].dice[0], Some(0.5));
    assert!(s[0].abs_volume_error_mm3[0] > 0.0);
    assert_eq!(s[0].class_accuracy, 1.0);
    let total: usize = s[0].confusion.iter().flatten().sum();
    assert_eq!(total, 2);
    let csv = cohort.csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with("case,model,dice_habenula_L"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("phantom_000,v1,1.0000"),
        "{}",
        lines[1]
    );
    let path = dir.path().join("cohort.csv");
    cohort.write_csv(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), csv);
}

#[test]
fn most_informative_opens_the_least_certain_unreviewed_case() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = small_project(dir.path(), 4);
    let scores = [(0.9, 0.9), (0.1, 0.1), (0.95, 0.95), (0.6, 0.2)];
    for (c, (s, k)) in p.manifest.cases.iter_mut().zip(scores) {
        c.uncertainty = Some(Uncertainty {
            segmentation: s,
            classification: k,
        });
    }
    // The most uncertain case is already reviewed: it is skipped.
    p.manifest.cases[2].review = ReviewStatus::Reviewed;
    p.save().unwrap();
    let root = dir.path().to_path_buf();
    let mut h = Harness::builder()
        .with_size([1200.0, 800.0])
        .wgpu()
        .build_eframe(move |cc| MriloopApp::new(cc, Startup::Project(root)));
    let wait_open = |h: &mut Harness<'_, MriloopApp>, want: usize| {
        let open = window::step_until(h, |a| {
            a.open_case().and_then(|o| o.case_index) == Some(want) && !a.is_loading()
        });
        assert!(open, "case {want} did not open: {:?}", h.state().error());
    };
    wait_open(&mut h, 0);
    assert_eq!(h.state().most_informative(), Some(3), "not the open one");
    h.state_mut()
        .push(Command::Train(TrainCommand::NextInformative));
    wait_open(&mut h, 3);
    assert_eq!(h.state().most_informative(), Some(0));
}

#[test]
fn background_work_runs_below_the_window_priority() {
    use mriloop::background::{
        current_thread_is_idle_class, current_thread_niceness, run_in_background,
        BACKGROUND_NICENESS,
    };
    use rayon::prelude::*;
    let Some(window_before) = current_thread_niceness() else {
        return; // no per-thread priorities on this system
    };
    let both = || (current_thread_niceness(), current_thread_is_idle_class());
    let (worker, pool) = std::thread::spawn(move || {
        run_in_background(move || {
            let pool: Vec<_> = (0..8).into_par_iter().map(|_| both()).collect();
            (both(), pool)
        })
    })
    .join()
    .unwrap();
    let lowered = |(n, idle): (Option<i32>, Option<bool>)| {
        n.unwrap() >= BACKGROUND_NICENESS && idle != Some(false)
    };
    assert!(lowered(worker), "{worker:?}");
    assert!(pool.iter().all(|p| lowered(*p)), "{pool:?}");
    assert_eq!(current_thread_niceness(), Some(window_before));
    assert_eq!(current_thread_is_idle_class(), Some(false));
}
