//! A failure on burn's device threads while the window trains (headless, egui_kittest through
//! wgpu on lavapipe): on an H200 such a panic (a Vulkan matrix product with too many
//! workgroups, inside burn's autotuning) left the training step waiting forever. The window
//! must end the run as failed and tell the user why, and stay usable. The failure is injected
//! as burn's device threads would raise it: a panic on a thread named as theirs (`DSD-…`).
//! Its own test binary: the failure is process-wide, and would end other tests' runs.

mod window;

use mriloop::app::training::TrainCommand;
use mriloop::app::Command;
use mriloop::model::device_failure::{install, OnFailure};

#[test]
fn a_device_thread_failure_ends_the_run_and_tells_the_user() {
    install(OnFailure::Record);
    let dir = tempfile::tempdir().unwrap();
    let root = window::phantom_demo_copy(dir.path());
    let mut h = window::open_project(&root, [1280.0, 900.0]);
    let settings = window::short_cpu_run();
    h.state_mut()
        .push(Command::Train(TrainCommand::Settings(settings)));
    h.state_mut().push(Command::Train(TrainCommand::Start));
    assert!(
        window::step_until(&mut h, |a| a.training().run.is_some()),
        "{:?}",
        h.state().error()
    );
    assert_eq!(h.state().error(), None);
    // Nothing failed yet: the run goes on for some frames.
    for _ in 0..5 {
        h.step();
    }
    assert!(h.state().training().run.is_some());

    let device_thread = std::thread::Builder::new().name("DSD-9-0".into());
    let joined = device_thread
        .spawn(|| panic!("Cube count too big (131072, 108, 1)"))
        .unwrap()
        .join();
    assert!(joined.is_err());
    assert!(window::step_until(&mut h, |a| a.training().run.is_none()));
    let error = h.state().error().unwrap_or_default().to_string();
    assert!(error.contains("Training failed"), "{error}");
    assert!(error.contains("GPU backend failed"), "{error}");
    assert!(error.contains("Cube count too big"), "{error}");
    assert_eq!(h.state().training().status, "training failed");
}
