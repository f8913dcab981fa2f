//! The central area: a grid of slice views (one row per shown sequence in the tri-planar
//! layout, one column per sequence in the single-view layout). Each view is drawn by a paint
//! callback and turns pointer input into commands: left click/drag moves the cursor, right drag
//! changes window/level, middle drag pans, wheel steps slices (Ctrl+wheel zooms about the
//! pointer), arrow keys and Page Up/Down step the hovered view.

use super::bridge::SliceCallback;
use super::view3d::View3dCell;
use super::{Command, EditCommand, Layout, MriloopApp, OpenCase, Tool, ToolState, ViewerState};
use crate::render::{BlendStyle, Orientation, SlicePlane, SliceStyle, ViewKey};
use crate::session::ViewCommand;
use egui::{Color32, Pos2, Rect, Sense, Vec2};

/// One view drawn in a frame: where it is on screen and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewCell {
    /// The image area in points.
    pub rect: Rect,
    /// Its orientation.
    pub orientation: Orientation,
    /// The sequence shown (index into the case's sequences).
    pub seq: usize,
    /// The world plane shown.
    pub plane: SlicePlane,
    /// Its draw slot (its cached slice image on the GPU).
    pub slot: usize,
}

impl ViewCell {
    /// The screen position (points) of a world point projected onto the view.
    pub fn pos_of_mm(&self, pos_mm: glam::DVec3) -> Pos2 {
        let n = self.plane.mm_to_ndc(pos_mm);
        Pos2::new(
            self.rect.left() + ((n[0] + 1.0) * 0.5) as f32 * self.rect.width(),
            self.rect.top() + ((1.0 - n[1]) * 0.5) as f32 * self.rect.height(),
        )
    }

    /// The world position (mm) under a screen position.
    pub fn mm_at(&self, pos: Pos2) -> glam::DVec3 {
        let x = (pos.x - self.rect.left()) / self.rect.width() * 2.0 - 1.0;
        let y = 1.0 - (pos.y - self.rect.top()) / self.rect.height() * 2.0;
        self.plane.ndc_to_mm([x as f64, y as f64])
    }
}

fn orientation_name(o: Orientation) -> &'static str {
    match o {
        Orientation::Axial => "axial",
        Orientation::Coronal => "coronal",
        Orientation::Sagittal => "sagittal",
    }
}

/// Draw the central area; returns the slice views and the 3D view drawn.
pub fn central(
    ui: &mut egui::Ui,
    app: &MriloopApp,
    out: &mut Vec<Command>,
) -> (Vec<ViewCell>, Option<View3dCell>) {
    let mut cells = Vec::new();
    let mut cell3d = None;
    // The panel colour, which the window draws as its clear colour (no egui fill: a software
    // rasteriser pays for every pixel egui fills; see `MriloopApp::new`).
    egui::CentralPanel::default()
        .frame(egui::Frame::NONE.fill(ui.visuals().panel_fill))
        .show(ui, |ui| {
            let Some(open) = app.open_case() else {
                ui.centered_and_justified(|ui| {
                    if app.is_loading() {
                        ui.spinner();
                    } else {
                        ui.label("File > Open a project or NIfTI files");
                    }
                });
                return;
            };
            let v = &open.viewer;
            let area = ui.available_rect_before_wrap();
            if v.camera3d.maximised {
                cell3d = super::view3d::cell(ui, app, area.shrink(1.0), &[], out);
                return;
            }
            let (rows, cols, grid) = view_grid(v);
            let (area, rect3d) = place_3d(v, area, rows * cols > grid.len(), [rows, cols]);
            let cell_size = Vec2::new(area.width() / cols as f32, area.height() / rows as f32);
            let header = 16.0;
            for (slot, (o, seq)) in grid.into_iter().enumerate() {
                let (r, c) = (slot / cols, slot % cols);
                let outer = Rect::from_min_size(
                    area.min + Vec2::new(c as f32 * cell_size.x, r as f32 * cell_size.y),
                    cell_size,
                )
                .shrink(1.0);
                let rect = Rect::from_min_max(outer.min + Vec2::new(0.0, header), outer.max);
                if rect.width() < 4.0 || rect.height() < 4.0 {
                    continue;
                }
                let plane = v.plane(o, (rect.width() / rect.height()) as f64);
                let cell = ViewCell {
                    rect,
                    orientation: o,
                    seq,
                    plane,
                    slot,
                };
                view_header(ui, open, o, seq, outer);
                draw_view(ui, app, &cell, slot);
                interact(ui, app, &cell, slot, out);
                cells.push(cell);
            }
            // After the slice views: the 3D view shows their images of this frame.
            if let Some(r) = rect3d {
                cell3d = super::view3d::cell(ui, app, r, &cells, out);
            }
        });
    (cells, cell3d)
}

