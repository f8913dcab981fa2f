//! The panels around the views: menu bar, status bar (cursor in voxels and mm, every
//! sequence's value and the label under it), worklist, display settings, predicted class, and
//! the error dialog. Each reads the app's state and emits commands; none changes state.

use super::training::TrainCommand;
use super::{
    Command, EditCommand, Layout, MriloopApp, OpenCase, SequenceDisplay, SortKey, WindowPreset,
    MAX_SIDE_BY_SIDE,
};
use crate::project::ReviewStatus;
use crate::render::{Colormap, Orientation};
use crate::session::ViewCommand;
use egui::{Color32, RichText};

/// File and View menus.
pub fn menu_bar(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| file_menu(ui, out));
            ui.menu_button("Edit", |ui| edit_menu(ui, app, out));
            ui.menu_button("View", |ui| view_menu(ui, app, out));
            if ui.button("Help").clicked() {
                out.push(Command::ToggleHelp);
            }
            if app.project().is_some() {
                ui.separator();
                case_navigation(ui, out);
                ui.separator();
                panel_toggles(ui, app, out);
            }
        });
    });
}

/// The File menu: open a project, images, a DICOM folder or the demo case; quit.
fn file_menu(ui: &mut egui::Ui, out: &mut Vec<Command>) {
    if ui.button("Open project…").clicked() {
        out.push(Command::OpenProjectDialog);
    }
    if ui.button("Open images…").clicked() {
        out.push(Command::OpenFilesDialog);
    }
    if ui.button("Import DICOM…").clicked() {
        out.push(Command::Dicom(
            super::dicom::DicomCommand::ChooseFolderDialog,
        ));
    }
    if ui.button("Open demo case").clicked() {
        out.push(Command::OpenDemo);
    }
    ui.separator();
    if ui.button("Quit").clicked() {
        ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

/// The Edit menu: undo and redo (with their depths), save, save a loose file's mask as.
fn edit_menu(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let depth = app
        .open_case()
        .map(|o| (o.edits.undo.undo_depth(), o.edits.undo.redo_depth()));
    let (u, r) = depth.unwrap_or((0, 0));
    if ui
        .add_enabled(u > 0, egui::Button::new(format!("Undo ({u})")))
        .clicked()
    {
        out.push(Command::Edit(EditCommand::Undo));
    }
    if ui
        .add_enabled(r > 0, egui::Button::new(format!("Redo ({r})")))
        .clicked()
    {
        out.push(Command::Edit(EditCommand::Redo));
    }
    if ui.button("Save now").on_hover_text("Ctrl+S").clicked() {
        out.push(Command::Edit(EditCommand::Save));
    }
    let loose = app.open_case().is_some_and(|o| o.is_loose());
    if ui
        .add_enabled(loose, egui::Button::new("Save mask as…"))
        .on_hover_text("Ctrl+Shift+S")
        .clicked()
    {
        out.push(Command::SaveAsDialog);
    }
}

/// The View menu: layouts, the 3D view and its directions, and resetting zoom and cursor.
fn view_menu(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    if ui.button("Three views").clicked() {
        out.push(Command::View(ViewCommand::SetLayout(Layout::TriPlanar)));
    }
    for o in Orientation::ALL {
        if ui.button(format!("{o:?} only")).clicked() {
            out.push(Command::View(ViewCommand::SetLayout(Layout::Single(o))));
        }
    }
    ui.separator();
    if let Some(c) = app.open_case().map(|o| o.viewer.camera3d) {
        if ui
            .selectable_label(c.shown, "3D view")
            .on_hover_text("beside the side-by-side views (the 2×2 layout always has it)")
            .clicked()
        {
            out.push(Command::View(ViewCommand::Show3d(!c.shown)));
        }
        if ui
            .selectable_label(c.maximised, "3D view maximised")
            .on_hover_text("double-click the 3D view")
            .clicked()
        {
            out.push(Command::View(ViewCommand::Maximise3d(!c.maximised)));
        }
        ui.menu_button("3D direction", |ui| {
            super::view3d::direction_buttons(ui, out)
        });
        ui.separator();
    }
    if ui.button("Reset zoom and cursor").clicked() {
        out.push(Command::View(ViewCommand::ResetView));
    }
}

/// Moving through a project's cases: previous / next unreviewed, most informative.
fn case_navigation(ui: &mut egui::Ui, out: &mut Vec<Command>) {
    if ui
        .button("< Prev unreviewed")
        .on_hover_text("Shift+N")
        .clicked()
    {
        out.push(Command::NextUnreviewed(-1));
    }
    if ui.button("Next unreviewed >").on_hover_text("N").clicked() {
        out.push(Command::NextUnreviewed(1));
    }
    if ui
        .button("Most informative >")
        .on_hover_text("the unreviewed case the model is least sure about (I)")
        .clicked()
    {
        out.push(Command::Train(TrainCommand::NextInformative));
    }
}

/// Training, Cohort and Experiment toggles, and the progress of a running experiment or run.
fn panel_toggles(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let shown = app.training().show_panel;
    if ui.selectable_label(shown, "Training").clicked() {
        out.push(Command::Train(TrainCommand::TogglePanel));
    }
    if ui
        .selectable_label(app.training().show_cohort, "Cohort")
        .clicked()
    {
        out.push(Command::Train(TrainCommand::ToggleCohort));
    }
    if ui
        .selectable_label(app.experiment().show, "Experiment")
        .on_hover_text("run a plan of trainings and compare them on held-out cases")
        .clicked()
    {
        out.push(Command::Experiment(
            super::experiment::ExperimentCommand::Toggle,
        ));
    }
    if let Some(run) = &app.experiment().run {
        ui.label(format!(
            "experiment {}/{} steps",
            run.steps_done,
            run.steps_total()
        ));
    }
    if let Some(run) = &app.training().run {
        ui.label(format!("training {}/{}", run.step, run.total_steps));
    }
}

/// Cursor position, values under it, and loading progress.
pub fn status_bar(ui: &mut egui::Ui, app: &MriloopApp) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            if let Some(l) = &app.loading {
                ui.spinner();
                let frac = if l.total > 0 {
                    l.done as f32 / l.total as f32
                } else {
                    0.0
                };
                ui.add(egui::ProgressBar::new(frac).desired_width(120.0));
                if let Some(f) = &l.file {
                    ui.label(format!("reading {}", f.display()));
                }
                ui.separator();
            }
            if let Some(n) = app.notice() {
                ui.label(n);
                ui.separator();
            }
            let Some(open) = app.open_case() else {
                ui.label("no case open");
                return;
            };
            let e = &open.edits;
            let saved = match (&e.loose, e.dirty, e.unsaved_for_user) {
                // Loose files: autosaved into the working copy, not yet into the user's file.
                (Some(_), _, true) => " · not saved to your file (Ctrl+S)",
                (None, true, _) => " · unsaved",
                _ => " · saved",
            };
            ui.label(format!(
                "undo {} · redo {}{saved}",
                e.undo.undo_depth(),
                e.undo.redo_depth(),
            ));
            ui.separator();
            let p = open.viewer.cursor_mm;
            if let Some(first) = open.layers.first() {
                if let Some(vox) = first.volume.affine().mm_to_vox(p) {
                    ui.label(format!("voxel [{:.0}, {:.0}, {:.0}]", vox.x, vox.y, vox.z));
                }
            }
            ui.label(format!("RAS [{:.1}, {:.1}, {:.1}] mm", p.x, p.y, p.z));
            for img in &open.layers {
                let v = value_at(&img.volume, p).map_or_else(|| "—".to_string(), format_value);
                ui.label(format!("{} {v}", img.name));
            }
            for (what, mask) in [("label", &open.reference), ("predicted", &open.predicted)] {
                if let Some(m) = mask {
                    let name = match value_at(m, p) {
                        Some(0) => "background".to_string(),
                        Some(v) => app.labels().name_of(v),
                        None => "—".to_string(),
                    };
                    ui.label(format!("{what}: {name}"));
                }
            }
        });
    });
}

