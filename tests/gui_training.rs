//! Training inside the window, headless (egui_kittest through wgpu on lavapipe): a short
//! training run started from the training panel on the demo project keeps the UI live — each
//! paging command takes effect in its own frame while steps keep coming, painting changes the
//! mask, loss points reach the plot — and
//! cancel ends it, keeping its last checkpoint as a (cancelled, inactive) model version. The
//! panel shows the dataset's plan; the numbers the user changes there, and only those, override
//! it in the run.

mod window;

use egui::Event;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use mriloop::app::training::{TrainCommand, TrainSettings};
use mriloop::app::{Command, MriloopApp, Tool, ViewCommand};
use mriloop::model::planned::PlanOverrides;
use mriloop::model::{Precision, TaskMode};
use mriloop::project::{Project, ReviewStatus, RunOutcome};
use mriloop::render::Orientation;
use std::time::Duration;

fn slice_mm(h: &Harness<'_, MriloopApp>) -> f64 {
    h.state().open_case().unwrap().viewer.cursor_mm.z
}

#[test]
fn training_from_the_panel_keeps_the_ui_live_and_cancel_keeps_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = window::phantom_demo_copy(dir.path());
    let mut h = window::open_project(&root, [1280.0, 900.0]);
    let settings = window::short_cpu_run();
    h.state_mut()
        .push(Command::Train(TrainCommand::Settings(settings)));
    h.state_mut()
        .push(Command::Train(TrainCommand::TogglePanel));
    h.step();
    h.step();
    h.get_by_label("Start training").click();
    h.step();
    h.step();
    assert!(
        h.state().training().run.is_some(),
        "{:?}",
        h.state().error()
    );

    // While it trains: paint with the brush in the axial view and page through slices.
    h.key_press(egui::Key::B);
    h.step();
    assert_eq!(h.state().tools().tool, Tool::Brush);
    let cell = window::axial(&h);
    let mask_before = window::mask_of(&h);
    let mut frames = 0u64;
    // Each paging command must take effect in the frame it was given, while the run goes on
    // producing steps: the window applies input without waiting for training.
    let (mut paged, mut paged_in_frame) = (0u64, 0u64);
    let losses_at_start = h.state().training().curves.loss.len();
    let mut slices_seen = std::collections::HashSet::new();
    for k in 0..3000u64 {
        let cursor = h.state().open_case().unwrap().viewer.cursor_mm;
        let at = cell.pos_of_mm(cursor + cell.plane.right * (4.0 + (k % 8) as f64));
        h.event(Event::PointerMoved(at));
        window::button(&h, at, k % 2 == 0);
        let pages = k % 5 == 0;
        if pages {
            h.state_mut().push(Command::View(ViewCommand::StepSlice(
                Orientation::Axial,
                if k % 10 == 0 { 1 } else { -2 },
            )));
        }
        let slice_before = slice_mm(&h);
        h.step();
        frames += 1;
        if pages {
            paged += 1;
            paged_in_frame += u64::from(slice_mm(&h) != slice_before);
        }
        slices_seen.insert((slice_mm(&h) * 1000.0).round() as i64);
        if h.state().training().curves.loss.len() >= losses_at_start + 2 && frames >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = h.state().training();
    assert!(
        t.curves.loss.len() >= losses_at_start + 2,
        "steps during the loop: {} → {}",
        losses_at_start,
        t.curves.loss.len()
    );
    assert!(t.run.is_some(), "the run should still be going");
    assert!(paged >= 4, "pages: {paged}");
    assert_eq!(
        paged_in_frame, paged,
        "paging commands not applied in their own frame while training ran"
    );
    assert!(slices_seen.len() >= 2, "slices seen: {slices_seen:?}");
    assert_ne!(mask_before, window::mask_of(&h), "painting had no effect");
    // The plot shows the points: render a frame with the panel.
    h.render().unwrap();

    // Pause: at most the step in flight finishes, then nothing until Resume.
    h.get_by_label("Pause").click();
    let parked = window::step_until(&mut h, |a| {
        a.training()
            .run
            .as_ref()
            .is_some_and(|r| r.handle.control.is_parked())
    });
    assert!(parked, "the run did not come to rest after Pause");
    // The window has the event of the step that was in flight (relayed by another thread).
    let caught_up = window::step_until(&mut h, |a| {
        a.training()
            .run
            .as_ref()
            .is_some_and(|r| r.step == r.handle.control.last_step_sent())
    });
    assert!(
        caught_up,
        "the window never showed the last step before the pause"
    );
    assert!(h
        .state()
        .training()
        .run
        .as_ref()
        .unwrap()
        .paused_at
        .is_some());
    let paused_at = h.state().training().curves.loss.len();
    for _ in 0..40 {
        h.step();
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        h.state().training().curves.loss.len(),
        paused_at,
        "steps while paused"
    );
    h.get_by_label("Resume").click();
    let resumed = window::step_until(&mut h, |a| a.training().curves.loss.len() > paused_at);
    assert!(resumed, "no step after Resume");

    h.get_by_label("Cancel").click();
    for _ in 0..3000 {
        h.step();
        if h.state().training().run.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        h.state().training().run.is_none(),
        "cancel did not end the run"
    );
    let p = h.state().project().unwrap();
    let v = p.manifest.models.last().expect("a version was recorded");
    assert_eq!(v.outcome, RunOutcome::Cancelled);
    assert_eq!(p.manifest.active_model, None);
    assert!(p.resolve(&v.checkpoint).join("model.bpk").exists());
    // The manifest on disk has it too (saved in the background).
    for _ in 0..500 {
        h.step();
        let on_disk = Project::open(&root).unwrap();
        if !on_disk.manifest.models.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(Project::open(&root).unwrap().manifest.models.len(), 1);
}

#[test]
fn the_panel_shows_the_datasets_plan_and_a_run_takes_the_users_changes() {
    use mriloop::model::fingerprint::Fingerprint;
    use mriloop::model::{plan, DeviceClass};
    let dir = tempfile::tempdir().unwrap();
    let root = window::phantom_demo_copy(dir.path());
    let mut h = window::open_project(&root, [1280.0, 1000.0]);
    let settings = TrainSettings {
        fine_tune: false,
        mode: TaskMode::SegmentationOnly,
        backend: "cpu".into(),
        only_reviewed: false,
        reinfer_after: false,
        ..TrainSettings::default()
    };
    h.state_mut()
        .push(Command::Train(TrainCommand::Settings(settings.clone())));
    h.state_mut()
        .push(Command::Train(TrainCommand::TogglePanel));
    assert!(window::step_until(&mut h, |a| a
        .training()
        .plan
        .ready()
        .is_some()));
    // The panel's plan is the dataset's plan for the CPU, as `mriloop plan` makes it.
    let project = Project::open(&root).unwrap();
    let expected = plan(&Fingerprint::of(&project).unwrap(), DeviceClass::Cpu);
    assert_eq!(h.state().training().plan.ready(), Some(&expected));
    h.step();
    let [px, py, pz] = expected.patch;
    h.get_by_label(&format!("{px}×{py}×{pz}, {} levels", expected.depth));
    h.get_by_label("devices");

    // The user changes three of its numbers (and the devices), then takes the batch back to the
    // plan's.
    let mut changed = settings.clone();
    // Data-parallel over two devices (on the CPU: two replicas on its one device).
    changed.devices = 2;
    changed.choices = PlanOverrides {
        epochs: Some(1),
        steps_per_epoch: Some(2),
        batch: Some(expected.batch + 1),
        ..PlanOverrides::default()
    };
    h.state_mut()
        .push(Command::Train(TrainCommand::Settings(changed)));
    h.step();
    h.step();
    let resets = h.get_all_by_label("reset").count();
    assert_eq!(resets, 3, "a reset button per changed number");
    h.get_all_by_label("reset").next().unwrap().click();
    h.step();
    h.step();
    let choices = h.state().training().settings.choices.clone();
    assert_eq!(
        choices.batch, None,
        "reset gives the batch back to the plan"
    );
    assert_eq!(
        (choices.epochs, choices.steps_per_epoch),
        (Some(1), Some(2))
    );

    // Mixed precision, picked in the panel (bf16: the CPU backend has it).
    h.get_by_label("bf16").click();
    h.step();
    h.step();
    assert_eq!(h.state().training().settings.precision, Precision::Bf16);

    // The run trains what the panel shows: the user's epochs and steps, the plan's patch and
    // batch, its precision, and the plan written beside the model.
    h.get_by_label("Start training").click();
    h.step();
    h.step();
    assert!(h.state().training().run.is_some(), "the run did not start");
    let mut done = false;
    for _ in 0..6000 {
        h.step();
        if h.state().training().run.is_none() {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        done,
        "the run did not finish: {}",
        h.state().training().status
    );
    // The manifest with the new version is saved off the UI thread: wait for it on disk.
    let mut saved = None;
    for _ in 0..500 {
        h.step();
        saved = Project::open(&root)
            .ok()
            .and_then(|p| p.manifest.models.last().cloned());
        if saved.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = h.state().training().status.clone();
    let version = saved.expect(&status);
    let dir = root.join("models").join(&version.id);
    let fit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fit.json")).unwrap()).unwrap();
    assert_eq!(fit["epochs"], 1);
    assert_eq!(fit["steps_per_epoch"], 2);
    assert_eq!(fit["batch_size"], expected.batch);
    assert_eq!(fit["patch"], serde_json::json!(expected.patch));
    assert_eq!(fit["devices"], 2);
    assert_eq!(fit["training"]["precision"], "bf16");
    // The same plan, written by the same serializer (compared as text: JSON floats need not
    // parse back to the same bits).
    let used = std::fs::read_to_string(dir.join("plan.json")).unwrap();
    assert_eq!(used, serde_json::to_string_pretty(&expected).unwrap());
}

/// A project whose cases have no class (an nnU-Net dataset's): the Class section says so and
/// offers no class to choose, and the training panel says its joint run trains the
/// segmentation only.
#[test]
fn a_project_without_classes_says_it_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = window::phantom_demo_copy(dir.path());
    let mut project = Project::open(&root).unwrap();
    project.manifest.classes.clear();
    project.manifest.cases.iter_mut().for_each(|c| {
        c.class_label = None;
        c.review = ReviewStatus::Unreviewed;
    });
    project.save().unwrap();
    let mut h = window::open_project(&root, [1280.0, 1000.0]);
    h.step();
    h.get_by_label("this project has no case classes: segmentation only");
    assert!(h.query_by_label("reference class (keys 1–9)").is_none());
    h.state_mut()
        .push(Command::Train(TrainCommand::TogglePanel));
    h.step();
    h.step();
    h.get_by_label("(no case has a class: the segmentation only)");
    // None of its cases is reviewed (a dataset imported with its ground truth): a run trains
    // on every case with a reference mask.
    assert!(!h.state().training().settings.only_reviewed);
}
