//! The training panel's plan: made from the open project's fingerprint in a worker thread
//! (reading every case is I/O the UI thread never does), shown with the run's settings, each
//! number editable. A value the user sets wins over the plan's, as `mriloop train`'s flags do,
//! and a reset button gives the plan's back; the run then starts from this plan and these
//! choices (`RunPlan::On`), so what the panel shows is what trains.
//!
//! Invariants: a plan belongs to the project and the backend it was made for: it is dropped
//! when either changes, and made again only when the panel is shown; a failed plan is not
//! retried until the user asks (Re-plan).

use super::training::TrainCommand;
use super::Command;
use crate::model::fingerprint::Fingerprint;
use crate::model::plan::{plan, Plan};
use crate::model::planned::PlanOverrides;
use crate::project::Project;
use std::sync::mpsc::{channel, Receiver, TryRecvError};

/// Where the panel's plan is.
#[derive(Debug, Default)]
pub enum PlanState {
    /// Not made (no project, panel hidden, or dropped).
    #[default]
    NotMade,
    /// A worker is reading the cases.
    Making(Receiver<Result<Plan, String>>),
    /// Made.
    Ready(Box<Plan>),
    /// The worker failed (a case could not be read…).
    Failed(String),
}

/// The panel's plan and the backend it was made for.
#[derive(Debug, Default)]
pub struct PlanPanel {
    /// Where it is.
    pub state: PlanState,
    /// The backend (`auto`, `cpu`, `gpu`) it is made for.
    pub backend: String,
}

