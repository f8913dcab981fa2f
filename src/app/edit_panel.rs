//! Panels for correcting a case: review (class, status, note), tools (brush, eraser, fill,
//! polygon and their rules; morphology, interpolation, accepting the prediction) and the label
//! table (visibility, colour, name, lock, new labels). They only emit commands.

use super::{Command, EditCommand, MriloopApp, OpenCase, Tool, ToolState};
use crate::edit::tools::{BrushShape, Morphology};
use crate::project::ReviewStatus;
use crate::render::Orientation;
use egui::RichText;

fn edit(out: &mut Vec<Command>, e: EditCommand) {
    out.push(Command::Edit(e));
}

/// Class, status and note of the open project case.
pub fn review_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let (Some(project), Some(i)) = (app.project(), app.open_case().and_then(|o| o.case_index))
    else {
        return;
    };
    let Some(case) = project.manifest.cases.get(i) else {
        return;
    };
    // No class list (an nnU-Net dataset's project): nothing to choose.
    if !project.manifest.classes.is_empty() {
        ui.horizontal(|ui| {
            let current = case.class_label.as_deref().unwrap_or("not set");
            egui::ComboBox::new("class", "reference class (keys 1–9)")
                .selected_text(current)
                .show_ui(ui, |ui| {
                    if ui
                        .selectable_label(case.class_label.is_none(), "not set")
                        .clicked()
                    {
                        edit(out, EditCommand::SetClass(None));
                    }
                    for (k, c) in project.manifest.classes.iter().enumerate() {
                        let text = format!("{} {c}", k + 1);
                        if ui
                            .selectable_label(case.class_label.as_deref() == Some(c), text)
                            .clicked()
                        {
                            edit(out, EditCommand::SetClass(Some(c.clone())));
                        }
                    }
                });
        });
    }
    ui.horizontal_wrapped(|ui| {
        ui.label("status:");
        for (s, name) in [
            (ReviewStatus::InProgress, "in progress"),
            (ReviewStatus::Reviewed, "reviewed (R)"),
            (ReviewStatus::NeedsSecondLook, "second look (L)"),
        ] {
            if ui.selectable_label(case.review == s, name).clicked() {
                edit(out, EditCommand::SetStatus(s));
            }
        }
    });
    provenance(ui, app, case);
    // The note is edited in a buffer and committed when the field loses focus (one undo step).
    let id = egui::Id::unique(("note buffer", &case.id));
    let mut text = ui
        .data(|d| d.get_temp::<String>(id))
        .unwrap_or_else(|| case.note.clone());
    let resp = ui.add(
        egui::TextEdit::multiline(&mut text)
            .desired_rows(2)
            .hint_text("note on this case"),
    );
    if resp.changed() {
        ui.data_mut(|d| d.insert_temp(id, text.clone()));
    }
    if resp.lost_focus() {
        ui.data_mut(|d| d.remove::<String>(id));
        if text != case.note {
            edit(out, EditCommand::SetNote(text));
        }
    }
}

/// Where the case stands: raw prediction (which model version) → correction → review status,
/// and the live agreement of the prediction with the corrected mask (Dice and volumes per
/// label, updated from each edit).
fn provenance(ui: &mut egui::Ui, app: &MriloopApp, case: &crate::project::Case) {
    let Some(open) = app.open_case() else { return };
    let model = case
        .predicted_by
        .as_deref()
        .unwrap_or(if case.predicted_mask.is_some() {
            "an outside model"
        } else {
            "none"
        });
    let corrected = if open.edits.undo.undo_depth() > 0 || case.review == ReviewStatus::Reviewed {
        "corrected"
    } else {
        "not corrected yet"
    };
    ui.label(format!(
        "prediction by {model} > {corrected} > {}",
        case.review.as_str().replace('_', " ")
    ));
    if let Some(u) = case.uncertainty {
        ui.label(format!(
            "model uncertainty: segmentation {:.2}, class {:.2}",
            u.segmentation, u.classification
        ));
    }
    let Some(a) = &open.agreement else { return };
    let vox = open
        .reference
        .as_ref()
        .map_or(1.0, |m| m.voxel_volume_mm3());
    egui::Grid::new("agreement").striped(true).show(ui, |ui| {
        ui.strong("label");
        ui.strong("Dice");
        ui.strong("pred mm³");
        ui.strong("corr mm³");
        ui.end_row();
        ui.label("any");
        ui.label(
            a.foreground_dice()
                .map_or("—".into(), |d| format!("{d:.3}")),
        );
        ui.end_row();
        for v in a.labels() {
            let (r, p) = a.counts(v);
            let name = app
                .labels()
                .get(v)
                .map_or(format!("label {v}"), |l| l.name.clone());
            ui.label(name);
            ui.label(a.dice(v).map_or("—".into(), |d| format!("{d:.3}")));
            ui.label(format!("{:.0}", p as f64 * vox));
            ui.label(format!("{:.0}", r as f64 * vox));
            ui.end_row();
        }
    });
}

