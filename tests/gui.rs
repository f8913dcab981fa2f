//! The review window, headless: egui_kittest drives the real eframe app and renders it through
//! wgpu (Mesa's lavapipe where there is no GPU). Checks are by pixels against what the CPU copy
//! of the case says should be there: a phantom structure in all three views, clicks linking the
//! views, overlay colour and opacity, window/level, a predicted mask, the worklist, and a bad
//! file giving a dialog while the app keeps running.

mod window;

use egui::{Event, Pos2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use glam::DVec3;
use mriloop::app::{Command, MriloopApp, Startup, ViewCell, ViewCommand};
use mriloop::project::{InputForm, Project, ReviewStatus};
use mriloop::render::Orientation;
use mriloop::volume::{write_volume, Volume};
use std::time::Duration;

const SIZE: [f32; 2] = [1280.0, 800.0];

fn harness(startup: Startup) -> Harness<'static, MriloopApp> {
    Harness::builder()
        .with_size(SIZE)
        .wgpu()
        .build_eframe(|cc| {
            let app = MriloopApp::new(cc, startup);
            // kittest clears to transparent, not to the app's clear colour: give the panels
            // back their fill so the pictures look as the window does.
            let fill = mriloop::app::background_colour(&cc.egui_ctx.global_style().visuals);
            cc.egui_ctx.all_styles_mut(|s| s.visuals.panel_fill = fill);
            app
        })
}