/// Where the 3D view goes in `area` for a grid of `rows` × `cols` slice views: the free corner
/// of the 2×2 layout, else (when shown) one more column's width at the right. Returns the area
/// left to the slice views and the 3D view's cell.
fn place_3d(
    v: &ViewerState,
    area: Rect,
    two_by_two: bool,
    [rows, cols]: [usize; 2],
) -> (Rect, Option<Rect>) {
    if two_by_two {
        let cell_size = Vec2::new(area.width() / cols as f32, area.height() / rows as f32);
        let corner_min = area.min
            + Vec2::new(
                (cols - 1) as f32 * cell_size.x,
                (rows - 1) as f32 * cell_size.y,
            );
        let corner = Rect::from_min_size(corner_min, cell_size);
        return (area, Some(corner.shrink(1.0)));
    }
    if !v.camera3d.shown {
        return (area, None);
    }
    let width = area.width() / (cols + 1) as f32;
    let side = Rect::from_min_max(Pos2::new(area.max.x - width, area.min.y), area.max);
    let rest = Rect::from_min_max(area.min, Pos2::new(side.min.x, area.max.y));
    (rest, Some(side.shrink(1.0)))
}

/// The layout's grid: rows, columns and the (orientation, sequence) of each view in reading
/// order.
fn view_grid(v: &ViewerState) -> (usize, usize, Vec<(Orientation, usize)>) {
    // One sequence: the classic 2×2 (axial, sagittal / coronal, 3D); several:
    // one row of three views per sequence; a single orientation: one column each.
    match v.layout {
        Layout::TriPlanar if v.shown.len() == 1 => (
            2,
            2,
            [
                Orientation::Axial,
                Orientation::Sagittal,
                Orientation::Coronal,
            ]
            .map(|o| (o, v.shown[0]))
            .to_vec(),
        ),
        Layout::TriPlanar => (
            v.shown.len(),
            3,
            v.shown
                .iter()
                .flat_map(|s| Orientation::ALL.map(|o| (o, *s)))
                .collect(),
        ),
        Layout::Single(o) => (1, v.shown.len(), v.shown.iter().map(|s| (o, *s)).collect()),
    }
}

/// A view's header line above its image: orientation, sequence and the slice's position.
fn view_header(ui: &egui::Ui, open: &OpenCase, o: Orientation, seq: usize, outer: Rect) {
    let name = open
        .layers
        .get(seq)
        .map(|i| i.name.to_string())
        .unwrap_or_default();
    let a = o.normal_axis();
    ui.painter().text(
        outer.min + Vec2::new(4.0, 1.0),
        egui::Align2::LEFT_TOP,
        format!(
            "{} · {name} · {}={:.1} mm",
            orientation_name(o),
            ["R", "A", "S"][a],
            open.viewer.cursor_mm[a]
        ),
        egui::FontId::proportional(12.0),
        Color32::from_gray(200),
    );
}

