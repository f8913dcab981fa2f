//! The 3D view's cell in the central area: the label surfaces drawn by a paint callback from
//! the view's cached image, the cursor marked where it projects, and its mouse input — a left
//! drag turns the view, a middle (or Shift+left) drag pans it, the wheel zooms, a click on a
//! surface moves the shared cursor to the surface point, a double click maximises it, and a
//! right click opens the standard directions and the PNG export.
//!
//! Invariants: reads the open case and emits commands only (the camera lives in the viewer
//! state, changed through the session); an untouched view queues the same callback every frame,
//! which draws the cached image without re-rendering it.

use super::bridge::View3dCallback;
use super::ViewCell;
use super::{Command, MriloopApp};
use crate::render::{OrbitCamera, PlaneQuad};
use crate::session::{Direction3d, OpenCase, ViewCommand};
use egui::{Color32, Pos2, Rect, Sense, Vec2};
use std::path::PathBuf;

/// Degrees the view turns per point dragged.
const DEG_PER_POINT: f64 = 0.5;

/// The 3D view as drawn in a frame: where it is on screen and its camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View3dCell {
    /// The image area in points.
    pub rect: Rect,
    /// The camera it was drawn through.
    pub camera: OrbitCamera,
}

impl View3dCell {
    /// The screen position (points) of a world point, if it is in front of the camera.
    pub fn pos_of_mm(&self, pos_mm: glam::DVec3) -> Option<Pos2> {
        screen_pos(&self.camera, self.rect, pos_mm)
    }
}

/// Draw the 3D view into `outer` (header line included) and turn its input into commands;
/// returns where it was drawn.
pub fn cell(
    ui: &mut egui::Ui,
    app: &MriloopApp,
    outer: Rect,
    slices: &[ViewCell],
    out: &mut Vec<Command>,
) -> Option<View3dCell> {
    let open = app.open_case()?;
    let header = 16.0;
    let rect = Rect::from_min_max(outer.min + Vec2::new(0.0, header), outer.max);
    if rect.width() < 4.0 || rect.height() < 4.0 {
        return None;
    }
    ui.painter().text(
        outer.min + Vec2::new(4.0, 1.0),
        egui::Align2::LEFT_TOP,
        "3D · drag: turn · wheel: zoom · right click: menu",
        egui::FontId::proportional(12.0),
        Color32::from_gray(200),
    );
    let aspect = rect.width() / rect.height();
    let camera = open.viewer.orbit_camera(aspect as f64);
    let ppp = ui.ctx().pixels_per_point();
    let size_px = [rect.width(), rect.height()].map(|v| (v * ppp).round().max(1.0) as u32);
    ui.painter().add(egui_wgpu::Callback::new_paint_callback(
        rect,
        View3dCallback {
            generation: app.gpu_generation(),
            camera,
            size_px,
            planes: planes(open, slices),
        },
    ));
    cursor_marker(ui, open, &camera, rect);
    let resp = ui.interact(rect, ui.scope_id().with("view3d"), Sense::click_and_drag());
    pointer_input(ui, app, open, &camera, rect, &resp, out);
    resp.context_menu(|ui| context_menu(ui, open, aspect, out));
    Some(View3dCell { rect, camera })
}

/// The slice planes the 3D view shows (when they are on): the first view of each orientation
/// drawn this frame, clipped to the case's world box.
fn planes(open: &OpenCase, slices: &[ViewCell]) -> Vec<(usize, PlaneQuad)> {
    if !open.viewer.camera3d.planes {
        return Vec::new();
    }
    let b = &open.viewer.world_box;
    let mut out: Vec<(usize, PlaneQuad)> = Vec::new();
    for o in crate::render::Orientation::ALL {
        if let Some(c) = slices.iter().find(|c| c.orientation == o) {
            let p = &c.plane;
            let quad = PlaneQuad::clipped(
                (p.centre_mm, p.right, p.up, p.half_extent_mm),
                (b.min_mm, b.max_mm),
            );
            out.push((c.slot, quad));
        }
    }
    out
}