/// An intensity as a person reads it: whole numbers without decimals, others to 4 significant
/// digits.
fn format_value(v: f32) -> String {
    if v.fract() == 0.0 && v.abs() < 1e7 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// The voxel value nearest a world point, if inside the grid.
pub fn value_at<T: Copy>(vol: &crate::volume::Volume<T>, pos_mm: glam::DVec3) -> Option<T> {
    let vox = vol.affine().mm_to_vox(pos_mm)?.round();
    if vox.min_element() < 0.0 {
        return None;
    }
    vol.get([vox.x as usize, vox.y as usize, vox.z as usize])
}

fn status_text(s: ReviewStatus) -> (&'static str, Color32) {
    match s {
        ReviewStatus::Unreviewed => ("unreviewed", Color32::from_gray(160)),
        ReviewStatus::InProgress => ("in progress", Color32::from_rgb(230, 180, 60)),
        ReviewStatus::Reviewed => ("reviewed", Color32::from_rgb(90, 200, 90)),
        ReviewStatus::NeedsSecondLook => ("second look", Color32::from_rgb(220, 110, 220)),
    }
}

/// The project's cases: status, class (reference vs predicted), Dice, volume; sortable and
/// filterable; a click opens a case.
pub fn worklist(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(project) = app.project() else { return };
    egui::Panel::left("worklist")
        .default_size(300.0)
        .resizable(true)
        .show(ui, |ui| {
            ui.heading("Worklist");
            ui.horizontal(|ui| worklist_filters(ui, app, out));
            let open_index = app
                .open_case()
                .and_then(|o| o.case_index)
                .filter(|_| app.loading.is_none())
                .or(app.loading.as_ref().and_then(|l| l.case_index));
            egui::ScrollArea::vertical().show(ui, |ui| {
                egui::Grid::new("worklist grid")
                    .striped(true)
                    .num_columns(7)
                    .show(ui, |ui| {
                        worklist_header(ui, app, out);
                        for i in app.worklist_order() {
                            worklist_row(ui, app, project, i, open_index == Some(i), out);
                        }
                    });
            });
        });
}

/// Filter by id text and by review status.
fn worklist_filters(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let mut text = app.worklist.text.clone();
    if ui
        .add(egui::TextEdit::singleline(&mut text).hint_text("filter by id"))
        .changed()
    {
        out.push(Command::FilterText(text));
    }
    let label = app.worklist.status.map_or("all", |s| status_text(s).0);
    egui::ComboBox::new("status filter", "status")
        .selected_text(label)
        .show_ui(ui, |ui| {
            if ui
                .selectable_label(app.worklist.status.is_none(), "all")
                .clicked()
            {
                out.push(Command::FilterStatus(None));
            }
            for s in ReviewStatus::ALL {
                if ui
                    .selectable_label(app.worklist.status == Some(s), status_text(s).0)
                    .clicked()
                {
                    out.push(Command::FilterStatus(Some(s)));
                }
            }
        });
}

/// The worklist's header row: a sort button per column (the sorted one with its direction).
fn worklist_header(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    for (key, name) in [
        (SortKey::Case, "case"),
        (SortKey::Status, "status"),
        (SortKey::Confidence, "class ref / pred"),
        (SortKey::Dice, "Dice"),
        (SortKey::Volume, "mm³"),
        (SortKey::Uncertainty, "uncert."),
    ] {
        let arrow = match (app.worklist.sort == key, app.worklist.descending) {
            (true, false) => " ^",
            (true, true) => " v",
            _ => "",
        };
        if ui
            .add(egui::Button::new(RichText::new(format!("{name}{arrow}")).strong()).frame(false))
            .clicked()
        {
            out.push(Command::SortWorklist(key));
        }
    }
    ui.label(RichText::new("model").strong());
    ui.end_row();
}

/// One case's row of the worklist; a click on its id opens it.
fn worklist_row(
    ui: &mut egui::Ui,
    app: &MriloopApp,
    project: &crate::project::Project,
    i: usize,
    is_open: bool,
    out: &mut Vec<Command>,
) {
    let classes = &project.manifest.classes;
    let case = &project.manifest.cases[i];
    if ui.selectable_label(is_open, &case.id).clicked() {
        out.push(Command::OpenCase(i));
    }
    let (st, colour) = status_text(case.review);
    ui.label(RichText::new(st).color(colour));
    let reference = case.class_label.as_deref().unwrap_or("—");
    let predicted = case
        .predicted_class
        .as_ref()
        .and_then(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, prob)| {
                    let name = classes.get(k).map_or("?", String::as_str);
                    format!("{name} {:.0}%", prob * 100.0)
                })
        })
        .unwrap_or_else(|| "—".into());
    ui.label(format!("{reference} / {predicted}"));
    let stats = app.stats.get(&case.id);
    match stats.and_then(|s| s.error.as_ref()) {
        Some(e) => {
            ui.label(RichText::new("error").color(Color32::RED))
                .on_hover_text(e);
        }
        None => {
            ui.label(
                stats
                    .and_then(|s| s.dice)
                    .map_or("—".into(), |d| format!("{d:.3}")),
            );
        }
    }
    ui.label(
        stats
            .and_then(|s| s.volume_mm3)
            .map_or("—".into(), |v| format!("{v:.0}")),
    );
    ui.label(
        case.uncertainty
            .map_or("—".into(), |u| format!("{:.2}", u.score())),
    );
    ui.label(case.predicted_by.as_deref().unwrap_or("—"));
    ui.end_row();
}