/// Queue the paint callback that draws a view's slice image with its overlays.
fn draw_view(ui: &egui::Ui, app: &MriloopApp, cell: &ViewCell, slot: usize) {
    let Some(open) = app.open_case() else { return };
    let v = &open.viewer;
    let Some(layer) = open.layers.get(cell.seq) else {
        return;
    };
    let d = &layer.display;
    let blend = v.blend.filter(|(b, _)| *b != cell.seq);
    let style = SliceStyle {
        window_low: d.window_low,
        window_high: d.window_high,
        colormap: d.colormap,
        linear: v.linear,
        reference_opacity: v.overlay.reference_opacity,
        reference_outline: v.overlay.reference_outline,
        predicted_opacity: v.overlay.predicted_opacity,
        crosshair_mm: Some(v.cursor_mm),
        blend: blend.and_then(|(b, opacity)| {
            open.layers.get(b).map(|l| &l.display).map(|bd| BlendStyle {
                window_low: bd.window_low,
                window_high: bd.window_high,
                colormap: bd.colormap,
                opacity,
                clip_below: bd.transparent_below_window,
            })
        }),
    };
    let ppp = ui.ctx().pixels_per_point();
    let viewport_px = [cell.rect.width() * ppp, cell.rect.height() * ppp];
    let grids = crate::render::ViewGrids {
        image: layer.grid,
        blend: blend.and_then(|(b, _)| open.layers.get(b).map(|l| l.grid)),
        labels: open.labels_grid,
        has_reference: open.reference.is_some(),
        has_predicted: open.predicted.is_some(),
    };
    let uniform = crate::render::SliceUniform::for_view(&cell.plane, &style, viewport_px, &grids);
    let Some(uniform) = uniform else { return };
    ui.painter().add(egui_wgpu::Callback::new_paint_callback(
        cell.rect,
        SliceCallback {
            generation: app.gpu_generation(),
            slot,
            key: ViewKey {
                base: cell.seq,
                blend: blend.map(|(b, _)| b),
                linear: v.linear,
            },
            uniform,
        },
    ));
}

/// Turn pointer and key input over a view into commands, and draw the brush outline and the
/// polygon so far.
fn interact(
    ui: &mut egui::Ui,
    app: &MriloopApp,
    cell: &ViewCell,
    slot: usize,
    out: &mut Vec<Command>,
) {
    let Some(open) = app.open_case() else { return };
    let id = ui.scope_id().with(("view", slot));
    let resp = ui.interact(cell.rect, id, Sense::click_and_drag());
    let (pointer_down, released) =
        ui.input(|i| (i.pointer.primary_down(), i.pointer.primary_released()));
    let tool = app.tools().tool;
    let pressed_here = resp.is_pointer_button_down_on() && pointer_down;
    if let Some(pos) = resp.interact_pointer_pos() {
        tool_input(&resp, tool, cell, cell.mm_at(pos), pressed_here, out);
    }
    if released && matches!(tool, Tool::Brush | Tool::Eraser) {
        out.push(Command::Edit(EditCommand::EndStroke));
    }
    let mm_per_point = 2.0 * cell.plane.half_extent_mm[0] / cell.rect.width() as f64;
    tool_overlay(ui, app.tools(), cell, &resp, mm_per_point);
    prompt_markers(ui, app.prompt_markers(), cell, open);
    drag_input(open, cell, &resp, mm_per_point, out);
    if resp.hovered() {
        let about_mm = resp.hover_pos().map_or([0.0; 2], |p| {
            let d = cell.mm_at(p) - cell.plane.centre_mm;
            [d.dot(cell.plane.right), d.dot(cell.plane.up)]
        });
        hover_input(ui, cell.orientation, about_mm, out);
    }
}

/// The active tool's command for the primary button at world point `at`.
fn tool_input(
    resp: &egui::Response,
    tool: Tool,
    cell: &ViewCell,
    at: glam::DVec3,
    pressed_here: bool,
    out: &mut Vec<Command>,
) {
    let o = cell.orientation;
    match tool {
        Tool::Navigate => {
            if pressed_here || resp.clicked() {
                out.push(Command::View(ViewCommand::SetCursor(at)));
            }
        }
        Tool::Brush | Tool::Eraser => {
            if pressed_here {
                out.push(Command::Edit(EditCommand::Dab(o, at)));
            }
        }
        Tool::Fill => {
            if resp.clicked() {
                out.push(Command::Edit(EditCommand::Fill(o, at, cell.seq)));
            }
        }
        Tool::Polygon => {
            if resp.double_clicked() {
                out.push(Command::Edit(EditCommand::ClosePolygon));
            } else if resp.clicked() {
                out.push(Command::Edit(EditCommand::PolygonPoint(o, at)));
            }
        }
        Tool::Prompt => prompt_input(resp, o, at, out),
    }
}

