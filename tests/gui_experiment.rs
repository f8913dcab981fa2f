//! The Experiment panel, headless (egui_kittest through wgpu on lavapipe): a plan chosen in the
//! panel runs in the background with progress while frames keep coming, ends with a report in
//! the project's experiments folder and its figures in the window; a second run is cancelled.
//! Plans are read by workers, and two read at once both answer.

mod window;

use egui_kittest::kittest::Queryable;
use mriloop::app::experiment::ExperimentCommand;
use mriloop::app::Command;
use mriloop::phantom::{generate_project, PhantomConfig};
use std::time::{Duration, Instant};

#[test]
fn a_plan_runs_from_the_panel_with_progress_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        cases: 8,
        seed: 5,
        grid: 24,
        ..PhantomConfig::default()
    };
    let project = generate_project(&dir.path().join("p"), &cfg, |_, _| {}).unwrap();
    let plan = dir.path().join("tiny.json");
    std::fs::write(
        &plan,
        r#"{"name": "panel check", "seeds": [1], "test_fraction": 0.25, "backend": "cpu",
            "base": {"epochs": 2, "steps_per_epoch": 3, "patch": 16, "batch": 1,
                     "class_window": 16, "base_channels": 4},
            "arms": [{"name": "T1", "set": {"sequences": ["T1"]}},
                     {"name": "T1+T2", "set": {"sequences": ["T1", "T2"]}}]}"#,
    )
    .unwrap();
    let mut h = window::open_project(project.root(), [1280.0, 900.0]);
    h.state_mut()
        .push(Command::Experiment(ExperimentCommand::Toggle));
    h.state_mut()
        .push(Command::Experiment(ExperimentCommand::LoadPlan(plan)));
    // The plan is read by a worker, off the UI thread.
    let read = window::step_until(&mut h, |a| a.experiment().plan.is_some());
    assert!(read, "{:?}", h.state().error());
    h.get_by_label("Start experiment").click();
    h.step();
    h.step();
    assert!(
        h.state().experiment().run.is_some(),
        "{:?}",
        h.state().error()
    );
    // Frames keep coming while it runs; progress advances.
    let (mut frames, mut most_steps) = (0, 0);
    let t = Instant::now();
    while h.state().experiment().run.is_some() && t.elapsed() < Duration::from_secs(300) {
        h.step();
        frames += 1;
        if let Some(run) = &h.state().experiment().run {
            most_steps = most_steps.max(run.steps_done);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(h.state().error().is_none(), "{:?}", h.state().error());
    let (result, out) = h.state().experiment().result.clone().expect("a result");
    assert!(
        frames > 10 && most_steps > 0,
        "{frames} frames, {most_steps} steps seen"
    );
    assert_eq!(result.runs.len(), 2);
    assert!(out.starts_with(project.root().join("experiments")));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| T1 | ") && md.contains("| T1+T2 | "));
    assert!(out.join("cases.csv").exists() && out.join("curves.png").exists());
    h.step();
    // The headline figures per arm are in the window.
    assert_eq!(h.query_all_by_label_contains("class_auc").count(), 2);

    // A second run, cancelled once it has stepped.
    h.get_by_label("Start experiment").click();
    h.step();
    let t = Instant::now();
    while h
        .state()
        .experiment()
        .run
        .as_ref()
        .is_some_and(|r| r.steps_done == 0)
        && t.elapsed() < Duration::from_secs(120)
    {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.get_by_label("Cancel").click();
    assert!(window::step_until(&mut h, |a| a.experiment().run.is_none()));
    assert!(h.state().error().is_none(), "{:?}", h.state().error());
    assert!(
        h.state().experiment().status.contains("cancelled"),
        "{}",
        h.state().experiment().status
    );
}

#[test]
fn two_file_workers_at_once_both_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        cases: 2,
        seed: 5,
        grid: 16,
        ..PhantomConfig::default()
    };
    let project = generate_project(&dir.path().join("p"), &cfg, |_, _| {}).unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"name": "two answers", "seeds": [1], "test_fraction": 0.5,
            "arms": [{"name": "T1", "set": {"sequences": ["T1"]}}]}"#,
    )
    .unwrap();
    let missing = dir.path().join("no-such-plan.json");
    let mut h = window::open_project(project.root(), [1280.0, 900.0]);
    // Both are read by workers in the same frame; each answer reaches the window (one shared
    // answer slot would drop the first).
    h.state_mut()
        .push(Command::Experiment(ExperimentCommand::LoadPlan(missing)));
    h.state_mut()
        .push(Command::Experiment(ExperimentCommand::LoadPlan(
            good.clone(),
        )));
    let both = window::step_until(&mut h, |a| {
        a.experiment().plan.is_some() && a.error().is_some()
    });
    assert!(
        both,
        "plan: {:?}, error: {:?}",
        h.state().experiment().plan.is_some(),
        h.state().error()
    );
    assert!(h.state().error().unwrap().contains("no-such-plan.json"));
    assert_eq!(h.state().experiment().plan.as_ref().unwrap().0, good);
}