/// The active tool and its settings, and whole-mask operations.
/// The Prompt tool's model, state and clearing.
fn prompt_rows(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let state = app.session().prompts();
    ui.label(match state.model_source() {
        Some(source) => format!("model: {source}"),
        None => "model: the project's newest promptable version (read at the first click)".into(),
    });
    ui.horizontal(|ui| {
        ui.label(format!(
            "{} prompt(s){}",
            state.markers().len(),
            if state.busy() { ", segmenting…" } else { "" }
        ));
        if ui.button("Clear prompts").clicked() {
            edit(out, EditCommand::ClearPrompts);
        }
    });
    let mut scribble = app.tools().prompt_scribble;
    if ui
        .checkbox(&mut scribble, "drag paints a scribble (else spans a box)")
        .changed()
    {
        edit(out, EditCommand::SetPromptScribble(scribble));
    }
    ui.small(
        "click: on the object · Shift+click or right click: off it · drag: box or scribble \
         (Shift: off it) · Ctrl+Z undoes a prompt's result",
    );
}

pub fn tools_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(open) = app.open_case() else { return };
    let t = app.tools();
    ui.heading("Tools");
    ui.horizontal_wrapped(|ui| {
        for tool in Tool::ALL {
            if ui.selectable_label(t.tool == tool, tool.name()).clicked() {
                edit(out, EditCommand::SetTool(tool));
            }
        }
    });
    active_label_row(ui, app, out);
    if t.tool == Tool::Prompt {
        prompt_rows(ui, app, out);
    }
    brush_rows(ui, t, out);
    paint_over_row(ui, app, out);
    intensity_row(ui, open, t, out);
    let mut tol = t.tolerance;
    if ui
        .add(egui::Slider::new(&mut tol, 0.0..=500.0).text("fill tolerance"))
        .changed()
    {
        edit(out, EditCommand::SetTolerance(tol));
    }
    label_operations(ui, app, out);
    if open.predicted.is_some() {
        ui.horizontal_wrapped(|ui| {
            if ui.button("Accept prediction").clicked() {
                edit(out, EditCommand::AcceptPrediction(None));
            }
            if ui
                .button(format!(
                    "Accept prediction for {}",
                    app.labels().name_of(t.label)
                ))
                .clicked()
            {
                edit(out, EditCommand::AcceptPrediction(Some(t.label)));
            }
        });
    }
}

/// The label the tools paint with, chosen from the label table.
fn active_label_row(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let t = app.tools();
    ui.horizontal(|ui| {
        egui::ComboBox::new("active label", "label")
            .selected_text(format!("{} {}", t.label, app.labels().name_of(t.label)))
            .show_ui(ui, |ui| {
                for l in app.labels().labels() {
                    if ui
                        .selectable_label(t.label == l.value, format!("{} {}", l.value, l.name))
                        .clicked()
                    {
                        edit(out, EditCommand::SetLabel(l.value));
                    }
                }
            });
    });
}

/// Brush radius, shape and whether it paints in 3D.
fn brush_rows(ui: &mut egui::Ui, t: &ToolState, out: &mut Vec<Command>) {
    let mut r = t.radius_mm;
    if ui
        .add(egui::Slider::new(&mut r, 0.5..=20.0).text("brush radius mm (+/-)"))
        .changed()
    {
        edit(out, EditCommand::SetRadius(r));
    }
    ui.horizontal(|ui| {
        for (s, name) in [(BrushShape::Round, "round"), (BrushShape::Square, "square")] {
            if ui.selectable_label(t.shape == s, name).clicked() {
                edit(out, EditCommand::SetShape(s));
            }
        }
        let mut in_3d = t.in_3d;
        if ui.checkbox(&mut in_3d, "3D").changed() {
            edit(out, EditCommand::Set3d(in_3d));
        }
    });
}