/// The Prompt tool: a click is a point on the object (Shift+click or a right click: off it);
/// a drag spans a box (or paints a scribble in scribble mode).
fn prompt_input(
    resp: &egui::Response,
    o: crate::render::Orientation,
    at: glam::DVec3,
    out: &mut Vec<Command>,
) {
    use crate::project::prompt_log::PromptMm;
    let shift = resp.ctx.input(|i| i.modifiers.shift);
    let point = |include| {
        Command::Edit(EditCommand::Prompt(PromptMm::Point {
            pos_mm: at.to_array(),
            include,
        }))
    };
    if resp.clicked() {
        out.push(point(!shift));
    } else if resp.secondary_clicked() {
        out.push(point(false));
    } else if resp.dragged_by(egui::PointerButton::Primary) {
        out.push(Command::Edit(EditCommand::PromptDrag(o, at, !shift)));
    } else if resp.drag_stopped_by(egui::PointerButton::Primary) {
        out.push(Command::Edit(EditCommand::PromptDrag(o, at, !shift)));
        out.push(Command::Edit(EditCommand::EndPromptDrag));
    }
}

/// Brush outline under the pointer; polygon so far.
fn tool_overlay(
    ui: &egui::Ui,
    tools: &ToolState,
    cell: &ViewCell,
    resp: &egui::Response,
    mm_per_point: f64,
) {
    let tool = tools.tool;
    if let (Some(pos), true) = (resp.hover_pos(), matches!(tool, Tool::Brush | Tool::Eraser)) {
        let r = (tools.radius_mm / mm_per_point) as f32;
        ui.painter().with_clip_rect(cell.rect).circle_stroke(
            pos,
            r.max(1.0),
            egui::Stroke::new(1.0, Color32::from_rgb(255, 220, 80)),
        );
    }
    if tool == Tool::Prompt && tools.prompt_drag_view == Some(cell.orientation) {
        prompt_drag_overlay(ui, tools, cell);
    }
    if tool == Tool::Polygon
        && tools.polygon_view == Some(cell.orientation)
        && !tools.polygon.is_empty()
    {
        let pts: Vec<Pos2> = tools
            .polygon
            .iter()
            .map(|p| cell.pos_of_mm(*p))
            .chain(resp.hover_pos())
            .collect();
        ui.painter()
            .with_clip_rect(cell.rect)
            .add(egui::Shape::line(
                pts,
                egui::Stroke::new(1.5, Color32::from_rgb(255, 220, 80)),
            ));
    }
}

/// The Prompt tool's drag in progress: the box it spans, or the scribble so far.
fn prompt_drag_overlay(ui: &egui::Ui, tools: &ToolState, cell: &ViewCell) {
    let (Some(first), Some(last)) = (tools.prompt_drag.first(), tools.prompt_drag.last()) else {
        return;
    };
    let painter = ui.painter().with_clip_rect(cell.rect);
    let stroke = egui::Stroke::new(1.5, prompt_colour(tools.prompt_drag_include));
    if tools.prompt_scribble {
        let pts = tools
            .prompt_drag
            .iter()
            .map(|p| cell.pos_of_mm(*p))
            .collect();
        painter.add(egui::Shape::line(pts, stroke));
    } else {
        let rect = egui::Rect::from_two_pos(cell.pos_of_mm(*first), cell.pos_of_mm(*last));
        painter.rect_stroke(rect, 0.0, stroke, egui::StrokeKind::Middle);
    }
}

/// Green on the object, red off it.
fn prompt_colour(include: bool) -> Color32 {
    match include {
        true => Color32::from_rgb(60, 220, 90),
        false => Color32::from_rgb(230, 60, 60),
    }
}