/// Step until the case is open and nothing is loading (background threads run meanwhile).
fn wait_open(h: &mut Harness<'_, MriloopApp>) {
    for _ in 0..2000 {
        h.step();
        let app = h.state();
        if app.open_case().is_some() && !app.is_loading() {
            h.step();
            h.step();
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("case did not open; error: {:?}", h.state().error());
}

fn demo() -> Harness<'static, MriloopApp> {
    let mut h = harness(Startup::Project(window::phantom_demo_dir()));
    wait_open(&mut h);
    h
}

fn apply(h: &mut Harness<'_, MriloopApp>, cmds: Vec<Command>) {
    for c in cmds {
        h.state_mut().push(c);
    }
    h.step();
    h.step();
}

fn cell(h: &Harness<'_, MriloopApp>, o: Orientation) -> ViewCell {
    h.state()
        .view_cells()
        .iter()
        .find(|c| c.orientation == o)
        .cloned()
        .expect("a view of this orientation")
}

fn pixel(img: &image::RgbaImage, p: Pos2) -> [u8; 3] {
    let px = img.get_pixel(p.x as u32, p.y as u32).0;
    [px[0], px[1], px[2]]
}

/// The voxel index nearest a world point, and whether it is clearly inside one voxel (not on a
/// face between two, where GPU and CPU rounding may differ).
fn voxel_of<T: Copy>(vol: &Volume<T>, pos_mm: DVec3) -> Option<([usize; 3], bool)> {
    let v = vol.affine().mm_to_vox(pos_mm)?;
    let r = v.round();
    if r.min_element() < 0.0 {
        return None;
    }
    let idx = [r.x as usize, r.y as usize, r.z as usize];
    vol.get(idx)?;
    let clear = (v - r).abs().max_element() < 0.4;
    Some((idx, clear))
}

/// Pixels of a view (every `step` points, off the crosshair lines) with the world point under each.
fn view_pixels(c: &ViewCell, cursor: DVec3, step: usize) -> Vec<(Pos2, DVec3)> {
    let cross = c.pos_of_mm(cursor);
    let mut out = Vec::new();
    let r = c.rect.shrink(2.0);
    let mut y = r.top().ceil() + 0.5;
    while y < r.bottom() {
        let mut x = r.left().ceil() + 0.5;
        while x < r.right() {
            let p = Pos2::new(x, y);
            if (p.x - cross.x).abs() > 2.0 && (p.y - cross.y).abs() > 2.0 {
                out.push((p, c.mm_at(p)));
            }
            x += step as f32;
        }
        y += step as f32;
    }
    out
}

/// A voxel of `label` whose 26 neighbours all have it too.
fn deep_voxel(mask: &Volume<u8>, label: u8) -> [usize; 3] {
    let [nx, ny, nz] = mask.dims3();
    for k in 1..nz - 1 {
        for j in 1..ny - 1 {
            for i in 1..nx - 1 {
                let all = (0..27).all(|n| {
                    let (a, b, c) = (i + n % 3 - 1, j + (n / 3) % 3 - 1, k + n / 9 - 1);
                    mask.get([a, b, c]) == Some(label)
                });
                if all {
                    return [i, j, k];
                }
            }
        }
    }
    panic!("no deep voxel of label {label}");
}

const TUMOUR: u8 = 5;

#[test]
fn demo_structure_appears_where_the_mask_says_in_all_three_views_and_opacity_zero_hides_it() {
    let mut h = demo();
    let (mask, affine, colour) = {
        let app = h.state();
        let open = app.open_case().unwrap();
        let mask = open
            .reference
            .clone()
            .expect("the demo has a reference mask");
        let colour = app.labels().get(TUMOUR).expect("tumour label").color;
        (mask, *open.layers[0].volume.affine(), colour)
    };
    let v = deep_voxel(&mask, TUMOUR);
    let at = affine.vox_to_mm(DVec3::new(v[0] as f64, v[1] as f64, v[2] as f64));
    apply(
        &mut h,
        vec![
            Command::View(ViewCommand::SetCursor(at)),
            Command::View(ViewCommand::SetReferenceOpacity(1.0)),
            Command::View(ViewCommand::SetReferenceOutline(false)),
        ],
    );
    let img = h.render().unwrap();
    for o in Orientation::ALL {
        let c = cell(&h, o);
        let (mut agree, mut total, mut coloured) = (0, 0, 0);
        for (p, mm) in view_pixels(&c, at, 1) {
            let Some((idx, true)) = voxel_of(&mask, mm) else {
                continue;
            };
            let is_tumour = mask.get(idx) == Some(TUMOUR);
            let shown = pixel(&img, p) == colour;
            total += 1;
            coloured += usize::from(is_tumour);
            agree += usize::from(is_tumour == shown);
        }
        assert!(
            coloured >= 20,
            "{o:?}: the tumour covers {coloured} sampled pixels"
        );
        assert!(
            agree as f64 >= 0.995 * total as f64,
            "{o:?}: {agree} of {total} pixels show the tumour colour exactly where the mask has it"
        );
        // Right next to the cursor (off the crosshair lines) is the tumour.
        let near = c.pos_of_mm(at) + egui::vec2(3.0, 3.0);
        assert_eq!(pixel(&img, near), colour, "{o:?}: tumour at the cursor");
    }
    apply(
        &mut h,
        vec![Command::View(ViewCommand::SetReferenceOpacity(0.0))],
    );
    let img = h.render().unwrap();
    for o in Orientation::ALL {
        let c = cell(&h, o);
        for (p, _) in view_pixels(&c, at, 2) {
            let [r, g, b] = pixel(&img, p);
            assert!(
                r == g && g == b,
                "{o:?}: opacity 0 leaves grey T1 at {p:?}, got {r},{g},{b}"
            );
        }
    }
}

#[test]
fn clicking_in_the_axial_view_moves_the_other_views() {
    let mut h = demo();
    let before = h.state().open_case().unwrap().viewer.cursor_mm;
    let axial = cell(&h, Orientation::Axial);
    let coronal_before = cell(&h, Orientation::Coronal).plane;
    let sagittal_before = cell(&h, Orientation::Sagittal).plane;
    let img_before = h.render().unwrap();
    // Click 12 mm to the screen right and 9 mm up of the current cursor.
    let target = axial.pos_of_mm(before + axial.plane.right * 12.0 + axial.plane.up * 9.0);
    let expected = axial.mm_at(target);
    h.event(Event::PointerMoved(target));
    h.event(Event::PointerButton {
        pos: target,
        button: egui::PointerButton::Primary,
        pressed: true,
        modifiers: Default::default(),
    });
    h.step();
    h.event(Event::PointerButton {
        pos: target,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: Default::default(),
    });
    h.step();
    h.step();
    let after = h.state().open_case().unwrap().viewer.cursor_mm;
    assert!(
        (after.x - expected.x).abs() < 0.5 && (after.y - expected.y).abs() < 0.5,
        "cursor moved to the clicked point: {after} vs {expected}"
    );
    assert!((after.z - before.z).abs() < 1e-9, "the axial slice stays");
    let coronal = cell(&h, Orientation::Coronal).plane;
    let sagittal = cell(&h, Orientation::Sagittal).plane;
    assert!(
        (coronal.centre_mm.y - after.y).abs() < 1e-6,
        "coronal slice follows A"
    );
    assert!(
        (sagittal.centre_mm.x - after.x).abs() < 1e-6,
        "sagittal slice follows R"
    );
    assert!((coronal.centre_mm.y - coronal_before.centre_mm.y).abs() > 3.0);
    assert!((sagittal.centre_mm.x - sagittal_before.centre_mm.x).abs() > 3.0);
    let img = h.render().unwrap();
    for o in [Orientation::Coronal, Orientation::Sagittal] {
        let c = cell(&h, o);
        let changed = view_pixels(&c, after, 3)
            .iter()
            .filter(|(p, _)| pixel(&img, *p) != pixel(&img_before, *p))
            .count();
        assert!(
            changed > 200,
            "{o:?}: the shown slice changed ({changed} pixels)"
        );
    }
}

#[test]
fn ctrl_wheel_zooms_about_the_pointer() {
    let mut h = demo();
    let axial = cell(&h, Orientation::Axial);
    let half_before = axial.plane.half_extent_mm[1];
    let c = axial.plane.centre_mm;
    let target = axial.pos_of_mm(c + axial.plane.right * 25.0 + axial.plane.up * 18.0);
    let under_before = axial.mm_at(target);
    h.event(Event::PointerMoved(target));
    h.step();
    h.event(Event::Zoom(2.0));
    h.step();
    h.step();
    let axial = cell(&h, Orientation::Axial);
    let under_after = axial.mm_at(target);
    assert!(
        (axial.plane.half_extent_mm[1] - half_before / 2.0).abs() < 1e-6,
        "zoomed in twice: {} mm → {} mm",
        half_before,
        axial.plane.half_extent_mm[1]
    );
    assert!(
        (under_after - under_before).length() < 0.5,
        "the point under the pointer stays: {under_before} → {under_after}"
    );
}

#[test]
fn window_level_maps_intensities_to_grey_levels() {
    let mut h = demo();
    apply(
        &mut h,
        vec![Command::View(ViewCommand::SetReferenceOpacity(0.0))],
    );
    let (t1, cursor) = {
        let open = h.state().open_case().unwrap();
        (open.layers[0].volume.clone(), open.viewer.cursor_mm)
    };
    for (lo, hi) in [(0.0f32, 1000.0f32), (200.0, 600.0), (400.0, 450.0)] {
        apply(
            &mut h,
            vec![Command::View(ViewCommand::SetWindow {
                seq: 0,
                low: lo,
                high: hi,
            })],
        );
        let img = h.render().unwrap();
        let c = cell(&h, Orientation::Axial);
        let mut checked = 0;
        for (p, mm) in view_pixels(&c, cursor, 5) {
            let Some((idx, true)) = voxel_of(&t1, mm) else {
                continue;
            };
            let v = t1.get(idx).unwrap();
            let expect = ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
            let got = pixel(&img, p)[0] as f32;
            assert!(
                (got - expect).abs() <= 3.0,
                "window {lo}..{hi}: T1 {v} at {p:?} → {got}, expected {expect:.1}"
            );
            checked += 1;
        }
        assert!(checked > 300, "checked {checked} pixels");
    }
}

#[test]
fn demo_snapshot() {
    let mut h = demo();
    for _ in 0..500 {
        if !h.state().stats().is_empty() {
            break;
        }
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
    h.snapshot("demo_review");
}

/// A 3-case phantom project where case 1 has a predicted mask (the reference with one slab
/// removed) and predicted class probabilities.
fn project_with_prediction(dir: &std::path::Path) -> (Project, f64) {
    let cfg = mriloop::phantom::PhantomConfig {
        cases: 3,
        seed: 11,
        form: InputForm::Volume3d,
        grid: 32,
        frames: 1,
        ..Default::default()
    };
    let mut p = mriloop::phantom::generate_project(dir, &cfg, |_, _| {}).unwrap();
    let case = p.manifest.cases[1].clone();
    let reference = p.load_reference_mask(&case).unwrap().unwrap();
    let mut predicted = reference.clone();
    let [nx, ny, _] = predicted.dims3();
    let data = predicted.data_mut();
    let slab = nx * ny;
    let mut removed = 0usize;
    let first = data.iter().position(|v| *v > 0).unwrap() / slab;
    for v in &mut data[first * slab..(first + 3) * slab] {
        removed += usize::from(*v > 0);
        *v = 0;
    }
    let n_ref = reference.data().iter().filter(|v| **v > 0).count();
    let dice = 2.0 * (n_ref - removed) as f64 / (2 * n_ref - removed) as f64;
    write_volume(&dir.join("cases/pred_1.nii.gz"), &predicted).unwrap();
    p.manifest.cases[1].predicted_mask = Some("cases/pred_1.nii.gz".into());
    p.manifest.cases[1].predicted_class = Some(vec![0.2, 0.8]);
    p.manifest.cases[0].review = ReviewStatus::Reviewed;
    p.save().unwrap();
    (p, dice)
}

#[test]
fn worklist_dice_next_unreviewed_and_predicted_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    let (project, dice) = project_with_prediction(&root);
    let mut h = harness(Startup::Project(root.clone()));
    wait_open(&mut h);
    // Case 0 is reviewed: the first unreviewed case (1) opens.
    assert_eq!(h.state().open_case().unwrap().case_index, Some(1));
    for _ in 0..1000 {
        if h.state().stats().len() == 3 {
            break;
        }
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = h.state().stats().clone();
    let got = stats[&project.manifest.cases[1].id].dice.unwrap();
    assert!((got - dice).abs() < 1e-9, "worklist Dice {got} vs {dice}");
    assert!(stats[&project.manifest.cases[0].id].dice.is_none());
    assert!(stats[&project.manifest.cases[2].id].volume_mm3.unwrap() > 0.0);
    // The predicted mask is drawn (as an outline) where it differs from the image.
    apply(
        &mut h,
        vec![
            Command::View(ViewCommand::SetReferenceOpacity(0.0)),
            Command::View(ViewCommand::SetPredictedOpacity(1.0)),
        ],
    );
    let (pred, colours) = {
        let app = h.state();
        let open = app.open_case().unwrap();
        let colours: Vec<[u8; 3]> = app.labels().labels().iter().map(|l| l.color).collect();
        (open.predicted.clone().unwrap(), colours)
    };
    let v = (1..=255u8).find(|l| pred.data().contains(l)).unwrap();
    let at = {
        let idx = pred.data().iter().position(|x| *x == v).unwrap();
        let [nx, ny, _] = pred.dims3();
        let ijk = DVec3::new(
            (idx % nx) as f64,
            ((idx / nx) % ny) as f64,
            (idx / (nx * ny)) as f64,
        );
        pred.affine().vox_to_mm(ijk)
    };
    apply(&mut h, vec![Command::View(ViewCommand::SetCursor(at))]);
    let img = h.render().unwrap();
    let c = cell(&h, Orientation::Axial);
    let outlined = view_pixels(&c, at, 1)
        .iter()
        .filter(|(p, _)| colours.contains(&pixel(&img, *p)))
        .count();
    assert!(
        outlined > 0,
        "the predicted outline is drawn in a label colour"
    );
    // N opens the next unreviewed case (2), Shift+N goes back to 1.
    h.key_press(egui::Key::N);
    wait_open(&mut h);
    assert_eq!(h.state().open_case().unwrap().case_index, Some(2));
    h.key_press_modifiers(egui::Modifiers::SHIFT, egui::Key::N);
    wait_open(&mut h);
    assert_eq!(h.state().open_case().unwrap().case_index, Some(1));
}

#[test]
fn a_bad_file_shows_a_dialog_naming_it_and_the_case_stays_open() {
    let mut h = demo();
    let bad = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/malformed/truncated_data.nii");
    assert!(bad.exists(), "{} is in the corpus", bad.display());
    apply(
        &mut h,
        vec![Command::OpenFiles {
            images: vec![bad.clone()],
            mask: None,
        }],
    );
    for _ in 0..500 {
        h.step();
        if h.state().error().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = h.state().error().expect("an error dialog").to_string();
    assert!(e.contains("truncated_data.nii"), "names the file: {e}");
    assert!(h.state().open_case().is_some(), "the demo case stays open");
    h.step();
    let ok = h.get_by_label("OK");
    ok.click();
    h.step();
    h.step();
    assert!(h.state().error().is_none(), "OK closes the dialog");
}

#[test]
fn a_single_slice_case_opens_in_one_large_view() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mriloop::phantom::PhantomConfig {
        cases: 2,
        seed: 3,
        form: InputForm::Slice2d,
        grid: 32,
        ..Default::default()
    };
    let p = mriloop::phantom::generate_project(&dir.path().join("p2d"), &cfg, |_, _| {}).unwrap();
    let mut h = window::open_project(p.root(), [1280.0, 800.0]);
    h.step();
    let (layout, cells) = {
        let app = h.state();
        (
            app.open_case().unwrap().viewer.layout,
            app.view_cells().to_vec(),
        )
    };
    assert!(
        matches!(layout, mriloop::app::Layout::Single(_)),
        "{layout:?}"
    );
    assert_eq!(cells.len(), 1, "one view, not three with two empty");
    let c = &cells[0];
    // The whole central area (between the worklist and the side panel) is that view.
    assert!(
        c.rect.width() > 400.0 && c.rect.height() > 700.0,
        "{:?}",
        c.rect
    );
    // The slice fills the view: most of its pixels show the image (not the empty background),
    // with grey levels that vary.
    let img = h.render().unwrap();
    let (mut shown, mut total) = (0, 0);
    let mut levels = std::collections::BTreeSet::new();
    let mut y = c.rect.top() + 4.0;
    while y < c.rect.bottom() - 4.0 {
        let mut x = c.rect.left() + 4.0;
        while x < c.rect.right() - 4.0 {
            let [r, g, b] = pixel(&img, Pos2::new(x, y));
            total += 1;
            if r.max(g).max(b) > 20 {
                shown += 1;
                levels.insert(r);
            }
            x += 7.0;
        }
        y += 7.0;
    }
    assert!(
        shown * 3 > total,
        "{shown} of {total} sampled pixels show the slice"
    );
    assert!(levels.len() > 20, "{} grey levels", levels.len());
}

#[test]
fn a_stack_of_2d_images_opens_in_one_view_and_a_volume_goes_back_to_three() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mriloop::phantom::PhantomConfig {
        cases: 2,
        seed: 6,
        grid: 16,
        ..Default::default()
    };
    let mut p =
        mriloop::phantom::generate_project(&dir.path().join("stack"), &cfg, |_, _| {}).unwrap();
    // The second case's image is declared a stack of 2D images (the 2D form, 16 of them).
    p.manifest.cases[1].form = InputForm::Slice2d;
    p.save().unwrap();
    let mut h = window::open_project(p.root(), [1280.0, 800.0]);
    let open_case = |h: &mut Harness<'_, MriloopApp>, i: usize| {
        h.state_mut().push(Command::OpenCase(i));
        let id = h.state().project().unwrap().manifest.cases[i].id.clone();
        assert!(window::step_until(h, |a| a
            .open_case()
            .is_some_and(|o| o.case_id == id)
            && !a.is_loading()));
        h.step();
        h.step();
    };
    open_case(&mut h, 1);
    let (layout, cells, k_axis) = {
        let app = h.state();
        let o = app.open_case().unwrap();
        let a = *o.layers[0].volume.affine();
        (
            o.viewer.layout,
            app.view_cells().len(),
            a.linear().col(2).normalize(),
        )
    };
    let mriloop::app::Layout::Single(orientation) = layout else {
        panic!("a stack opens in one view, not {layout:?}");
    };
    assert_eq!(cells, 1);
    // The view faces the stack: its normal is the third voxel axis, so paging steps images.
    assert!(orientation.axes().2.dot(k_axis).abs() > 0.7);
    let before = h.state().open_case().unwrap().viewer.cursor_mm;
    h.state_mut()
        .push(Command::View(ViewCommand::StepSlice(orientation, 1)));
    h.step();
    let after = h.state().open_case().unwrap().viewer.cursor_mm;
    let step = h.state().open_case().unwrap().layers[0].volume.spacing_mm()[2];
    assert!(((after - before).length() - step).abs() < 0.05 * step);
    // A volume case after it opens tri-planar again.
    open_case(&mut h, 0);
    assert_eq!(
        h.state().open_case().unwrap().viewer.layout,
        mriloop::app::Layout::TriPlanar
    );
    assert_eq!(h.state().view_cells().len(), 3);
}

