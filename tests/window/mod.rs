//! Helpers shared by the window tests: open the app headless (egui_kittest through wgpu) and
//! step it until a case is loaded.
#![allow(dead_code)]

use egui::{Event, Modifiers, PointerButton, Pos2};
use egui_kittest::Harness;
use mriloop::app::{MriloopApp, Startup, ViewCell};
use mriloop::render::Orientation;
use std::path::Path;
use std::time::Duration;

/// Step until `done` holds (background threads run meanwhile); false after about 10 s.
pub fn step_until(h: &mut Harness<'_, MriloopApp>, done: impl Fn(&MriloopApp) -> bool) -> bool {
    for _ in 0..2000 {
        h.step();
        if done(h.state()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The window at `size` on the project at `root`, stepped until its first case is open.
pub fn open_project(root: &Path, size: [f32; 2]) -> Harness<'static, MriloopApp> {
    let root = root.to_path_buf();
    let mut h = Harness::builder()
        .with_size(size)
        .wgpu()
        .build_eframe(move |cc| MriloopApp::new(cc, Startup::Project(root)));
    let open = step_until(&mut h, |a| a.open_case().is_some() && !a.is_loading());
    assert!(open, "{:?}", h.state().error());
    h.step();
    h
}

/// The axial view's cell as last drawn.
pub fn axial(h: &Harness<'_, MriloopApp>) -> ViewCell {
    h.state()
        .view_cells()
        .iter()
        .find(|c| c.orientation == Orientation::Axial)
        .cloned()
        .unwrap()
}

/// The open case's reference mask voxels.
pub fn mask_of(h: &Harness<'_, MriloopApp>) -> Vec<u8> {
    h.state()
        .open_case()
        .unwrap()
        .reference
        .as_ref()
        .unwrap()
        .data()
        .to_vec()
}

/// Press (`pressed`) or release the primary button at `pos`.
pub fn button(h: &Harness<'_, MriloopApp>, pos: Pos2, pressed: bool) {
    h.event(Event::PointerButton {
        pos,
        button: PointerButton::Primary,
        pressed,
        modifiers: Modifiers::NONE,
    });
}
