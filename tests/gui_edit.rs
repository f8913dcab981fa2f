//! Correcting in the window, headless (egui_kittest through wgpu on lavapipe): painting with the
//! mouse changes the mask and the pixels, Ctrl+Z restores both, a class key updates the
//! worklist, edits reach the journal and a save writes the mask and empties it; reopening after
//! an unsaved session recovers the edits and says so; closing with unsaved edits of loose files
//! asks, and Discard leaves the user's file as it was while Save writes it.

mod window;

use egui::{Event, Modifiers, Pos2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use mriloop::app::{Command, EditCommand, MriloopApp, Tool, ViewCommand};
use mriloop::project::journal;
use mriloop::render::Orientation;
use std::path::Path;
use std::time::Duration;
use window::{axial, button, mask_of};

fn demo_copy(dir: &Path) -> std::path::PathBuf {
    window::phantom_demo_copy(dir)
}

fn open(root: &Path) -> Harness<'static, MriloopApp> {
    let mut h = window::open_project(root, [1280.0, 800.0]);
    h.step();
    h
}

fn px(img: &image::RgbaImage, p: Pos2) -> [u8; 3] {
    let v = img.get_pixel(p.x as u32, p.y as u32).0;
    [v[0], v[1], v[2]]
}

#[test]
fn painting_changes_mask_and_pixels_and_ctrl_z_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = demo_copy(dir.path());
    let mut h = open(&root);
    h.state_mut()
        .push(Command::View(ViewCommand::SetReferenceOpacity(1.0)));
    h.step();
    h.key_press(egui::Key::B);
    h.step();
    h.step();
    assert_eq!(h.state().tools().tool, Tool::Brush);
    assert_eq!(
        h.state()
            .open_case()
            .unwrap()
            .viewer
            .overlay
            .reference_opacity,
        1.0
    );
    let colour = h.state().labels().get(1).unwrap().color;
    let before_mask = mask_of(&h);
    let before_img = h.render().unwrap();
    let cell = axial(&h);
    let cursor = h.state().open_case().unwrap().viewer.cursor_mm;
    // A short drag 10–14 mm to the screen right of the cursor, inside the head.
    let a = cell.pos_of_mm(cursor + cell.plane.right * 10.0 + cell.plane.up * 6.0);
    let b = cell.pos_of_mm(cursor + cell.plane.right * 14.0 + cell.plane.up * 6.0);
    h.event(Event::PointerMoved(a));
    button(&h, a, true);
    h.step();
    for k in 1..=4 {
        h.event(Event::PointerMoved(a.lerp(b, k as f32 / 4.0)));
        h.step();
    }
    button(&h, b, false);
    h.step();
    // Move the pointer away so the brush outline is not drawn over the pixels checked.
    h.event(Event::PointerGone);
    h.step();
    h.step();
    let after_mask = mask_of(&h);
    let painted = after_mask
        .iter()
        .zip(&before_mask)
        .filter(|(x, y)| x != y)
        .count();
    assert!(painted > 20, "the drag painted {painted} voxels");
    let app = h.state();
    let open = app.open_case().unwrap();
    assert_eq!(open.edits.undo.undo_depth(), 1, "one drag is one undo step");
    let mid = a.lerp(b, 0.5) + egui::vec2(0.0, 1.0);
    let img = h.render().unwrap();
    assert_eq!(px(&img, mid), colour, "the painted label shows on screen");
    assert_ne!(px(&before_img, mid), colour);
    // The edit is in the journal (written off the UI thread; wait for that thread).
    let jpath = journal::journal_path(h.state().project().unwrap(), "phantom_000");
    h.state().session().flush();
    assert_eq!(journal::read_journal(&jpath).unwrap().edits.len(), 1);
    // Ctrl+Z restores mask and pixels.
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    h.step();
    h.step();
    assert_eq!(
        mask_of(&h),
        before_mask,
        "undo restores the mask bit-for-bit"
    );
    let img = h.render().unwrap();
    assert_eq!(px(&img, mid), px(&before_img, mid), "and the pixels");
    // Ctrl+Y redoes it.
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Y);
    h.step();
    h.step();
    assert_eq!(mask_of(&h), after_mask);
}