/// The screen position of a world point in the view, if it is in front of the camera.
fn screen_pos(camera: &OrbitCamera, rect: Rect, pos_mm: glam::DVec3) -> Option<Pos2> {
    let clip = camera.view_proj(rect.width() / rect.height()) * pos_mm.as_vec3().extend(1.0);
    if clip.w <= 0.0 {
        return None;
    }
    let ndc = clip.truncate() / clip.w;
    Some(Pos2::new(
        rect.left() + (ndc.x + 1.0) * 0.5 * rect.width(),
        rect.top() + (1.0 - ndc.y) * 0.5 * rect.height(),
    ))
}

/// A small cross where the shared cursor projects.
fn cursor_marker(ui: &egui::Ui, open: &OpenCase, camera: &OrbitCamera, rect: Rect) {
    let Some(p) = screen_pos(camera, rect, open.viewer.cursor_mm) else {
        return;
    };
    if !rect.contains(p) {
        return;
    }
    let stroke = egui::Stroke::new(1.5, Color32::from_rgb(255, 220, 0));
    let r = 6.0;
    ui.painter()
        .line_segment([p - Vec2::new(r, 0.0), p + Vec2::new(r, 0.0)], stroke);
    ui.painter()
        .line_segment([p - Vec2::new(0.0, r), p + Vec2::new(0.0, r)], stroke);
}

/// Drags, wheel, clicks and double clicks over the view.
fn pointer_input(
    ui: &egui::Ui,
    app: &MriloopApp,
    open: &OpenCase,
    camera: &OrbitCamera,
    rect: Rect,
    resp: &egui::Response,
    out: &mut Vec<Command>,
) {
    let shift = ui.input(|i| i.modifiers.shift);
    let delta = resp.drag_delta();
    let pan = resp.dragged_by(egui::PointerButton::Middle)
        || (shift && resp.dragged_by(egui::PointerButton::Primary));
    if pan && delta != Vec2::ZERO {
        let mm_per_point = 2.0 * camera.half_height_mm as f64 / rect.height() as f64;
        out.push(Command::View(ViewCommand::Pan3d([
            -delta.x as f64 * mm_per_point,
            delta.y as f64 * mm_per_point,
        ])));
    } else if resp.dragged_by(egui::PointerButton::Primary) && delta != Vec2::ZERO {
        out.push(Command::View(ViewCommand::Orbit3d([
            -delta.x as f64 * DEG_PER_POINT,
            delta.y as f64 * DEG_PER_POINT,
        ])));
    }
    if resp.double_clicked() {
        let maximised = open.viewer.camera3d.maximised;
        out.push(Command::View(ViewCommand::Maximise3d(!maximised)));
    } else if resp.clicked() {
        if let Some(at) = resp
            .interact_pointer_pos()
            .and_then(|p| pick(app, camera, rect, p))
        {
            out.push(Command::View(ViewCommand::SetCursor(at)));
        }
    }
    if resp.hovered() {
        wheel_input(ui, out);
    }
}

/// The wheel (and a pinch) zooms the hovered view.
fn wheel_input(ui: &egui::Ui, out: &mut Vec<Command>) {
    let (notches, zoom) = ui.input(|i| {
        let notches: f32 = i
            .events
            .iter()
            .filter_map(|e| match e {
                egui::Event::MouseWheel {
                    delta, modifiers, ..
                } if !modifiers.ctrl && !modifiers.command => Some(delta.y.signum()),
                _ => None,
            })
            .sum();
        (notches, i.zoom_delta())
    });
    let factor = 1.15f64.powf(notches as f64) * zoom as f64;
    if (factor - 1.0).abs() > 1e-4 {
        out.push(Command::View(ViewCommand::Zoom3d(factor)));
    }
}