/// Which voxels painting may change: anything, background only or one label only.
fn paint_over_row(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let t = app.tools();
    ui.horizontal(|ui| {
        let current = match t.rules.only_over {
            None => "anything".to_string(),
            Some(0) => "background".to_string(),
            Some(v) => format!("{v} {}", app.labels().name_of(v)),
        };
        egui::ComboBox::new("paint over", "paint over")
            .selected_text(current)
            .show_ui(ui, |ui| {
                if ui
                    .selectable_label(t.rules.only_over.is_none(), "anything")
                    .clicked()
                {
                    edit(out, EditCommand::SetPaintOver(None));
                }
                if ui
                    .selectable_label(t.rules.only_over == Some(0), "background")
                    .clicked()
                {
                    edit(out, EditCommand::SetPaintOver(Some(0)));
                }
                for l in app.labels().labels() {
                    if ui
                        .selectable_label(t.rules.only_over == Some(l.value), &l.name)
                        .clicked()
                    {
                        edit(out, EditCommand::SetPaintOver(Some(l.value)));
                    }
                }
            });
    });
}

/// Painting limited to an intensity range of the first shown image (its window by default).
fn intensity_row(ui: &mut egui::Ui, open: &OpenCase, t: &ToolState, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        let shown = open.viewer.shown.first().copied().unwrap_or(0);
        let name = open
            .layers
            .get(shown)
            .map(|i| i.name.to_string())
            .unwrap_or_default();
        let mut on = t.rules.intensity.is_some();
        let (mut lo, mut hi) = t.rules.intensity.unwrap_or_else(|| {
            open.layers.get(shown).map_or((0.0, 1.0), |l| {
                (l.display.window_low, l.display.window_high)
            })
        });
        let mut changed = ui
            .checkbox(&mut on, format!("only where {name} is in"))
            .changed();
        changed |= ui
            .add(egui::DragValue::new(&mut lo).speed(1.0).prefix("from "))
            .changed();
        changed |= ui
            .add(egui::DragValue::new(&mut hi).speed(1.0).prefix("to "))
            .changed();
        if changed {
            edit(
                out,
                EditCommand::SetIntensityRange(on.then_some((lo, hi.max(lo)))),
            );
        }
    });
}

/// Whole-mask operations on the active label: morphology, interpolation, clearing.
fn label_operations(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let t = app.tools();
    let name = app.labels().name_of(t.label);
    ui.label(RichText::new(format!("On label {} ({}):", t.label, name)).strong());
    ui.horizontal_wrapped(|ui| {
        let l = t.label;
        for (name, op) in [
            ("dilate", Morphology::Dilate),
            ("erode", Morphology::Erode),
            ("fill holes", Morphology::FillHoles),
            ("keep largest", Morphology::KeepLargest),
            ("drop < 5 mm³", Morphology::RemoveSmallerThan(5.0)),
        ] {
            if ui.small_button(name).clicked() {
                edit(out, EditCommand::Morph(l, op));
            }
        }
        if ui
            .small_button("interpolate axial slices")
            .on_hover_text("fill the slices between annotated axial slices")
            .clicked()
        {
            edit(out, EditCommand::Interpolate(l, Orientation::Axial));
        }
        if ui.small_button("clear").clicked() {
            edit(out, EditCommand::Replace(l, 0));
        }
    });
}

/// The label table: visibility, colour, name, lock; add a label.
pub fn labels_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let t = app.tools();
    for l in app.labels().labels() {
        ui.horizontal(|ui| {
            let v = l.value;
            let mut visible = !t.hidden[v as usize];
            let shown = ui
                .checkbox(&mut visible, format!("{v}"))
                .on_hover_text("show this label");
            if shown.changed() {
                edit(out, EditCommand::SetHidden(v, !visible));
            }
            let mut c = l.color;
            if ui.color_edit_button_srgb(&mut c).changed() {
                edit(out, EditCommand::RecolourLabel(v, c));
            }
            let id = egui::Id::unique(("label name", v));
            let mut name = ui
                .data(|d| d.get_temp::<String>(id))
                .unwrap_or_else(|| l.name.clone());
            let resp = ui
                .add(egui::TextEdit::singleline(&mut name).desired_width(110.0))
                .labelled_by(shown.id);
            if resp.changed() {
                ui.data_mut(|d| d.insert_temp(id, name.clone()));
            }
            if resp.lost_focus() {
                ui.data_mut(|d| d.remove::<String>(id));
                if !name.trim().is_empty() && name != l.name {
                    edit(out, EditCommand::RenameLabel(v, name.trim().to_string()));
                }
            }
            let mut locked = t.rules.locked[v as usize];
            if ui.checkbox(&mut locked, "lock").changed() {
                edit(out, EditCommand::SetLocked(v, locked));
            }
        });
    }
    if ui.small_button("+ label").clicked() {
        edit(out, EditCommand::AddLabel);
    }
}