impl PlanPanel {
    /// The plan, when made.
    pub fn ready(&self) -> Option<&Plan> {
        match &self.state {
            PlanState::Ready(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a plan for `backend` should be made now.
    pub fn wanted(&self, backend: &str) -> bool {
        matches!(self.state, PlanState::NotMade) || self.backend != backend
    }

    /// Drop the plan (the project or its cases changed).
    pub fn reset(&mut self) {
        self.state = PlanState::NotMade;
    }

    /// Make the plan of `project` for `backend` in a worker thread; `wake` after it is done.
    pub fn start(&mut self, project: Project, backend: &str, wake: impl Fn() + Send + 'static) {
        let (tx, rx) = channel();
        let device = crate::model::apply::device_class(backend);
        let spawned = std::thread::Builder::new()
            .name("mriloop-plan".into())
            .spawn(move || {
                let made = crate::background::run_in_background(|| {
                    crate::worker::catch_worker("the plan", || {
                        Fingerprint::of(&project).map(|fp| plan(&fp, device))
                    })
                });
                let _ = tx.send(match made {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                });
                wake();
            });
        self.backend = backend.to_string();
        self.state = match spawned {
            Ok(_) => PlanState::Making(rx),
            Err(e) => PlanState::Failed(format!("could not start the plan's worker: {e}")),
        };
    }

    /// Take the worker's result if it came (never waits).
    pub fn poll(&mut self) {
        if let PlanState::Making(rx) = &self.state {
            self.state = match rx.try_recv() {
                Ok(Ok(p)) => PlanState::Ready(Box::new(p)),
                Ok(Err(e)) => PlanState::Failed(e),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    PlanState::Failed("the plan's worker ended without a result".into())
                }
            };
        }
    }
}

/// The plan's numbers, each editable into `choices`; its sampling, balance and warnings as text;
/// a run that starts a `promptable` network is shown its plan (rule 12).
pub fn plan_form(
    ui: &mut egui::Ui,
    panel: &PlanPanel,
    choices: &mut PlanOverrides,
    promptable: bool,
    out: &mut Vec<Command>,
) {
    ui.horizontal(|ui| {
        ui.strong("Plan");
        if ui
            .small_button("Re-plan")
            .on_hover_text("read the cases again and make the plan anew")
            .clicked()
        {
            out.push(Command::Train(TrainCommand::Replan));
        }
    });
    let plan = match &panel.state {
        PlanState::Ready(p) => p,
        PlanState::Making(_) => {
            ui.label("making the plan: reading the cases…");
            return;
        }
        PlanState::Failed(e) => {
            ui.colored_label(ui.visuals().warn_fg_color, format!("no plan: {e}"));
            return;
        }
        PlanState::NotMade => return,
    };
    let shown;
    let plan = match promptable {
        true => {
            shown = plan.clone().for_prompting();
            &shown
        }
        false => plan,
    };
    egui::Grid::new("training_plan")
        .num_columns(2)
        .show(ui, |ui| plan_rows(ui, plan, choices));
    for w in &plan.warnings {
        ui.colored_label(ui.visuals().warn_fg_color, format!("warning: {w}"));
    }
}

/// One row per plan setting.
fn plan_rows(ui: &mut egui::Ui, plan: &Plan, choices: &mut PlanOverrides) {
    let [x, y, z] = plan.spacing_mm;
    ui.label("voxel size");
    ui.label(format!("{x:.2} × {y:.2} × {z:.2} mm"));
    ui.end_row();
    let [px, py, pz] = plan.patch;
    let patch_text = format!("{px}×{py}×{pz}, {} levels", plan.depth);
    choice_row(
        ui,
        "patch",
        (plan.patch[0], patch_text.as_str()),
        &mut choices.patch,
        8..=192,
    );
    if let Some(e) = &plan.class_evidence {
        ui.label("class");
        ui.label(format!(
            "from the predicted {} volume ({} if present)",
            e.label_names.join(" + "),
            e.present_class
        ))
        .on_hover_text("The reference masks tell the class: no class steps unless you set them.");
        ui.end_row();
    }
    let [cx, cy, cz] = plan.class_window;
    let [sx, sy, sz] = plan.class_stride;
    let crop_text = if plan.class_stride == [1, 1, 1] {
        format!("{cx}×{cy}×{cz}")
    } else {
        format!("{cx}×{cy}×{cz} of {sx}×{sy}×{sz} blocks")
    };
    let crop = (plan.class_window[0], crop_text.as_str());
    choice_row(ui, "class crop", crop, &mut choices.class_window, 8..=256);
    number_row(
        ui,
        "class step every",
        plan.class_every,
        &mut choices.class_every,
        1..=100,
    );
    number_row(ui, "batch", plan.batch, &mut choices.batch, 1..=32);
    number_row(
        ui,
        "width",
        plan.base_channels,
        &mut choices.base_channels,
        1..=64,
    );
    number_row(ui, "epochs", plan.epochs, &mut choices.epochs, 1..=1000);
    // The plan's steps per epoch follow the run's epochs (the user's, if set).
    let planned_steps = PlanOverrides {
        epochs: choices.epochs,
        ..PlanOverrides::default()
    }
    .steps_per_epoch(plan);
    number_row(
        ui,
        "steps/epoch",
        planned_steps,
        &mut choices.steps_per_epoch,
        1..=10_000,
    );
    text_rows(ui, plan);
}

/// The plan's settings that are shown, not edited: sampling, class balance, augmentation.
fn text_rows(ui: &mut egui::Ui, plan: &Plan) {
    let weights: Vec<String> = plan
        .label_weights
        .iter()
        .map(|(v, w)| format!("{v}: {w:.2}"))
        .collect();
    ui.label("foreground");
    ui.label(format!(
        "{:.0} % of patches; labels {}",
        plan.foreground_fraction * 100.0,
        weights.join(", ")
    ));
    ui.end_row();
    let classes: Vec<String> = plan
        .class_weights
        .iter()
        .map(|(c, w)| format!("{c} {w:.2}"))
        .collect();
    ui.label("class weights");
    ui.label(classes.join(", "));
    ui.end_row();
    ui.label("augmentation");
    ui.label(format!("{:?}", plan.augmentation).to_lowercase());
    ui.end_row();
}

/// A plain number's row (`choice_row` with the plan's value as its text).
fn number_row(
    ui: &mut egui::Ui,
    name: &str,
    planned: usize,
    choice: &mut Option<usize>,
    range: std::ops::RangeInclusive<usize>,
) {
    let text = planned.to_string();
    choice_row(ui, name, (planned, text.as_str()), choice, range);
}

/// A setting: its value (the user's, else the plan's) in a drag field; when the user's, the
/// plan's beside it and a button back to it.
fn choice_row(
    ui: &mut egui::Ui,
    name: &str,
    (planned, planned_text): (usize, &str),
    choice: &mut Option<usize>,
    range: std::ops::RangeInclusive<usize>,
) {
    ui.label(name);
    ui.horizontal(|ui| {
        let mut value = choice.unwrap_or(planned);
        let field = egui::DragValue::new(&mut value).range(range);
        if ui.add(field).on_hover_text(name).changed() {
            *choice = Some(value);
        }
        match choice {
            Some(_) => {
                ui.weak(format!("plan: {planned_text}"));
                if ui
                    .small_button("reset")
                    .on_hover_text(format!("back to the plan's {name}"))
                    .clicked()
                {
                    *choice = None;
                }
            }
            None if planned_text != planned.to_string() => {
                ui.weak(planned_text);
            }
            None => {}
        }
    });
    ui.end_row();
}
