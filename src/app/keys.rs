//! Keyboard shortcuts of the review window: each key press becomes a command (listed in the
//! Help panel, `SHORTCUTS`). Keys typed into a text field are left to it.

use super::{Command, MriloopApp};
use crate::project::ReviewStatus;
use crate::session::{EditCommand, Tool, ViewCommand};
use egui::{InputState, Key};

/// What the plain keys need to know about the session.
struct KeyContext {
    /// The project's classes, in order (keys 1–9).
    classes: Vec<String>,
    /// The brush radius (mm).
    radius_mm: f64,
    /// The reference overlay's opacity (A toggles it).
    reference_opacity: f32,
}

impl MriloopApp {
    /// Turn this frame's key presses into commands.
    pub(super) fn handle_keys(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let keys = KeyContext {
            classes: self
                .session
                .project()
                .map(|p| p.manifest.classes.clone())
                .unwrap_or_default(),
            radius_mm: self.session.tools().radius_mm,
            reference_opacity: self
                .session
                .open_case()
                .map_or(0.0, |o| o.viewer.overlay.reference_opacity),
        };
        let out = ctx.input(|i| {
            let mut out = command_keys(i);
            let m = i.modifiers;
            if !m.command && !m.alt && !m.shift {
                out.extend(plain_keys(i, &keys));
            }
            out
        });
        self.commands.extend(out);
    }
}

/// Shortcuts with a modifier, and those that work with any.
fn command_keys(i: &InputState) -> Vec<Command> {
    let (m, edit) = (i.modifiers, Command::Edit);
    let mut out = Vec::new();
    if m.command && i.key_pressed(Key::Z) {
        out.push(edit(if m.shift {
            EditCommand::Redo
        } else {
            EditCommand::Undo
        }));
    }
    if m.command && i.key_pressed(Key::Y) {
        out.push(edit(EditCommand::Redo));
    }
    if m.command && i.key_pressed(Key::S) {
        out.push(if m.shift {
            Command::SaveAsDialog
        } else {
            edit(EditCommand::Save)
        });
    }
    if i.key_pressed(Key::N) && !m.command {
        out.push(Command::NextUnreviewed(if m.shift { -1 } else { 1 }));
    }
    if i.key_pressed(Key::I) && !m.command {
        out.push(Command::Train(
            super::training::TrainCommand::NextInformative,
        ));
    }
    if i.key_pressed(Key::F1) {
        out.push(Command::ToggleHelp);
    }
    if i.key_pressed(Key::Enter) {
        out.push(edit(EditCommand::ClosePolygon));
    }
    if i.key_pressed(Key::Escape) {
        out.push(edit(EditCommand::CancelPolygon));
    }
    out
}

/// Shortcuts without a modifier: classes, tools, radius, status, overlay.
fn plain_keys(i: &InputState, keys: &KeyContext) -> Vec<Command> {
    let edit = Command::Edit;
    let mut out = Vec::new();
    let digits = [
        Key::Num1,
        Key::Num2,
        Key::Num3,
        Key::Num4,
        Key::Num5,
        Key::Num6,
        Key::Num7,
        Key::Num8,
        Key::Num9,
    ];
    for (k, key) in digits.iter().enumerate() {
        if let (true, Some(c)) = (i.key_pressed(*key), keys.classes.get(k)) {
            out.push(edit(EditCommand::SetClass(Some(c.clone()))));
        }
    }
    for (key, tool) in [
        (Key::C, Tool::Navigate),
        (Key::B, Tool::Brush),
        (Key::E, Tool::Eraser),
        (Key::F, Tool::Fill),
        (Key::P, Tool::Polygon),
        (Key::T, Tool::Prompt),
    ] {
        if i.key_pressed(key) {
            out.push(edit(EditCommand::SetTool(tool)));
        }
    }
    let r = keys.radius_mm;
    if i.key_pressed(Key::Plus) || i.key_pressed(Key::Equals) {
        out.push(edit(EditCommand::SetRadius(r + 0.5)));
    }
    if i.key_pressed(Key::Minus) {
        out.push(edit(EditCommand::SetRadius(r - 0.5)));
    }
    if i.key_pressed(Key::R) {
        out.push(edit(EditCommand::SetStatus(ReviewStatus::Reviewed)));
    }
    if i.key_pressed(Key::L) {
        out.push(edit(EditCommand::SetStatus(ReviewStatus::NeedsSecondLook)));
    }
    if i.key_pressed(Key::A) {
        let o = if keys.reference_opacity > 0.0 {
            0.0
        } else {
            0.5
        };
        out.push(Command::View(ViewCommand::SetReferenceOpacity(o)));
    }
    out
}