/// Display settings, overlays, and the open case's class.
pub fn side_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(open) = app.open_case() else { return };
    egui::Panel::right("display")
        .default_size(280.0)
        .resizable(true)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                case_summary(ui, open);
                class_panel(ui, app);
                super::edit_panel::review_panel(ui, app, out);
                ui.separator();
                super::edit_panel::tools_panel(ui, app, out);
                ui.separator();
                sequences_section(ui, open, out);
                ui.separator();
                window_section(ui, open, out);
                ui.separator();
                masks_section(ui, open, out);
                super::edit_panel::labels_panel(ui, app, out);
            });
        });
}

/// The case's size, spacing, sequences, labelled volume and the prediction's Dice.
fn case_summary(ui: &mut egui::Ui, open: &OpenCase) {
    let Some(first) = open.layers.first().map(|l| &l.volume) else {
        return;
    };
    let [nx, ny, nz] = first.dims3();
    let sp = first.spacing_mm();
    let mut lines = vec![format!(
        "{nx} × {ny} × {nz} voxels, {:.2} × {:.2} × {:.2} mm, {}",
        sp[0],
        sp[1],
        sp[2],
        first.affine().orientation_code()
    )];
    let names: Vec<&str> = open.layers.iter().map(|i| i.name.as_str()).collect();
    lines.push(format!("sequences: {}", names.join(", ")));
    if let Some(m) = &open.reference {
        lines.push(format!(
            "mask: {:.0} mm³ labelled",
            super::labelled_volume_mm3(m)
        ));
    }
    if let (Some(r), Some(p)) = (&open.reference, &open.predicted) {
        if let Some(d) = super::foreground_dice(r, p) {
            lines.push(format!("Dice predicted vs mask: {d:.3}"));
        }
    }
    egui::CollapsingHeader::new(format!("Case {}", open.case_id))
        .default_open(true)
        .show(ui, |ui| {
            for l in lines {
                ui.label(RichText::new(l).small());
            }
        });
}

