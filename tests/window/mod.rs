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
    mask_of_app(h.state())
}

/// The open case's editable mask, of the app itself (for `step_until` conditions).
pub fn mask_of_app(a: &MriloopApp) -> Vec<u8> {
    a.open_case()
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

/// The phantom project the window tests were written on (one case of `mriloop phantom --seed
/// 5`: six sequences, the habenulae, a lesion, an infarct and a tumour; no model). The built-in
/// demo is real anatomy with shipped models (`assets/demo`).
pub fn phantom_demo_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phantom_demo")
}

/// A writable copy of `phantom_demo_dir()` in `dir/phantom_demo`, byte for byte.
pub fn phantom_demo_copy(dir: &Path) -> std::path::PathBuf {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let dest = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_tree(&path, &dest);
            } else {
                std::fs::copy(&path, &dest).unwrap();
            }
        }
    }
    let root = dir.join("phantom_demo");
    copy_tree(&phantom_demo_dir(), &root);
    root
}

/// The largest 6-connected region of `label` in `mask`, its voxel with the most voxels of the
/// region within one voxel (its "centre", where a person would click), and that voxel's place.
pub fn largest_region_centre(
    mask: &mriloop::volume::Volume<u8>,
    label: u8,
) -> (Vec<usize>, [usize; 3], glam::DVec3) {
    let dims = mask.dims3();
    let at = |i: usize| {
        [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ]
    };
    let regions = mriloop::volume::regions::connected_regions(dims, |i| mask.data()[i] == label);
    let region = regions
        .into_iter()
        .max_by_key(|r| r.len())
        .expect("the label is there");
    let around = |i: usize| {
        let v = at(i);
        region
            .iter()
            .filter(|j| (0..3).all(|x| at(**j)[x].abs_diff(v[x]) <= 1))
            .count()
    };
    let centre = at(*region.iter().max_by_key(|i| around(**i)).unwrap());
    let mm = mask
        .affine()
        .vox_to_mm(glam::DVec3::from_array(centre.map(|c| c as f64)));
    (region, centre, mm)
}

/// A short segmentation run on the CPU from the training panel: one epoch of 400 steps of 16³
/// patches of T1 and T2, batch 1, base 4 (the run goes on while a test looks at the window).
pub fn short_cpu_run() -> mriloop::app::training::TrainSettings {
    use mriloop::model::planned::PlanOverrides;
    mriloop::app::training::TrainSettings {
        fine_tune: false,
        choices: PlanOverrides {
            epochs: Some(1),
            steps_per_epoch: Some(400),
            patch: Some(16),
            batch: Some(1),
            class_window: Some(32),
            base_channels: Some(4),
            spacing_mm: None,
            class_every: None,
        },
        sequences: vec!["T1".into(), "T2".into()],
        mode: mriloop::model::TaskMode::SegmentationOnly,
        backend: "cpu".into(),
        only_reviewed: false,
        reinfer_after: false,
        ..Default::default()
    }
}