/// The prompts near the view's slice (within a voxel of it): dots for points (green on the
/// object, red off it), rectangles for boxes, lines for scribbles.
fn prompt_markers(
    ui: &egui::Ui,
    markers: &[crate::project::prompt_log::PromptMm],
    cell: &ViewCell,
    open: &crate::session::OpenCase,
) {
    use crate::project::prompt_log::PromptMm;
    let normal = cell.plane.right.cross(cell.plane.up);
    let near = open
        .labels_grid
        .affine
        .linear()
        .to_cols_array()
        .chunks(3)
        .map(|c| glam::DVec3::from_slice(c).length())
        .fold(0.5f64, f64::max);
    let painter = ui.painter().with_clip_rect(cell.rect);
    let on_slice = |p: &glam::DVec3| (*p - cell.plane.centre_mm).dot(normal).abs() <= near;
    for m in markers {
        let points = m.points_mm();
        if !points.iter().all(on_slice) {
            continue;
        }
        let colour = prompt_colour(m.include());
        let at: Vec<Pos2> = points.iter().map(|p| cell.pos_of_mm(*p)).collect();
        match m {
            PromptMm::Point { .. } => {
                painter.circle_filled(at[0], 4.0, colour);
                painter.circle_stroke(at[0], 4.0, egui::Stroke::new(1.0, Color32::BLACK));
            }
            PromptMm::Box { .. } => {
                let rect = egui::Rect::from_two_pos(at[0], at[1]);
                painter.rect_stroke(
                    rect,
                    0.0,
                    egui::Stroke::new(2.0, colour),
                    egui::StrokeKind::Middle,
                );
            }
            PromptMm::Scribble { .. } => {
                painter.add(egui::Shape::line(at, egui::Stroke::new(2.5, colour)));
            }
        }
    }
}

/// Right drag: window (left-right) and level (up-down); middle drag: pan.
fn drag_input(
    open: &crate::session::OpenCase,
    cell: &ViewCell,
    resp: &egui::Response,
    mm_per_point: f64,
    out: &mut Vec<Command>,
) {
    if resp.dragged_by(egui::PointerButton::Secondary) {
        if let Some(d) = open.layers.get(cell.seq).map(|l| &l.display) {
            let delta = resp.drag_delta();
            let (level, width) = d.level_width();
            let width = width * (delta.x * 0.01).exp();
            let level = level - delta.y * width * 0.005;
            out.push(Command::View(ViewCommand::SetWindow {
                seq: cell.seq,
                low: level - 0.5 * width,
                high: level + 0.5 * width,
            }));
        }
    }
    if resp.dragged_by(egui::PointerButton::Middle) {
        let delta = resp.drag_delta();
        out.push(Command::View(ViewCommand::Pan(
            cell.orientation,
            [
                -delta.x as f64 * mm_per_point,
                delta.y as f64 * mm_per_point,
            ],
        )));
    }
}

/// Over a hovered view: the wheel and arrow / page keys step slices, Ctrl+wheel zooms about
/// the pointer (`about_mm`: its offset from the view's centre, mm along screen right and up).
fn hover_input(ui: &egui::Ui, o: Orientation, about_mm: [f64; 2], out: &mut Vec<Command>) {
    let (wheel, zoom, keys) = ui.input(|i| {
        let mut wheel = 0.0f32;
        for e in &i.events {
            if let egui::Event::MouseWheel {
                delta, modifiers, ..
            } = e
            {
                if !modifiers.ctrl && !modifiers.command {
                    wheel += delta.y.signum();
                }
            }
        }
        let mut keys = 0i32;
        for (k, n) in [
            (egui::Key::ArrowUp, 1),
            (egui::Key::ArrowDown, -1),
            (egui::Key::PageUp, 5),
            (egui::Key::PageDown, -5),
        ] {
            if i.key_pressed(k) {
                keys += n;
            }
        }
        (wheel, i.zoom_delta(), keys)
    });
    if wheel != 0.0 {
        out.push(Command::View(ViewCommand::StepSlice(o, wheel as i32)));
    }
    if keys != 0 {
        out.push(Command::View(ViewCommand::StepSlice(o, keys)));
    }
    if (zoom - 1.0).abs() > 1e-4 {
        out.push(Command::View(ViewCommand::Zoom(o, zoom as f64, about_mm)));
    }
}