/// Which sequences are shown side by side (or one alone), and the one blended over them.
fn sequences_section(ui: &mut egui::Ui, open: &OpenCase, out: &mut Vec<Command>) {
    let v = &open.viewer;
    ui.heading("Sequences");
    ui.label("Tick up to four to show side by side; \"only\" shows one alone.");
    for (s, img) in open.layers.iter().enumerate() {
        ui.horizontal(|ui| {
            let shown = v.shown.contains(&s);
            let mut tick = shown;
            let can_add = shown || v.shown.len() < MAX_SIDE_BY_SIDE;
            if ui
                .add_enabled(can_add, egui::Checkbox::new(&mut tick, img.name.as_str()))
                .changed()
            {
                out.push(Command::View(ViewCommand::ToggleSideBySide(s)));
            }
            if ui.small_button("only").clicked() {
                out.push(Command::View(ViewCommand::ShowSequence(s)));
            }
        });
    }
    ui.horizontal(|ui| blend_row(ui, open, out));
}

/// The sequence blended over the shown ones, and its opacity.
fn blend_row(ui: &mut egui::Ui, open: &OpenCase, out: &mut Vec<Command>) {
    let v = &open.viewer;
    let names: Vec<&str> = open.layers.iter().map(|i| i.name.as_str()).collect();
    let current = v
        .blend
        .map_or("none", |(b, _)| names.get(b).copied().unwrap_or("?"));
    egui::ComboBox::new("blend", "blend over")
        .selected_text(current)
        .show_ui(ui, |ui| {
            if ui.selectable_label(v.blend.is_none(), "none").clicked() {
                out.push(Command::View(ViewCommand::SetBlend(None)));
            }
            for (s, n) in names.iter().enumerate() {
                if ui
                    .selectable_label(v.blend.map(|b| b.0) == Some(s), *n)
                    .clicked()
                {
                    let a = v.blend.map_or(0.5, |b| b.1);
                    out.push(Command::View(ViewCommand::SetBlend(Some((s, a)))));
                }
            }
        });
    if let Some((b, mut a)) = v.blend {
        if ui.add(egui::Slider::new(&mut a, 0.0..=1.0)).changed() {
            out.push(Command::View(ViewCommand::SetBlend(Some((b, a)))));
        }
    }
}