#[test]
fn a_class_key_updates_the_worklist_and_a_save_writes_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = demo_copy(dir.path());
    let mut h = open(&root);
    assert!(h.query_by_label("patient / —").is_some());
    h.key_press(egui::Key::Num1);
    h.step();
    h.step();
    h.step();
    let case = &h.state().project().unwrap().manifest.cases[0];
    assert_eq!(case.class_label.as_deref(), Some("control"));
    assert!(
        h.query_by_label("control / —").is_some(),
        "the worklist shows the new class"
    );
    h.key_press(egui::Key::R);
    h.step();
    h.step();
    // Paint with a command (3D brush), then save.
    let c = h.state().open_case().unwrap().viewer.cursor_mm;
    for cmd in [
        EditCommand::SetTool(Tool::Brush),
        EditCommand::Set3d(true),
        EditCommand::SetLabel(3),
        EditCommand::SetRadius(2.0),
        EditCommand::Dab(Orientation::Axial, c),
        EditCommand::EndStroke,
        EditCommand::Save,
    ] {
        h.state_mut().push(Command::Edit(cmd));
    }
    h.step();
    h.step();
    let mask = h.state().open_case().unwrap().reference.clone().unwrap();
    let jpath = journal::journal_path(h.state().project().unwrap(), "phantom_000");
    for _ in 0..300 {
        h.state().session().flush();
        if !jpath.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        h.step();
    }
    assert!(!jpath.exists(), "the save emptied the journal");
    let p = mriloop::project::Project::open(&root).unwrap();
    let saved = p
        .load_reference_mask(&p.manifest.cases[0])
        .unwrap()
        .unwrap();
    assert_eq!(
        saved.data(),
        mask.data(),
        "the mask on disk is the edited one"
    );
    assert_eq!(saved.affine(), mask.affine());
    assert_eq!(p.manifest.cases[0].class_label.as_deref(), Some("control"));
    assert_eq!(p.manifest.cases[0].review.as_str(), "reviewed");
}

#[test]
fn unsaved_edits_are_recovered_when_the_case_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = demo_copy(dir.path());
    let edited = {
        let mut h = open(&root);
        let c = h.state().open_case().unwrap().viewer.cursor_mm;
        for cmd in [
            EditCommand::SetTool(Tool::Brush),
            EditCommand::Set3d(true),
            EditCommand::SetRadius(3.0),
            EditCommand::Dab(Orientation::Axial, c),
            EditCommand::EndStroke,
            EditCommand::SetNote("left Hb unclear".into()),
            EditCommand::RenameLabel(1, "Hb_left".into()),
        ] {
            h.state_mut().push(Command::Edit(cmd));
        }
        h.step();
        h.step();
        let jpath = journal::journal_path(h.state().project().unwrap(), "phantom_000");
        h.state().session().flush();
        assert_eq!(journal::read_journal(&jpath).unwrap().edits.len(), 3);
        let m = h.state().open_case().unwrap().reference.clone().unwrap();
        // The harness is dropped without saving, as a crash would leave it.
        std::mem::forget(h);
        m
    };
    let h = open(&root);
    let app = h.state();
    let info = app.info().expect("the user is told what was recovered");
    assert!(info.contains("recovered 3 unsaved edits"), "{info}");
    assert_eq!(
        app.open_case().unwrap().reference.as_ref().unwrap().data(),
        edited.data()
    );
    assert_eq!(
        app.project().unwrap().manifest.cases[0].note,
        "left Hb unclear"
    );
}

/// The window on loose copies of the demo's T1 and labels, working copies under `dir/unsaved`.
fn open_loose(dir: &Path) -> (Harness<'static, MriloopApp>, std::path::PathBuf) {
    let shipped = window::phantom_demo_dir().join("cases/phantom_000");
    let (t1, labels) = (dir.join("T1.nii.gz"), dir.join("labels.nii.gz"));
    std::fs::copy(shipped.join("T1.nii.gz"), &t1).unwrap();
    std::fs::copy(shipped.join("reference.nii.gz"), &labels).unwrap();
    let (mask, loose_root) = (labels.clone(), dir.join("unsaved"));
    let mut h = Harness::builder()
        .with_size([1280.0, 800.0])
        .wgpu()
        .build_eframe(move |cc| {
            let startup = mriloop::app::Startup::Files {
                images: vec![t1],
                mask: Some(mask),
            };
            MriloopApp::with_loose_root(cc, startup, loose_root)
        });
    let open = window::step_until(&mut h, |a| a.open_case().is_some() && !a.is_loading());
    assert!(open, "{:?}", h.state().error());
    (h, labels)
}

