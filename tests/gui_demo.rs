//! The built-in demo in the window, headless (egui_kittest through wgpu on lavapipe): it opens
//! real anatomy (a Colin27-derived subject) with the shipped automatic model's prediction drawn
//! where the prediction says, and a click with the Prompt tool — the shipped promptable model,
//! found in the project with no setup — segments a tumour the mask no longer holds, drawn in
//! its colour; Ctrl+Z restores the mask bit for bit.

mod window;

use egui::{Event, Modifiers, Pos2};
use egui_kittest::Harness;
use mriloop::app::{Command, EditCommand, MriloopApp, Tool, ViewCommand};
use mriloop::volume::Volume;
use window::{axial, mask_of, mask_of_app};

const TUMOUR: u8 = 5;

fn px(img: &image::RgbaImage, p: Pos2) -> [u8; 3] {
    let v = img.get_pixel(p.x as u32, p.y as u32).0;
    [v[0], v[1], v[2]]
}

/// The place of the centre of the largest region of `label` in `mask`.
fn deepest(mask: &Volume<u8>, label: u8) -> glam::DVec3 {
    window::largest_region_centre(mask, label).2
}

fn render_axial_at(h: &mut Harness<'_, MriloopApp>, cmds: Vec<ViewCommand>) -> [u8; 3] {
    for c in cmds {
        h.state_mut().push(Command::View(c));
    }
    h.step();
    h.step();
    let img = h.render().unwrap();
    let cell = axial(h);
    let at = h.state().open_case().unwrap().viewer.cursor_mm;
    // Beside the cursor, off the crosshair lines.
    px(&img, cell.pos_of_mm(at) + egui::vec2(3.0, 3.0))
}

/// Pixels of the axial view drawn exactly in `colour`.
fn axial_pixels_of(h: &mut Harness<'_, MriloopApp>, colour: [u8; 3]) -> usize {
    h.step();
    let img = h.render().unwrap();
    let r = axial(h).rect;
    let (x0, y0, x1, y1) = (
        r.min.x as u32,
        r.min.y as u32,
        r.max.x as u32,
        r.max.y as u32,
    );
    (y0..y1.min(img.height()))
        .flat_map(|y| (x0..x1.min(img.width())).map(move |x| (x, y)))
        .filter(|(x, y)| px(&img, Pos2::new(*x as f32, *y as f32)) == colour)
        .count()
}

#[test]
fn the_demo_opens_real_anatomy_with_its_prediction_and_a_prompt_segments_a_tumour() {
    let dir = tempfile::tempdir().unwrap();
    let root = mriloop::app::demo_project_copy(&dir.path().join("demo")).unwrap();
    let mut h = window::open_project(&root, [1280.0, 800.0]);
    let open = h.state().open_case().unwrap();
    assert!(open.case_id.starts_with("colin27"), "{}", open.case_id);
    let predicted = open
        .predicted
        .clone()
        .expect("the demo opens with a prediction");
    let names = h
        .state()
        .project()
        .unwrap()
        .manifest
        .labels
        .names_by_value();
    let thalamus = names.iter().position(|n| n == "thalamus_L").unwrap() as u8;
    let colour = h.state().labels().get(thalamus).unwrap().color;
    // The prediction is drawn where it says: the left thalamus's colour deep inside it with the
    // prediction shown (the reference hidden), grey T1 with it hidden.
    let at = deepest(&predicted, thalamus);
    let shown = render_axial_at(
        &mut h,
        vec![
            ViewCommand::SetCursor(at),
            ViewCommand::SetReferenceOpacity(0.0),
            ViewCommand::SetPredictedOpacity(1.0),
        ],
    );
    assert_eq!(shown, colour, "the predicted thalamus in its colour");
    let hidden = render_axial_at(&mut h, vec![ViewCommand::SetPredictedOpacity(0.0)]);
    assert!(
        hidden[0] == hidden[1] && hidden[1] == hidden[2],
        "grey T1 there without the prediction: {hidden:?}"
    );
    prompt_segments_the_erased_tumour(&mut h);
}

/// The tumour erased from the mask; one click on its middle with the Prompt tool segments it
/// again (Dice against the reference ≥ 0.3 — the shipped promptable model is small and was
/// trained for 20 minutes on a CPU — drawn in its colour); Ctrl+Z restores the mask.
fn prompt_segments_the_erased_tumour(h: &mut Harness<'static, MriloopApp>) {
    let truth = h.state().open_case().unwrap().reference.clone().unwrap();
    let at = deepest(&truth, TUMOUR);
    for c in [
        EditCommand::SetLabel(TUMOUR),
        EditCommand::Replace(TUMOUR, 0),
        EditCommand::SetTool(Tool::Prompt),
    ] {
        h.state_mut().push(Command::Edit(c));
    }
    render_axial_at(
        h,
        vec![
            ViewCommand::SetCursor(at),
            ViewCommand::SetReferenceOpacity(1.0),
            ViewCommand::SetReferenceOutline(false),
        ],
    );
    let colour = h.state().labels().get(TUMOUR).unwrap().color;
    assert_eq!(axial_pixels_of(h, colour), 0, "no tumour drawn once erased");
    let erased = mask_of(h);
    assert!(!erased.contains(&TUMOUR));
    assert_eq!(h.state().tools().tool, Tool::Prompt);
    let pos = axial(h).pos_of_mm(at);
    h.event(Event::PointerMoved(pos));
    h.step();
    for pressed in [true, false] {
        h.event(Event::PointerButton {
            pos,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        });
        h.step();
    }
    let answered = |a: &MriloopApp| !a.session().prompts().busy() && mask_of_app(a) != erased;
    assert!(window::step_until(h, answered), "{:?}", h.state().error());
    let after = mask_of(h);
    let is = |m: &[u8], i: usize| m[i] == TUMOUR;
    let both = (0..after.len())
        .filter(|i| is(&after, *i) && is(truth.data(), *i))
        .count();
    let sum = (0..after.len()).filter(|i| is(&after, *i)).count()
        + (0..after.len()).filter(|i| is(truth.data(), *i)).count();
    let dice = 2.0 * both as f64 / sum.max(1) as f64;
    eprintln!("demo: tumour Dice 0.000 -> {dice:.3} after one click");
    assert!(dice >= 0.3, "tumour Dice after one click: {dice}");
    // The prompt's marker cleared and the pointer moved off the view: the answer is drawn.
    h.state_mut().push(Command::Edit(EditCommand::ClearPrompts));
    h.event(Event::PointerMoved(Pos2::new(5.0, 5.0)));
    let drawn = axial_pixels_of(h, colour);
    eprintln!("demo: {drawn} axial pixels in the tumour's colour after the click");
    assert!(
        drawn >= 20,
        "the segmented tumour is drawn in its colour: {drawn} pixels"
    );
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    h.step();
    h.step();
    assert_eq!(mask_of(h), erased, "undo restores the mask bit-for-bit");
    assert_eq!(axial_pixels_of(h, colour), 0, "and the view");
}
