//! The 3D view in the window, headless (egui_kittest through wgpu on lavapipe), orthographic:
//! a ball mask shows as a disc of its radius (± 2 px) in its label's colour from three
//! directions, a click on it moves the cursor to its surface, the axial slice plane shows its
//! image, a brush stroke's surface appears within the next frames and undo removes it, and an
//! untouched view is not rendered again.

mod window;

use egui::{Event, Modifiers, Pos2};
use egui_kittest::Harness;
use glam::DVec3;
use mriloop::app::{Command, EditCommand, MriloopApp, Startup, Tool, View3dCell, ViewCommand};
use mriloop::session::Direction3d;
use mriloop::volume::surface::LabelSurfaces;
use mriloop::volume::{write_volume, Affine, Volume};
use std::path::Path;

/// Voxels a side of the ball case, its spacing and the ball's radius in voxels.
const N: usize = 48;
const SPACING_MM: f64 = 0.9;
const BALL_VOX: f64 = 11.0;

fn ball_centre_vox() -> DVec3 {
    DVec3::splat(N as f64 / 2.0 - 0.5)
}

/// A noise image and a mask with a ball of label 1, as loose files opened in the window.
fn open_ball(dir: &Path) -> (Harness<'static, MriloopApp>, Vec<u8>) {
    let affine = Affine::from_spacing([SPACING_MM; 3]);
    let n3 = N * N * N;
    let image: Vec<f32> = (0..n3).map(|i| ((i * 7919) % 97) as f32).collect();
    let mask: Vec<u8> = (0..n3)
        .map(|i| {
            let p = DVec3::new((i % N) as f64, ((i / N) % N) as f64, (i / (N * N)) as f64);
            u8::from((p - ball_centre_vox()).length() <= BALL_VOX)
        })
        .collect();
    let (t1, labels) = (dir.join("T1.nii.gz"), dir.join("labels.nii.gz"));
    write_volume(&t1, &Volume::new([N, N, N, 1], affine, image).unwrap()).unwrap();
    write_volume(
        &labels,
        &Volume::new([N, N, N, 1], affine, mask.clone()).unwrap(),
    )
    .unwrap();
    let loose_root = dir.join("unsaved");
    let mut h = Harness::builder()
        .with_size([900.0, 700.0])
        .wgpu()
        .build_eframe(move |cc| {
            let startup = Startup::Files {
                images: vec![t1],
                mask: Some(labels),
            };
            MriloopApp::with_loose_root(cc, startup, loose_root)
        });
    let open = window::step_until(&mut h, |a| a.open_case().is_some() && !a.is_loading());
    assert!(open, "{:?}", h.state().error());
    (h, mask)
}

fn cell3d(h: &Harness<'_, MriloopApp>) -> View3dCell {
    *h.state().view3d_cell().expect("the 3D view is drawn")
}

fn label_colour(h: &Harness<'_, MriloopApp>, label: u8) -> [u8; 3] {
    h.state()
        .labels()
        .get(label)
        .map(|l| l.color)
        .unwrap_or_else(|| mriloop::project::default_color(label))
}

fn px(img: &image::RgbaImage, p: Pos2) -> [u8; 3] {
    let v = img.get_pixel(p.x as u32, p.y as u32).0;
    [v[0], v[1], v[2]]
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    (0..3).all(|k| a[k].abs_diff(b[k]) <= tol)
}

fn send(h: &mut Harness<'_, MriloopApp>, cmd: ViewCommand) {
    h.state_mut().push(Command::View(cmd));
    h.step();
    h.step();
}

#[test]
fn a_ball_shows_as_a_disc_of_its_radius_from_three_directions_and_a_click_lands_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, mask) = open_ball(dir.path());
    send(&mut h, ViewCommand::Maximise3d(true));
    let affine = Affine::from_spacing([SPACING_MM; 3]);
    let mesh = LabelSurfaces::new(&mask, [N; 3], affine).mesh(1);
    let (lo, hi) = mesh.bounds_mm().unwrap();
    let radius_mm = (0..3).map(|a| (hi[a] - lo[a]) / 2.0).sum::<f32>() / 3.0;
    let centre_mm = affine.vox_to_mm(ball_centre_vox());
    let colour = label_colour(&h, 1);
    for d in [
        Direction3d::Anterior,
        Direction3d::Left,
        Direction3d::Superior,
    ] {
        send(&mut h, ViewCommand::Look3d(d));
        let cell = cell3d(&h);
        let img = h.render().unwrap();
        let r = cell.rect;
        let mut lit = Vec::new();
        for y in r.top().ceil() as u32..r.bottom().floor() as u32 {
            for x in r.left().ceil() as u32..r.right().floor() as u32 {
                let p = img.get_pixel(x, y).0;
                // Background is near black; the lit ball's darkest shade is 30 % of its colour.
                if p[..3].iter().any(|c| *c > 40) {
                    lit.push(Pos2::new(x as f32, y as f32));
                }
            }
        }
        let px_per_mm = r.height() / (2.0 * cell.camera.half_height_mm);
        let radius_px = (lit.len() as f32 / std::f32::consts::PI).sqrt();
        assert!(
            (radius_px - radius_mm * px_per_mm).abs() <= 2.0,
            "{d:?}: disc radius {radius_px} px, expected {}",
            radius_mm * px_per_mm
        );
        let centre = cell.pos_of_mm(centre_mm).unwrap();
        let mean = lit.iter().fold(egui::Vec2::ZERO, |a, p| a + p.to_vec2()) / lit.len() as f32;
        assert!(
            (mean - centre.to_vec2()).length() < 1.5,
            "{d:?}: {mean:?} vs {centre:?}"
        );
        // Beside the cursor's cross, still facing the light.
        let facing = centre + egui::vec2(9.0, 9.0);
        assert!(
            close(px(&img, facing), colour, 8),
            "{d:?}: the ball's middle shows {:?}, its label's colour is {colour:?}",
            px(&img, facing)
        );
    }
    // A click on the disc's middle from above moves the cursor to the ball's top.
    let centre = cell3d(&h).pos_of_mm(centre_mm).unwrap();
    window::button(&h, centre, true);
    h.step();
    window::button(&h, centre, false);
    h.step();
    h.step();
    let cursor = h.state().open_case().unwrap().viewer.cursor_mm;
    let top = centre_mm + DVec3::Z * (BALL_VOX + 0.5) * SPACING_MM;
    assert!(
        (cursor - top).length() < SPACING_MM,
        "the cursor went to {cursor:?}, the ball's top is at {top:?}"
    );
    // Saved as PNG (1024 px high, as wide as asked): the ball in the middle in its colour.
    let png = dir.path().join("view.png");
    h.state_mut().push(Command::Save3dPng(png.clone(), 1.5));
    let saved = window::step_until(&mut h, |_| png.exists());
    assert!(saved, "{:?}", h.state().error());
    let img = image::open(&png).unwrap().to_rgba8();
    assert_eq!(img.dimensions(), (1536, 1024));
    assert!(close(px(&img, Pos2::new(768.0, 512.0)), colour, 8));
}

