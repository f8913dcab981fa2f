//! Correcting a case: the active tool and its settings, and the edit commands' application
//! (brush strokes, fills, polygons, morphology, accepting the prediction, class / status / note,
//! labels, undo and redo). Every change goes through `Session::commit`, which pushes it on the
//! undo stack, appends it to the case's journal and reports the changed sub-box of the mask in
//! `Changes`; saving is `persist`'s.
//!
//! Invariants: a brush drag is one undo step (committed on release); the in-progress stroke is
//! already in the CPU mask (and on screen), and is the only thing a crash can lose.

use super::view::step_along;
use super::{OpenCase, Session};
use crate::edit::tools::{
    accept_prediction, brush_dab, flood_fill, interpolate_slices, morphology, polygon_fill,
    replace_label, Brush, BrushShape, BrushSpace, EditPlane, ImageRef, Morphology, PaintRules,
};
use crate::edit::{Edit, MaskDelta, RecordField, UndoStack, VoxelBox};
use crate::project::store::CaseStore;
use crate::project::{journal, Label, ReviewStatus};
use crate::render::Orientation;
use glam::DVec3;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Autosave after this long without an edit…
pub const AUTOSAVE_IDLE: Duration = Duration::from_secs(2);
/// …and at most this often.
pub const AUTOSAVE_EVERY: Duration = Duration::from_secs(30);

/// What a left click or drag in a view does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Move the cursor (crosshair mode).
    Navigate,
    /// Paint the active label.
    Brush,
    /// Erase (paint background).
    Eraser,
    /// Flood fill from the clicked voxel.
    Fill,
    /// Click polygon vertices; Enter or double click fills it.
    Polygon,
    /// Prompt the network: a click on the object (with Shift or the right button: off it)
    /// and it segments the object in the active label.
    Prompt,
}

impl Tool {
    /// All tools, for the toolbar.
    pub const ALL: [Tool; 6] = [
        Tool::Navigate,
        Tool::Brush,
        Tool::Eraser,
        Tool::Fill,
        Tool::Polygon,
        Tool::Prompt,
    ];

    /// Display name with its key.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Navigate => "Cursor (C)",
            Tool::Brush => "Brush (B)",
            Tool::Eraser => "Eraser (E)",
            Tool::Fill => "Fill (F)",
            Tool::Polygon => "Polygon (P)",
            Tool::Prompt => "Prompt (T)",
        }
    }
}

/// The active tool and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolState {
    /// Active tool.
    pub tool: Tool,
    /// Brush footprint.
    pub shape: BrushShape,
    /// Brush radius (mm).
    pub radius_mm: f64,
    /// 3D brush / fill (else in the view's slice).
    pub in_3d: bool,
    /// Label painted.
    pub label: u8,
    /// Paint-over rules and locks.
    pub rules: PaintRules,
    /// Flood fill tolerance (intensity units of the shown sequence).
    pub tolerance: f32,
    /// Polygon vertices so far (world mm) and the view they were clicked in.
    pub polygon: Vec<DVec3>,
    /// The orientation of the polygon's view.
    pub polygon_view: Option<Orientation>,
    /// Labels hidden from the overlay.
    pub hidden: [bool; 256],
    /// A Prompt tool drag draws a scribble (else a box).
    pub prompt_scribble: bool,
    /// The Prompt tool's drag so far (world mm), its view and whether it marks the object.
    pub prompt_drag: Vec<DVec3>,
    /// The orientation of the drag's view.
    pub prompt_drag_view: Option<Orientation>,
    /// The drag marks the object (else the background; a box always marks it).
    pub prompt_drag_include: bool,
}

impl Default for ToolState {
    fn default() -> Self {
        Self {
            tool: Tool::Navigate,
            shape: BrushShape::Round,
            radius_mm: 2.0,
            in_3d: false,
            label: 1,
            rules: PaintRules::default(),
            tolerance: 50.0,
            polygon: Vec::new(),
            polygon_view: None,
            hidden: [false; 256],
            prompt_scribble: false,
            prompt_drag: Vec::new(),
            prompt_drag_view: None,
            prompt_drag_include: true,
        }
    }
}