/// Paint one dab at the cursor and ask the window to close.
fn paint_and_close(h: &mut Harness<'static, MriloopApp>) {
    let at = h.state().open_case().unwrap().viewer.cursor_mm;
    for e in [
        EditCommand::SetTool(Tool::Brush),
        EditCommand::Dab(Orientation::Axial, at),
        EditCommand::EndStroke,
    ] {
        h.state_mut().push(Command::Edit(e));
    }
    h.step();
    assert!(h.state().session().has_unsaved_loose_edits());
    h.input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    h.step();
    h.step();
    assert!(h.state().is_confirming_close(), "closing did not ask");
}

#[test]
fn closing_with_unsaved_loose_edits_asks_and_discard_leaves_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, labels) = open_loose(dir.path());
    let original = std::fs::read(&labels).unwrap();
    paint_and_close(&mut h);
    h.get_by_label("Discard and close").click();
    h.step();
    h.step();
    assert!(!h.state().is_confirming_close());
    assert!(!h.state().session().has_unsaved_loose_edits());
    // The working copy is removed by a worker; the user's file was never written.
    let gone = window::step_until(&mut h, |_| {
        std::fs::read_dir(dir.path().join("unsaved")).map_or(true, |d| {
            d.flatten()
                .all(|e| !e.path().join("edits.journal").exists())
        })
    });
    assert!(gone, "the working copy's journal is still there");
    assert_eq!(std::fs::read(&labels).unwrap(), original);
}

#[test]
fn closing_with_unsaved_loose_edits_and_saving_writes_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, labels) = open_loose(dir.path());
    let original = std::fs::read(&labels).unwrap();
    paint_and_close(&mut h);
    let edited = mask_of(&h);
    h.get_by_label("Save and close").click();
    h.step();
    let saved = window::step_until(&mut h, |_| std::fs::read(&labels).unwrap() != original);
    assert!(saved, "Save and close did not write the user's file");
    assert_eq!(
        mriloop::app::read_mask(&labels).unwrap().data(),
        &edited[..]
    );
}

/// The committed small promptable model (see its README for the command that regenerates it).
fn prompt_model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/prompt_phantom")
}

/// Dice of `label` between two masks, over the voxels within `margin` of the box of `region`.
fn dice_near(a: &[u8], b: &[u8], dims: [usize; 3], region: &[usize], label: u8) -> f64 {
    let at = |i: usize| {
        [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ]
    };
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for v in region.iter().map(|i| at(*i)) {
        for x in 0..3 {
            lo[x] = lo[x].min(v[x]);
            hi[x] = hi[x].max(v[x]);
        }
    }
    let (mut both, mut sum) = (0usize, 0usize);
    for i in 0..a.len() {
        let v = at(i);
        if (0..3).all(|x| v[x] + 6 >= lo[x] && v[x] <= hi[x] + 6) {
            let (p, q) = (a[i] == label, b[i] == label);
            both += usize::from(p && q);
            sum += usize::from(p) + usize::from(q);
        }
    }
    2.0 * both as f64 / sum.max(1) as f64
}

/// A primary (or secondary) click at `pos`.
fn click(h: &mut Harness<'_, MriloopApp>, pos: Pos2, secondary: bool) {
    let b = match secondary {
        true => egui::PointerButton::Secondary,
        false => egui::PointerButton::Primary,
    };
    h.event(Event::PointerMoved(pos));
    h.step();
    for pressed in [true, false] {
        h.event(Event::PointerButton {
            pos,
            button: b,
            pressed,
            modifiers: Modifiers::NONE,
        });
        h.step();
    }
}