/// The surface point under `pos`: the first voxel of a shown label of the mask (the prediction
/// when there is no mask) along the viewing ray.
fn pick(app: &MriloopApp, camera: &OrbitCamera, rect: Rect, pos: Pos2) -> Option<glam::DVec3> {
    let open = app.open_case()?;
    let mask = open.reference.as_ref().or(open.predicted.as_ref())?;
    let ndc = [
        (pos.x - rect.left()) / rect.width() * 2.0 - 1.0,
        1.0 - (pos.y - rect.top()) / rect.height() * 2.0,
    ];
    let (origin, dir) = camera.ray(ndc, rect.width() / rect.height())?;
    let colours = app.session.overlay_colours();
    crate::volume::pick::first_labelled_along(mask, origin.as_dvec3(), dir.as_dvec3(), |label| {
        colours[label as usize][3] > 0
    })
}

/// The right-click menu: look from a standard direction, maximise, save as PNG.
fn context_menu(ui: &mut egui::Ui, open: &OpenCase, aspect: f32, out: &mut Vec<Command>) {
    direction_buttons(ui, out);
    ui.separator();
    let maximised = open.viewer.camera3d.maximised;
    let label = if maximised { "Restore" } else { "Maximise" };
    if ui.button(label).clicked() {
        out.push(Command::View(ViewCommand::Maximise3d(!maximised)));
        ui.close();
    }
    let planes = open.viewer.camera3d.planes;
    if ui.selectable_label(planes, "Slice planes").clicked() {
        out.push(Command::View(ViewCommand::Planes3d(!planes)));
        ui.close();
    }
    if ui.button("Save as PNG…").clicked() {
        out.push(Command::Save3dPngDialog(aspect));
        ui.close();
    }
}

/// One button per standard direction ("Look from …").
pub fn direction_buttons(ui: &mut egui::Ui, out: &mut Vec<Command>) {
    for d in Direction3d::ALL {
        if ui.button(format!("Look from {}", d.name())).clicked() {
            out.push(Command::View(ViewCommand::Look3d(d)));
            ui.close();
        }
    }
}

impl MriloopApp {
    /// Ask where to save the 3D view (`aspect` wide for its height) as PNG.
    pub(super) fn ask_save_3d_png(&mut self, aspect: f32) {
        let name = self
            .open_case()
            .map(|o| format!("{}_3d.png", o.case_id))
            .unwrap_or_else(|| "view3d.png".into());
        self.ask(move || {
            let path = rfd::FileDialog::new()
                .set_title("Save the 3D view as PNG")
                .add_filter("PNG", &["png"])
                .set_file_name(name)
                .save_file()?;
            Some(Command::Save3dPng(path, aspect))
        });
    }

    /// Render the 3D view as it is now, `aspect` wide and `SNAPSHOT_PX` pixels high, and save
    /// it as PNG at `path` (rendered here, encoded and written atomically by a worker).
    pub(super) fn save_3d_png(&mut self, path: PathBuf, aspect: f32) {
        let (Some(open), Some(rs)) = (self.session.open_case(), self.render_state.as_ref()) else {
            return;
        };
        let aspect = if aspect.is_finite() {
            aspect.clamp(0.1, 10.0)
        } else {
            1.0
        };
        let camera = open.viewer.orbit_camera(aspect as f64);
        let size = [(SNAPSHOT_PX as f32 * aspect).round() as u32, SNAPSHOT_PX];
        let planes = planes(open, &self.cells);
        let pixels = super::bridge::ViewerGpu::snapshot_3d_in(rs, &camera, size, &planes);
        self.ask(move || {
            let written = pixels
                .map_err(|e| e.to_string())
                .and_then(|rgba| crate::render::rgba_png(rgba, size))
                .and_then(|png| {
                    crate::atomic::write_atomic(&path, &png).map_err(|e| e.to_string())
                });
            written.err().map(|e| {
                Command::Error(format!(
                    "Saving the 3D view to {} failed: {e}",
                    path.display()
                ))
            })
        });
    }
}

/// Pixels high of a saved 3D view.
const SNAPSHOT_PX: u32 = 1024;