/// Interpolation, and window, presets and colour map of each shown (and blended) sequence.
fn window_section(ui: &mut egui::Ui, open: &OpenCase, out: &mut Vec<Command>) {
    let v = &open.viewer;
    ui.heading("Window");
    let mut linear = v.linear;
    if ui
        .checkbox(&mut linear, "Trilinear interpolation")
        .changed()
    {
        out.push(Command::View(ViewCommand::SetLinear(linear)));
    }
    for &s in v.shown.iter().chain(v.blend.as_ref().map(|b| &b.0)) {
        let Some(layer) = open.layers.get(s) else {
            continue;
        };
        ui.label(RichText::new(layer.name.as_str()).strong());
        sequence_window(ui, s, &layer.display, out);
    }
    ui.label(
        RichText::new("Right-drag in a view: window (left-right) and level (up-down)").small(),
    );
}

/// One sequence's window (low, high), presets and colour map.
fn sequence_window(ui: &mut egui::Ui, s: usize, d: &SequenceDisplay, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        let (mut lo, mut hi) = (d.window_low, d.window_high);
        let speed = ((hi - lo).abs() * 0.005).max(1e-4);
        let a = ui.add(egui::DragValue::new(&mut lo).speed(speed).prefix("low "));
        let b = ui.add(egui::DragValue::new(&mut hi).speed(speed).prefix("high "));
        if a.changed() || b.changed() {
            out.push(Command::View(ViewCommand::SetWindow {
                seq: s,
                low: lo,
                high: hi,
            }));
        }
    });
    ui.horizontal(|ui| {
        for p in WindowPreset::ALL {
            if ui.small_button(p.name()).clicked() {
                out.push(Command::View(ViewCommand::WindowPreset(s, p)));
            }
        }
        egui::ComboBox::new(("cmap", s), "map")
            .selected_text(d.colormap.name())
            .show_ui(ui, |ui| {
                for c in Colormap::ALL {
                    if ui.selectable_label(d.colormap == c, c.name()).clicked() {
                        out.push(Command::View(ViewCommand::SetColormap(s, c)));
                    }
                }
            });
    });
}

/// Opacity and outline of the reference mask and opacity of the predicted one.
fn masks_section(ui: &mut egui::Ui, open: &OpenCase, out: &mut Vec<Command>) {
    ui.heading("Masks");
    let mut o = open.viewer.overlay;
    if open.reference.is_some() {
        if ui
            .add(egui::Slider::new(&mut o.reference_opacity, 0.0..=1.0).text("reference"))
            .changed()
        {
            out.push(Command::View(ViewCommand::SetReferenceOpacity(
                o.reference_opacity,
            )));
        }
        if ui
            .checkbox(&mut o.reference_outline, "outline only")
            .changed()
        {
            out.push(Command::View(ViewCommand::SetReferenceOutline(
                o.reference_outline,
            )));
        }
    }
    if open.predicted.is_some()
        && ui
            .add(egui::Slider::new(&mut o.predicted_opacity, 0.0..=1.0).text("predicted (outline)"))
            .changed()
    {
        out.push(Command::View(ViewCommand::SetPredictedOpacity(
            o.predicted_opacity,
        )));
    }
}