#[test]
fn a_prompt_click_segments_a_lesion_an_exclude_click_removes_a_false_one_and_ctrl_z_undoes() {
    let dir = tempfile::tempdir().unwrap();
    let root = demo_copy(dir.path());
    let mut h = open(&root);
    let truth = mask_of(&h);
    let mask = h.state().open_case().unwrap().reference.clone().unwrap();
    let dims = mask.dims3();
    // The largest lesion (label 3), and its voxel with the most lesion around it.
    let (lesion, _, centre_mm) = window::largest_region_centre(&mask, 3);
    let at = |i: usize| {
        [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ]
    };
    // The lesions are erased first: the prompt must find this one.
    let push =
        |h: &mut Harness<'_, MriloopApp>, c: EditCommand| h.state_mut().push(Command::Edit(c));
    push(&mut h, EditCommand::SetLabel(3));
    push(&mut h, EditCommand::Replace(3, 0));
    push(
        &mut h,
        EditCommand::UsePromptModel(Some(prompt_model_dir())),
    );
    h.state_mut()
        .push(Command::View(ViewCommand::SetCursor(centre_mm)));
    h.step();
    h.key_press(egui::Key::T);
    h.step();
    assert_eq!(h.state().tools().tool, Tool::Prompt);
    let before = mask_of(&h);
    let dice_before = dice_near(&truth, &before, dims, &lesion, 3);
    assert_eq!(dice_before, 0.0);
    // The prompt's worker is held mid-job: the window keeps handling input (a slice step).
    let gate = h.state().session().prompts().gate();
    gate.hold();
    let cell = axial(&h);
    click(&mut h, cell.pos_of_mm(centre_mm), false);
    assert!(window::step_until(&mut h, |a| a
        .session()
        .prompts()
        .awaiting_answer()));
    let (cursor, renders) = (
        h.state().open_case().unwrap().viewer.cursor_mm,
        h.state().view_renders(cell.slot),
    );
    h.key_press(egui::Key::ArrowUp);
    h.step();
    h.render().unwrap();
    let moved = h.state().open_case().unwrap().viewer.cursor_mm;
    assert!(
        (moved - cursor).length() > 0.1,
        "the slice step was handled"
    );
    assert!(h.state().view_renders(cell.slot) > renders, "and drawn");
    assert!(h.state().session().prompts().awaiting_answer());
    h.key_press(egui::Key::ArrowDown);
    h.step();
    gate.release();
    assert!(window::step_until(&mut h, |a| !a
        .session()
        .prompts()
        .busy()));
    let after = mask_of(&h);
    let dice = dice_near(&truth, &after, dims, &lesion, 3);
    eprintln!("lesion Dice {dice_before:.3} -> {dice:.3} after one click");
    assert!(
        dice >= 0.7 && dice > dice_before,
        "lesion Dice {dice_before} -> {dice}"
    );
    // A false region: a 3D brush dab of label 3 where there is no label.
    let clear = |v: [usize; 3]| {
        (0..truth.len()).step_by(1).all(|i| {
            let w = at(i);
            (0..3).any(|x| w[x].abs_diff(v[x]) > 6) || truth[i] == 0
        })
    };
    let blob = [[12i64, 0], [-12, 0], [0, 12], [0, -12]]
        .iter()
        .map(|[r, u]| centre_mm + cell.plane.right * *r as f64 + cell.plane.up * *u as f64)
        .find(|p| {
            let v = mask.affine().mm_to_vox(*p).unwrap().round();
            v.min_element() >= 6.0
                && (0..3).all(|x| v[x] as usize + 6 < dims[x])
                && clear([v.x as usize, v.y as usize, v.z as usize])
        })
        .expect("a clear spot near the lesion");
    for c in [
        EditCommand::SetTool(Tool::Brush),
        EditCommand::Set3d(true),
        EditCommand::SetRadius(2.0),
        EditCommand::Dab(Orientation::Axial, blob),
        EditCommand::EndStroke,
        EditCommand::SetTool(Tool::Prompt),
    ] {
        push(&mut h, c);
    }
    h.state_mut()
        .push(Command::View(ViewCommand::SetCursor(blob)));
    h.step();
    h.step();
    let painted = mask_of(&h);
    let false_voxels: Vec<usize> = (0..painted.len())
        .filter(|i| painted[*i] == 3 && after[*i] != 3)
        .collect();
    assert!(false_voxels.len() > 10, "{}", false_voxels.len());
    // A right click on it: off the object.
    let cell = axial(&h);
    click(&mut h, cell.pos_of_mm(blob), true);
    assert!(window::step_until(&mut h, |a| !a
        .session()
        .prompts()
        .busy()));
    let excluded = mask_of(&h);
    let left = false_voxels.iter().filter(|i| excluded[**i] == 3).count();
    eprintln!(
        "exclude click: {left} of {} false voxels left",
        false_voxels.len()
    );
    assert!(
        left * 5 <= false_voxels.len(),
        "{left} of {} false voxels left",
        false_voxels.len()
    );
    // Ctrl+Z undoes the prompt's step: the mask is the painted one, bit for bit.
    h.event(Event::PointerMoved(cell.pos_of_mm(blob)));
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    h.step();
    h.step();
    assert_eq!(mask_of(&h), painted, "undo restores the mask bit-for-bit");
    // Both answered prompts are in the case's prompt log, kept for fine-tuning.
    let log_path = root.join(mriloop::project::prompt_log::prompt_log_rel("phantom_000"));
    let mut records = Vec::new();
    for _ in 0..200 {
        records = mriloop::project::prompt_log::read_prompt_log(&log_path)
            .unwrap()
            .records;
        if records.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].prompts.len(), 2);
    assert!(!records[1].prompts[1].include());
}
