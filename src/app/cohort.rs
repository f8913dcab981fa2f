//! The cohort view: how each model version did on the cases it predicted and a person then
//! reviewed — Dice and volume error of its raw prediction against the corrected mask, and class
//! AUC, accuracy and confusion against the corrected class — as a table per model, exportable as
//! CSV (one row per case).
//!
//! Invariants: the masks are read in a background thread; the table only reads the project
//! snapshot it was started on; the CSV is written atomically.

use super::{Command, MriloopApp};
use crate::model::{class_figures, dice_and_volume_error};
use crate::project::{Project, ReviewStatus};
use std::sync::mpsc::{channel, Receiver, TryRecvError};

/// One reviewed case's agreement with the model version that predicted it.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortRow {
    /// Case id.
    pub case_id: String,
    /// The version that made the prediction (`—` when unknown).
    pub model: String,
    /// Dice per foreground label (index 0 = label 1) where the corrected mask has it.
    pub dice: Vec<Option<f64>>,
    /// Predicted minus corrected volume (mm³) per foreground label.
    pub volume_error_mm3: Vec<f64>,
    /// Corrected class index.
    pub class: Option<usize>,
    /// Predicted class probabilities.
    pub class_probabilities: Vec<f32>,
    /// Why the case could not be compared.
    pub error: Option<String>,
}

/// Figures of one model over its reviewed cases.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// Version id.
    pub model: String,
    /// Cases compared.
    pub cases: usize,
    /// Mean Dice per label.
    pub dice: Vec<Option<f64>>,
    /// Mean absolute volume error (mm³) per label.
    pub abs_volume_error_mm3: Vec<f64>,
    /// Class AUC.
    pub class_auc: Option<f64>,
    /// Class accuracy.
    pub class_accuracy: f64,
    /// Confusion counts: `[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// The cohort table being computed, or computed.
#[derive(Default)]
pub struct CohortState {
    rx: Option<Receiver<CohortRow>>,
    /// Rows so far.
    pub rows: Vec<CohortRow>,
    /// Label names (index = value).
    pub labels: Vec<String>,
    /// Class names.
    pub classes: Vec<String>,
}

impl CohortState {
    /// Start comparing the reviewed cases of `project` in a background thread.
    pub fn start(project: Project, wake: Box<dyn Fn() + Send>) -> Self {
        let (tx, rx) = channel();
        let labels = project.manifest.labels.names_by_value();
        let max = labels.len() - 1;
        let classes = project.manifest.classes.clone();
        std::thread::spawn(move || {
            for case in &project.manifest.cases {
                if case.review != ReviewStatus::Reviewed || case.predicted_mask.is_none() {
                    continue;
                }
                if tx.send(row_of(&project, case, max)).is_err() {
                    return;
                }
                wake();
            }
        });
        Self {
            rx: Some(rx),
            rows: Vec::new(),
            labels,
            classes,
        }
    }

    /// Whether rows are still coming.
    pub fn is_running(&self) -> bool {
        self.rx.is_some()
    }