/// Edit commands (applied by `MriloopApp::apply_edit`).
#[derive(Debug, Clone, PartialEq)]
pub enum EditCommand {
    /// Choose the tool.
    SetTool(Tool),
    /// Brush radius (mm).
    SetRadius(f64),
    /// Brush footprint.
    SetShape(BrushShape),
    /// 3D brush and fill.
    Set3d(bool),
    /// Label painted.
    SetLabel(u8),
    /// Paint only over this label (None: anywhere).
    SetPaintOver(Option<u8>),
    /// Paint only where the shown sequence is in this range.
    SetIntensityRange(Option<(f32, f32)>),
    /// Lock a label against painting.
    SetLocked(u8, bool),
    /// Hide a label from the overlay.
    SetHidden(u8, bool),
    /// Flood fill tolerance.
    SetTolerance(f32),
    /// A brush or eraser dab at a world point, in a view (part of the current stroke).
    Dab(Orientation, DVec3),
    /// The mouse was released: the stroke becomes one undo step.
    EndStroke,
    /// Flood fill from a world point in a view, reading the sequence shown there.
    Fill(Orientation, DVec3, usize),
    /// Add a polygon vertex.
    PolygonPoint(Orientation, DVec3),
    /// Fill the polygon.
    ClosePolygon,
    /// Drop the polygon.
    CancelPolygon,
    /// Undo the last step.
    Undo,
    /// Redo.
    Redo,
    /// Set the reference class (None: unset).
    SetClass(Option<String>),
    /// Set the review status.
    SetStatus(ReviewStatus),
    /// Set the note.
    SetNote(String),
    /// Copy the prediction into the reference (all labels or one).
    AcceptPrediction(Option<u8>),
    /// Morphology on a label.
    Morph(u8, Morphology),
    /// Replace label a by b (b = 0 clears a).
    Replace(u8, u8),
    /// Interpolate a label between annotated slices of a view's orientation.
    Interpolate(u8, Orientation),
    /// Add a label (next free value).
    AddLabel,
    /// Rename a label.
    RenameLabel(u8, String),
    /// Recolour a label.
    RecolourLabel(u8, [u8; 3]),
    /// Save now (a project case: into the project; loose files: into the user's mask file).
    Save,
    /// Save the mask of loose files to another file, which later saves go to.
    SaveAs(PathBuf),
    /// A prompt: a point on the object or off it, a box, a scribble (world mm).
    Prompt(crate::project::prompt_log::PromptMm),
    /// The Prompt tool's drag reached a world point in a view (on the object, or off it).
    PromptDrag(Orientation, DVec3, bool),
    /// The Prompt tool's drag ended: it becomes a box or a scribble prompt.
    EndPromptDrag,
    /// Whether a Prompt tool drag draws a scribble (else a box).
    SetPromptScribble(bool),
    /// Drop the prompts of the current object.
    ClearPrompts,
    /// Prompt with the promptable checkpoint in this folder (`None`: the project's newest).
    UsePromptModel(Option<PathBuf>),
}

/// Per-case editing state kept with the open case.
pub struct CaseEdits {
    /// Undo/redo of this case.
    pub undo: UndoStack,
    /// Deltas of the stroke in progress.
    pub stroke: Vec<MaskDelta>,
    /// Last dab of the stroke (world mm), to fill gaps of a fast drag.
    pub last_dab: Option<DVec3>,
    /// Changes not yet autosaved (into the project, or the loose files' working copy).
    pub dirty: bool,
    /// Changes not yet saved where the user will find them (the project's files, or the loose
    /// mask file the user chose).
    pub unsaved_for_user: bool,
    /// Whether the mask changed since the last save.
    pub mask_dirty: bool,
    /// Last change.
    pub last_change: Instant,
    /// Last save.
    pub last_save: Instant,
    /// The persistence worker (journal and saves).
    pub store: Option<CaseStore>,
    /// Where the reference mask is saved: project-relative (project cases).
    pub reference_rel: Option<String>,
    /// Loose files: the user's mask file and the working copy (`None` for project cases).
    pub loose: Option<super::persist::LooseFiles>,
}