/// The open case's class: the reference label and the predicted probabilities as bars.
fn class_panel(ui: &mut egui::Ui, app: &MriloopApp) {
    ui.heading("Class");
    let (Some(project), Some(i)) = (app.project(), app.open_case().and_then(|o| o.case_index))
    else {
        ui.label("no project class list for loose files");
        return;
    };
    let Some(case) = project.manifest.cases.get(i) else {
        return;
    };
    if project.manifest.classes.is_empty() {
        // An nnU-Net dataset's project: the network segments only.
        ui.label("this project has no case classes: segmentation only");
        return;
    }
    ui.label(format!(
        "reference: {}",
        case.class_label.as_deref().unwrap_or("not set")
    ));
    match &case.predicted_class {
        Some(probs) => {
            ui.label("predicted:");
            let best = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k);
            for (k, name) in project.manifest.classes.iter().enumerate() {
                let p = probs.get(k).copied().unwrap_or(0.0);
                let bar = egui::ProgressBar::new(p.clamp(0.0, 1.0))
                    .text(format!("{name} {:.1}%", p * 100.0))
                    .fill(if best == Some(k) {
                        Color32::from_rgb(70, 130, 200)
                    } else {
                        Color32::from_gray(90)
                    });
                ui.add(bar);
            }
        }
        None => {
            ui.label("predicted: none yet (train or run the network)");
        }
    }
}

/// A modal naming the file and the problem of the last failure.
pub fn error_dialog(ctx: &egui::Context, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(e) = &app.dialogs.error else { return };
    egui::Modal::new(egui::Id::unique("error dialog")).show(ctx, |ui| {
        ui.set_max_width(520.0);
        ui.heading("Cannot open");
        ui.label(e);
        if ui.button("OK").clicked() {
            out.push(Command::DismissError);
        }
    });
}

/// A modal with information for the user (e.g. edits recovered from a journal).
pub fn info_dialog(ctx: &egui::Context, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(text) = app.info() else { return };
    egui::Modal::new(egui::Id::unique("info dialog")).show(ctx, |ui| {
        ui.set_max_width(520.0);
        ui.heading("Recovered");
        ui.label(text);
        if ui.button("OK").clicked() {
            out.push(Command::DismissInfo);
        }
    });
}

/// Closing with unsaved edits of loose files: save them into the user's files, throw them
/// away, or keep the window open.
pub fn confirm_close_dialog(ctx: &egui::Context, out: &mut Vec<Command>) {
    use super::commands::CloseAnswer;
    egui::Modal::new(egui::Id::unique("confirm close")).show(ctx, |ui| {
        ui.set_max_width(460.0);
        ui.heading("Unsaved edits");
        ui.label(
            "The mask has edits that are not saved into your file yet. \
             (They are kept in mriloop's working copy until you save or discard them.)",
        );
        ui.horizontal(|ui| {
            if ui.button("Save and close").clicked() {
                out.push(Command::CloseAnswer(CloseAnswer::Save));
            }
            if ui.button("Discard and close").clicked() {
                out.push(Command::CloseAnswer(CloseAnswer::Discard));
            }
            if ui.button("Cancel").clicked() {
                out.push(Command::CloseAnswer(CloseAnswer::Cancel));
            }
        });
    });
}

/// The shortcuts list (F1).
pub fn help_window(ctx: &egui::Context, out: &mut Vec<Command>) {
    let mut open = true;
    egui::Window::new("Shortcuts")
        .open(&mut open)
        .resizable(false)
        .show(ctx, |ui| {
            egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                for (keys, what) in super::SHORTCUTS {
                    ui.label(RichText::new(*keys).strong());
                    ui.label(*what);
                    ui.end_row();
                }
            });
        });
    if !open {
        out.push(Command::ToggleHelp);
    }
}