/// Drag the brush on the axial view from `a` to `b` (world mm).
fn brush_stroke(h: &mut Harness<'_, MriloopApp>, a_mm: DVec3, b_mm: DVec3) {
    let cell = window::axial(h);
    let (a, b) = (cell.pos_of_mm(a_mm), cell.pos_of_mm(b_mm));
    h.event(Event::PointerMoved(a));
    window::button(h, a, true);
    h.step();
    for k in 1..=4 {
        h.event(Event::PointerMoved(a.lerp(b, k as f32 / 4.0)));
        h.step();
    }
    window::button(h, b, false);
    h.step();
    h.event(Event::PointerGone);
    h.step();
    h.step();
}

#[test]
fn a_brush_strokes_surface_appears_undo_removes_it_and_an_idle_view_is_not_rerendered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _) = open_ball(dir.path());
    send(&mut h, ViewCommand::Look3d(Direction3d::Superior));
    h.state_mut()
        .push(Command::Edit(EditCommand::SetTool(Tool::Brush)));
    h.state_mut()
        .push(Command::Edit(EditCommand::SetRadius(2.0)));
    h.step();
    // The axial slice plane shows its image in 3D beside the ball (noise, not the background).
    let centre_mm = Affine::from_spacing([SPACING_MM; 3]).vox_to_mm(ball_centre_vox());
    let img = h.render().unwrap();
    let beside = cell3d(&h)
        .pos_of_mm(centre_mm + DVec3::new(-15.0, 15.0, 0.0))
        .unwrap();
    let brightest = (0..25)
        .map(|k| px(&img, beside + egui::vec2((k % 5) as f32, (k / 5) as f32)))
        .map(|p| p.into_iter().max().unwrap_or(0))
        .max();
    assert!(brightest > Some(40), "no slice image in 3D: {brightest:?}");
    // The ball's upper half stands out of the plane through its middle, its near side lit in
    // its colour (were the wrong faces culled, only its far side, under the plane, would be).
    let middle = cell3d(&h).pos_of_mm(centre_mm).unwrap() + egui::vec2(4.0, 4.0);
    let colour = label_colour(&h, 1);
    assert!(close(px(&img, middle), colour, 8), "{:?}", px(&img, middle));
    // From here on, the surfaces alone.
    send(&mut h, ViewCommand::Planes3d(false));
    // Idle frames draw the cached image without rendering it again.
    let before = h.render().unwrap();
    let renders = h.state().view3d_renders();
    assert!(renders >= 1);
    for _ in 0..3 {
        h.step();
        h.render().unwrap();
    }
    assert_eq!(
        h.state().view3d_renders(),
        renders,
        "an idle 3D view re-renders"
    );
    // A stroke in the ball's axial slice, 5 mm outside the ball, seen from above.
    send(&mut h, ViewCommand::SetCursor(centre_mm));
    let off = (BALL_VOX * SPACING_MM) + 5.0;
    let (a, b) = (
        centre_mm + DVec3::new(off, -3.0, 0.0),
        centre_mm + DVec3::new(off, 3.0, 0.0),
    );
    brush_stroke(&mut h, a, b);
    let at = cell3d(&h).pos_of_mm(a.lerp(b, 0.5)).unwrap();
    let after = h.render().unwrap();
    assert!(h.state().view3d_renders() > renders);
    assert!(
        !close(px(&before, at), colour, 40),
        "nothing of the label there before: {:?}",
        px(&before, at)
    );
    assert!(
        close(px(&after, at), colour, 8),
        "the stroke's surface shows {:?} in 3D, its label's colour is {colour:?}",
        px(&after, at)
    );
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    h.step();
    h.step();
    let undone = h.render().unwrap();
    assert_eq!(px(&undone, at), px(&before, at), "undo removes the surface");
}