impl CaseEdits {
    /// Fresh state.
    pub fn new(
        store: Option<CaseStore>,
        reference_rel: Option<String>,
        loose: Option<super::persist::LooseFiles>,
    ) -> Self {
        let now = Instant::now();
        Self {
            undo: UndoStack::default(),
            stroke: Vec::new(),
            last_dab: None,
            dirty: false,
            unsaved_for_user: false,
            mask_dirty: false,
            last_change: now,
            last_save: now,
            store,
            reference_rel,
            loose,
        }
    }
}

fn edit_plane(open: &OpenCase, o: Orientation) -> Option<EditPlane> {
    let mask = open.reference.as_ref()?;
    let (right, up, normal) = o.axes();
    let cursor = open.viewer.cursor_mm;
    Some(EditPlane {
        origin_mm: normal * cursor.dot(normal),
        right,
        up,
        thickness_mm: step_along(mask.affine(), o.normal_axis()),
    })
}

/// The mask voxel axis most aligned with a view's normal.
fn voxel_axis_of(open: &OpenCase, o: Orientation) -> usize {
    let Some(mask) = open.reference.as_ref() else {
        return 2;
    };
    let (_, _, n) = o.axes();
    let lin = mask.affine().linear();
    (0..3)
        .max_by(|a, b| {
            let ca = lin.col(*a).normalize_or_zero().dot(n).abs();
            let cb = lin.col(*b).normalize_or_zero().dot(n).abs();
            ca.total_cmp(&cb)
        })
        .unwrap_or(2)
}

impl Session {
    /// Label colours for the GPU table, with hidden labels transparent.
    pub fn overlay_colours(&self) -> [[u8; 4]; 256] {
        let mut colours = [[0u8; 4]; 256];
        for (v, c) in colours.iter_mut().enumerate().skip(1) {
            let [r, g, b] = match self.labels.get(v as u8) {
                Some(l) => l.color,
                None => crate::project::default_color(v as u8),
            };
            *c = [r, g, b, if self.tools.hidden[v] { 0 } else { 255 }];
        }
        colours
    }

    /// The mask's sub-box `region` changed: the window uploads it.
    fn mask_changed(&mut self, region: VoxelBox) {
        let Some(mask) = self.open.as_ref().and_then(|o| o.reference.as_ref()) else {
            return;
        };
        let region = region.clamp_to(mask.dims3());
        if !region.is_empty() {
            self.pending.mask_boxes.push(region);
        }
    }