    /// Take the rows computed so far (never waits).
    pub fn poll(&mut self) {
        if let Some(rx) = &self.rx {
            loop {
                match rx.try_recv() {
                    Ok(r) => self.rows.push(r),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.rx = None;
                        break;
                    }
                }
            }
        }
    }

    /// Per-model figures, in version order of first appearance.
    pub fn summaries(&self) -> Vec<ModelSummary> {
        let mut models: Vec<String> = Vec::new();
        for r in &self.rows {
            if !models.contains(&r.model) {
                models.push(r.model.clone());
            }
        }
        let labels = self.labels.len().saturating_sub(1);
        let k = self.classes.len();
        models
            .into_iter()
            .map(|m| {
                let rows: Vec<&CohortRow> = self
                    .rows
                    .iter()
                    .filter(|r| r.model == m && r.error.is_none())
                    .collect();
                let mean =
                    |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
                let dice = (0..labels)
                    .map(|l| {
                        mean(
                            rows.iter()
                                .filter_map(|r| r.dice.get(l).copied().flatten())
                                .collect(),
                        )
                    })
                    .collect();
                let abs_volume_error_mm3 = (0..labels)
                    .map(|l| {
                        mean(
                            rows.iter()
                                .filter_map(|r| r.volume_error_mm3.get(l))
                                .map(|v| v.abs())
                                .collect(),
                        )
                        .unwrap_or(0.0)
                    })
                    .collect();
                let with_class: Vec<(&[f32], usize)> = rows
                    .iter()
                    .filter_map(|r| r.class.map(|c| (r.class_probabilities.as_slice(), c)))
                    .filter(|(p, _)| p.len() == k)
                    .collect();
                let probs: Vec<&[f32]> = with_class.iter().map(|(p, _)| *p).collect();
                let truth: Vec<usize> = with_class.iter().map(|(_, c)| *c).collect();
                let (class_accuracy, class_auc) = class_figures(&probs, &truth, k);
                let mut confusion = vec![vec![0; k]; k];
                for (p, t) in &with_class {
                    let pred = p
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    if *t < k {
                        confusion[*t][pred] += 1;
                    }
                }
                ModelSummary {
                    model: m,
                    cases: rows.len(),
                    dice,
                    abs_volume_error_mm3,
                    class_auc,
                    class_accuracy,
                    confusion,
                }
            })
            .collect()
    }

    /// The rows as CSV: case, model, then Dice and volume error per label, class, probabilities.
    pub fn csv(&self) -> String {
        let names = &self.labels[1.min(self.labels.len())..];
        let mut head = vec!["case".to_string(), "model".into()];
        head.extend(names.iter().map(|n| format!("dice_{n}")));
        head.extend(names.iter().map(|n| format!("volume_error_mm3_{n}")));
        head.push("class".into());
        head.extend(self.classes.iter().map(|c| format!("p_{c}")));
        head.push("error".into());
        let mut out = head.join(",") + "\n";
        for r in &self.rows {
            let mut f = vec![r.case_id.clone(), r.model.clone()];
            f.extend((0..names.len()).map(|l| {
                r.dice
                    .get(l)
                    .copied()
                    .flatten()
                    .map_or(String::new(), |d| format!("{d:.4}"))
            }));
            f.extend((0..names.len()).map(|l| {
                r.volume_error_mm3
                    .get(l)
                    .map_or(String::new(), |v| format!("{v:.1}"))
            }));
            f.push(
                r.class
                    .and_then(|c| self.classes.get(c).cloned())
                    .unwrap_or_default(),
            );
            f.extend((0..self.classes.len()).map(|c| {
                r.class_probabilities
                    .get(c)
                    .map_or(String::new(), |p| format!("{p:.4}"))
            }));
            f.push(
                r.error
                    .clone()
                    .unwrap_or_default()
                    .replace([',', '\n'], ";"),
            );
            out.push_str(&(f.join(",") + "\n"));
        }
        out
    }

    /// Write the CSV atomically.
    pub fn write_csv(&self, path: &std::path::Path) -> Result<(), String> {
        crate::atomic::write_atomic(path, self.csv().as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn row_of(project: &Project, case: &crate::project::Case, labels: usize) -> CohortRow {
    let mut row = CohortRow {
        case_id: case.id.clone(),
        model: case.predicted_by.clone().unwrap_or_else(|| "—".into()),
        dice: vec![None; labels],
        volume_error_mm3: vec![0.0; labels],
        class: case
            .class_label
            .as_ref()
            .and_then(|c| project.manifest.classes.iter().position(|x| x == c)),
        class_probabilities: case.predicted_class.clone().unwrap_or_default(),
        error: None,
    };
    let masks = (|| {
        let r = project.load_reference_mask(case)?.ok_or_else(|| {
            crate::project::ProjectError::Invalid {
                path: project.manifest_path(),
                problem: format!("case {} has no corrected mask", case.id),
            }
        })?;
        let p = project.load_mask(case.predicted_mask.as_deref().unwrap_or_default())?;
        Ok::<_, crate::project::ProjectError>((r, p))
    })();
    match masks {
        Ok((r, p)) if r.dims3() == p.dims3() => {
            (row.dice, row.volume_error_mm3) = dice_and_volume_error(&r, &p, labels);
        }
        Ok(_) => row.error = Some("predicted and corrected masks are on different grids".into()),
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}

/// The cohort window: a table per model and the confusion matrix, with CSV export.
pub fn cohort_window(ctx: &egui::Context, app: &MriloopApp, out: &mut Vec<Command>) {
    use super::training::TrainCommand;
    let c = &app.training().cohort;
    let mut open = true;
    egui::Window::new("Cohort: model predictions vs corrections")
        .open(&mut open)
        .default_width(640.0)
        .show(ctx, |ui| {
            ui.label(format!(
                "{} reviewed cases compared{}",
                c.rows.len(),
                if c.is_running() { " (reading…)" } else { "" }
            ));
            let names = &c.labels[1.min(c.labels.len())..];
            egui::Grid::new("cohort grid").striped(true).show(ui, |ui| {
                ui.strong("model");
                ui.strong("cases");
                for n in names {
                    ui.strong(format!("Dice {n}"));
                }
                ui.strong("|vol err| mm³ (mean over labels)");
                ui.strong("class AUC");
                ui.strong("accuracy");
                ui.strong("confusion [true][pred]");
                ui.end_row();
                for s in c.summaries() {
                    ui.label(&s.model);
                    ui.label(s.cases.to_string());
                    for d in &s.dice {
                        ui.label(d.map_or("—".into(), |d| format!("{d:.3}")));
                    }
                    let v = &s.abs_volume_error_mm3;
                    ui.label(format!(
                        "{:.1}",
                        v.iter().sum::<f64>() / v.len().max(1) as f64
                    ));
                    ui.label(s.class_auc.map_or("—".into(), |a| format!("{a:.3}")));
                    // No case with a class (a project without classes): no accuracy.
                    let classified: usize = s.confusion.iter().flatten().sum();
                    ui.label(match classified {
                        0 => "—".to_string(),
                        _ => format!("{:.2}", s.class_accuracy),
                    });
                    ui.label(format!("{:?}", s.confusion));
                    ui.end_row();
                }
            });
            if ui.button("Export CSV…").clicked() {
                out.push(Command::Train(TrainCommand::ExportCohortDialog));
            }
        });
    if !open {
        out.push(Command::Train(TrainCommand::ToggleCohort));
    }
}