#[test]
fn paging_one_view_re_renders_only_that_view_and_moves_the_others_crosshair() {
    let mut h = demo();
    let counts = |h: &mut Harness<'_, MriloopApp>| {
        h.render().unwrap();
        let app = h.state();
        [
            Orientation::Axial,
            Orientation::Coronal,
            Orientation::Sagittal,
        ]
        .map(|o| app.view_renders(cell(h, o).slot))
    };
    let first = counts(&mut h);
    assert!(first.iter().all(|n| *n >= 1), "{first:?}");
    // Nothing changed: every view comes from its cache.
    assert_eq!(counts(&mut h), first);
    // Paging the axial view: only it is sampled again; the other two keep their planes.
    apply(
        &mut h,
        vec![Command::View(ViewCommand::StepSlice(Orientation::Axial, 3))],
    );
    let paged = counts(&mut h);
    assert!(paged[0] > first[0], "{paged:?} vs {first:?}");
    assert_eq!(&paged[1..], &first[1..]);
    // ... and their crosshair follows the cursor: green on the row of the new slice.
    let img = h.render().unwrap();
    let cursor = h.state().open_case().unwrap().viewer.cursor_mm;
    for o in [Orientation::Coronal, Orientation::Sagittal] {
        let c = cell(&h, o);
        let p = c.pos_of_mm(cursor + c.plane.right * 5.0);
        let [r, g, b] = pixel(&img, p);
        assert!(
            g > r.saturating_add(60) && g > b.saturating_add(60),
            "{o:?}: {r} {g} {b}"
        );
    }
    // Switching to trilinear sampling re-renders every view.
    apply(&mut h, vec![Command::View(ViewCommand::SetLinear(true))]);
    let restyled = counts(&mut h);
    assert!(
        restyled.iter().zip(&paged).all(|(a, b)| a > b),
        "{restyled:?}"
    );
}

#[test]
fn an_untouched_window_settles_and_requests_no_repaint() {
    let mut h = demo();
    // Let the background work end (worklist statistics, the loader's last wake-ups).
    let cases = h.state().project().unwrap().manifest.cases.len();
    let settled = window::step_until(&mut h, |a| a.stats().len() == cases);
    assert!(settled, "statistics never came");
    for _ in 0..50 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Now nothing is going on: one more frame asks for no further frame at all.
    h.step();
    let delay = h.output().viewport_output[&egui::ViewportId::ROOT].repaint_delay;
    assert_eq!(
        delay,
        Duration::MAX,
        "the idle window asked for a repaint: {:?}",
        h.ctx.repaint_causes()
    );
    assert!(
        !h.ctx.has_requested_repaint(),
        "{:?}",
        h.ctx.repaint_causes()
    );
}