    /// Record a finished step: undo stack, journal, dirty flags.
    fn commit(&mut self, edit: Edit) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Some(store) = &open.edits.store {
            store.append(&edit);
        }
        if matches!(edit, Edit::Mask(_)) {
            open.edits.mask_dirty = true;
        }
        open.edits.dirty = true;
        open.edits.unsaved_for_user = true;
        open.edits.last_change = Instant::now();
        open.edits.undo.push(edit);
    }

    fn record_edit(&mut self, field: RecordField, after: String) {
        let (Some(project), Some(open)) = (self.project.as_mut(), self.open.as_ref()) else {
            return;
        };
        let Some(case) = open
            .case_index
            .and_then(|i| project.manifest.cases.get_mut(i))
        else {
            return;
        };
        let before = match field {
            RecordField::ClassLabel => case.class_label.clone().unwrap_or_default(),
            RecordField::Status => case.review.as_str().to_string(),
            RecordField::Note => case.note.clone(),
            RecordField::Labels => return,
        };
        if before == after {
            return;
        }
        let edit = Edit::Record {
            field,
            before,
            after,
        };
        journal::apply_record(case, &edit, true);
        self.commit(edit);
    }

    pub(super) fn apply_mask_delta(&mut self, delta: Option<MaskDelta>, as_stroke: bool) {
        let Some(delta) = delta else { return };
        self.mask_changed(delta.region);
        if let Some(open) = self.open.as_mut() {
            if let (Some(a), Some(p)) = (open.agreement.as_mut(), open.predicted.as_ref()) {
                a.apply(&delta, p, true);
            }
        }
        if as_stroke {
            if let Some(open) = self.open.as_mut() {
                open.edits.stroke.push(delta);
            }
        } else {
            self.commit(Edit::Mask(vec![delta]));
        }
    }

    pub(super) fn end_stroke(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.edits.last_dab = None;
        let stroke = std::mem::take(&mut open.edits.stroke);
        if !stroke.is_empty() {
            self.commit(Edit::Mask(stroke));
        }
    }

    fn dab(&mut self, o: Orientation, at_mm: DVec3) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(plane) = edit_plane(open, o) else {
            return;
        };
        let t = &self.tools;
        let brush = Brush {
            shape: t.shape,
            radius_mm: t.radius_mm,
            space: if t.in_3d {
                let (r, u, n) = o.axes();
                BrushSpace::Volume { axes: [r, u, n] }
            } else {
                BrushSpace::Plane(plane)
            },
            value: if t.tool == Tool::Eraser { 0 } else { t.label },
        };
        let seq = open.viewer.shown.first().copied().unwrap_or(0);
        // Dabs along the segment from the last one, half a radius apart, so a fast drag leaves
        // no gaps.
        let from = open.edits.last_dab.unwrap_or(at_mm);
        let spacing = (t.radius_mm * 0.5).max(0.25);
        let n = ((at_mm - from).length() / spacing).ceil().max(1.0) as usize;
        let mut deltas = Vec::new();
        let (images, mask) = (&open.layers, open.reference.as_mut());
        let Some(mask) = mask else { return };
        let image = images
            .get(seq)
            .map(|i| ImageRef::new(&i.volume, mask.affine()));
        for k in 1..=n {
            let p = from.lerp(at_mm, k as f64 / n as f64);
            deltas.extend(brush_dab(mask, &brush, p, &t.rules, image));
        }
        open.edits.last_dab = Some(at_mm);
        for d in deltas {
            self.apply_mask_delta(Some(d), true);
        }
    }

    fn undo_redo(&mut self, forward: bool) {
        self.end_stroke();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let edit = if forward {
            open.edits.undo.redo().cloned()
        } else {
            open.edits.undo.undo().cloned()
        };
        let Some(edit) = edit else { return };
        if let Some(mask) = open.reference.as_mut() {
            edit.apply_to_mask(mask, forward);
        }
        if let (Edit::Mask(deltas), Some(a), Some(p)) =
            (&edit, open.agreement.as_mut(), open.predicted.as_ref())
        {
            if forward {
                deltas.iter().for_each(|d| a.apply(d, p, true));
            } else {
                deltas.iter().rev().for_each(|d| a.apply(d, p, false));
            }
        }
        // The journal records effects: an undo is appended as the reverse change.
        let effect = match (&edit, forward) {
            (_, true) => edit.clone(),
            (Edit::Mask(d), false) => Edit::Mask(
                d.iter()
                    .rev()
                    .map(|x| MaskDelta {
                        region: x.region,
                        before: x.after.clone(),
                        after: x.before.clone(),
                    })
                    .collect(),
            ),
            (
                Edit::Record {
                    field,
                    before,
                    after,
                },
                false,
            ) => Edit::Record {
                field: *field,
                before: after.clone(),
                after: before.clone(),
            },
        };
        if let Some(store) = &open.edits.store {
            store.append(&effect);
        }
        open.edits.dirty = true;
        open.edits.unsaved_for_user = true;
        open.edits.mask_dirty |= matches!(edit, Edit::Mask(_));
        open.edits.last_change = Instant::now();
        if let (Some(p), Some(i)) = (self.project.as_mut(), open.case_index) {
            if let Some(case) = p.manifest.cases.get_mut(i) {
                journal::apply_record(case, &edit, forward);
            }
        }
        self.apply_labels_edit(&edit, forward);
        if let Some(region) = edit.region() {
            self.mask_changed(region);
        }
    }

    /// Apply one edit command.
    pub(super) fn apply_edit(&mut self, cmd: EditCommand) {
        match cmd {
            EditCommand::Dab(o, p) => self.dab(o, p),
            EditCommand::EndStroke => self.end_stroke(),
            EditCommand::Fill(o, p, seq) => self.fill(o, p, seq),
            EditCommand::ClosePolygon => self.close_polygon(),
            EditCommand::Undo => self.undo_redo(false),
            EditCommand::Redo => self.undo_redo(true),
            EditCommand::SetClass(c) => {
                self.record_edit(RecordField::ClassLabel, c.unwrap_or_default())
            }
            EditCommand::SetStatus(s) => self.record_edit(RecordField::Status, s.as_str().into()),
            EditCommand::SetNote(n) => self.record_edit(RecordField::Note, n),
            EditCommand::AcceptPrediction(_)
            | EditCommand::Morph(..)
            | EditCommand::Replace(..)
            | EditCommand::Interpolate(..) => self.whole_mask_operation(cmd),
            EditCommand::AddLabel
            | EditCommand::RenameLabel(..)
            | EditCommand::RecolourLabel(..) => self.label_table_edit(cmd),
            EditCommand::Save => self.save_for_user(None),
            EditCommand::SaveAs(path) => self.save_for_user(Some(path)),
            EditCommand::Prompt(prompt) => self.prompt_given(prompt),
            EditCommand::EndPromptDrag => self.end_prompt_drag(),
            EditCommand::ClearPrompts => self.clear_prompts(),
            EditCommand::UsePromptModel(dir) => self.request_prompt_model(dir),
            other => self.set_tool_setting(other),
        }
    }

    /// Tool choice and settings (no change to the mask).
    fn set_tool_setting(&mut self, cmd: EditCommand) {
        let t = &mut self.tools;
        match cmd {
            EditCommand::SetTool(tool) => {
                self.end_stroke();
                self.tools.tool = tool;
                self.tools.polygon.clear();
            }
            EditCommand::SetRadius(r) => t.radius_mm = r.clamp(0.1, 50.0),
            EditCommand::SetShape(s) => t.shape = s,
            EditCommand::Set3d(b) => t.in_3d = b,
            EditCommand::SetLabel(l) => t.label = l.max(1),
            EditCommand::SetPaintOver(l) => t.rules.only_over = l,
            EditCommand::SetIntensityRange(r) => t.rules.intensity = r,
            EditCommand::SetLocked(l, b) => t.rules.locked[l as usize] = b,
            EditCommand::SetHidden(l, b) => {
                t.hidden[l as usize] = b;
                self.pending.colours = true;
            }
            EditCommand::SetTolerance(x) => t.tolerance = x.max(0.0),
            EditCommand::PolygonPoint(o, p) => {
                if t.polygon_view != Some(o) {
                    t.polygon.clear();
                    t.polygon_view = Some(o);
                }
                t.polygon.push(p);
            }
            EditCommand::CancelPolygon => t.polygon.clear(),
            EditCommand::PromptDrag(o, p, include) => {
                if t.prompt_drag_view != Some(o) {
                    t.prompt_drag.clear();
                    t.prompt_drag_view = Some(o);
                }
                if t.prompt_drag.is_empty() {
                    t.prompt_drag_include = include;
                }
                t.prompt_drag.push(p);
            }
            EditCommand::SetPromptScribble(b) => t.prompt_scribble = b,
            _ => {}
        }
    }

    /// Flood fill from a world point in a view, reading sequence `seq`.
    fn fill(&mut self, o: Orientation, p: DVec3, seq: usize) {
        let in_3d = self.tools.in_3d;
        let (tol, label, rules) = (
            self.tools.tolerance,
            self.tools.label,
            self.tools.rules.clone(),
        );
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let plane = edit_plane(open, o);
        let (images, mask) = (&open.layers, open.reference.as_mut());
        let (Some(mask), Some(img)) = (mask, images.get(seq)) else {
            return;
        };
        let Some(seed) = mask.affine().mm_to_vox(p).map(|v| v.round()) else {
            return;
        };
        if seed.min_element() < 0.0 {
            return;
        }
        let seed = [seed.x as usize, seed.y as usize, seed.z as usize];
        let image = ImageRef::new(&img.volume, mask.affine());
        let plane = if in_3d { None } else { plane };
        let d = flood_fill(mask, image, seed, tol, plane.as_ref(), label, &rules);
        self.apply_mask_delta(d, false);
    }

    /// Fill the polygon clicked so far.
    fn close_polygon(&mut self) {
        let vertices = std::mem::take(&mut self.tools.polygon);
        let (label, rules) = (self.tools.label, self.tools.rules.clone());
        let Some(o) = self.tools.polygon_view else {
            return;
        };
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(plane) = edit_plane(open, o) else {
            return;
        };
        let Some(mask) = open.reference.as_mut() else {
            return;
        };
        let d = polygon_fill(mask, &plane, &vertices, label, &rules, None);
        self.apply_mask_delta(d, false);
    }

    /// Operations on a whole label: accept the prediction, morphology, replace, interpolate.
    fn whole_mask_operation(&mut self, cmd: EditCommand) {
        let rules = self.tools.rules.clone();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let axis = match &cmd {
            EditCommand::Interpolate(_, o) => voxel_axis_of(open, *o),
            _ => 2,
        };
        let (pred, mask) = (&open.predicted, open.reference.as_mut());
        let Some(mask) = mask else {
            return;
        };
        let d = match cmd {
            EditCommand::AcceptPrediction(label) => match pred {
                Some(pred) => accept_prediction(mask, pred, label, &rules),
                None => None,
            },
            EditCommand::Morph(label, op) => morphology(mask, label, op, &rules),
            EditCommand::Replace(a, b) => replace_label(mask, a, b, &rules),
            EditCommand::Interpolate(label, _) => interpolate_slices(mask, label, axis, &rules),
            _ => None,
        };
        self.apply_mask_delta(d, false);
    }

    /// Add, rename or recolour a label (through the edit path: undoable, journaled).
    fn label_table_edit(&mut self, cmd: EditCommand) {
        let mut labels = self.labels.labels().to_vec();
        match cmd {
            EditCommand::AddLabel => {
                let used: Vec<u8> = labels.iter().map(|l| l.value).collect();
                let Some(v) = (1..=255u8).find(|v| !used.contains(v)) else {
                    return;
                };
                labels.push(Label {
                    value: v,
                    name: format!("label {v}"),
                    color: crate::project::default_color(v),
                });
                self.set_labels(labels);
                self.tools.label = v;
                return;
            }
            EditCommand::RenameLabel(v, name) => {
                if let Some(l) = labels.iter_mut().find(|l| l.value == v) {
                    l.name = name;
                }
            }
            EditCommand::RecolourLabel(v, c) => {
                if let Some(l) = labels.iter_mut().find(|l| l.value == v) {
                    l.color = c;
                }
            }
            _ => return,
        }
        self.set_labels(labels);
    }

    /// Change the label table through the edit path (undoable, journaled).
    fn set_labels(&mut self, labels: Vec<Label>) {
        let Ok(table) = crate::project::LabelTable::new(labels) else {
            return;
        };
        let json = |t: &crate::project::LabelTable| serde_json::to_string(t).unwrap_or_default();
        let edit = Edit::Record {
            field: RecordField::Labels,
            before: json(&self.labels),
            after: json(&table),
        };
        self.apply_labels_edit(&edit, true);
        self.commit(edit);
    }

    /// Apply a label-table record edit forward or backward to the project and the overlay.
    fn apply_labels_edit(&mut self, edit: &Edit, forward: bool) {
        if let Some(table) = journal::label_table_of(edit, forward) {
            if let Some(p) = self.project.as_mut() {
                p.manifest.labels = table.clone();
            }
            self.labels = table;
            self.pending.colours = true;
        }
    }
}
