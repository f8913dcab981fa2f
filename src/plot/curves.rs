//! Training-curve data: the loss of every step (total and each task's term) and the validation
//! figures of every epoch, as collected by `mriloop train` and the window's training panel.
//!
//! Invariant: points are appended in step order; a task's term is recorded only for the steps
//! that trained that task.

/// What the curves show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Training loss per step: (step, total loss).
    pub loss: Vec<(usize, f64)>,
    /// Segmentation loss (soft Dice + cross-entropy) of the steps that trained it.
    pub segmentation: Vec<(usize, f64)>,
    /// Classification cross-entropy of the steps that trained it.
    pub classification: Vec<(usize, f64)>,
    /// Per epoch (at its last step): (step, name, value) for validation figures.
    pub validation: Vec<(usize, String, f64)>,
}

impl Curves {
    /// Record a step's losses (each task's term where the step trained it).
    pub fn push_step(&mut self, step: usize, loss: &crate::model::LossTerms) {
        use crate::model::TaskMode;
        self.loss.push((step, loss.total));
        if loss.mode != TaskMode::ClassificationOnly {
            self.segmentation.push((step, loss.dice + loss.seg_ce));
        }
        if loss.mode != TaskMode::SegmentationOnly {
            self.classification.push((step, loss.class_ce));
        }
    }

    /// Record an epoch's validation figures at `step`: Dice per label (named by `label_name`)
    /// and class AUC. Returns the Dice values as `name value` texts for a report line.
    pub fn push_epoch(
        &mut self,
        step: usize,
        validation: &crate::model::Metrics,
        label_name: impl Fn(usize) -> String,
    ) -> Vec<String> {
        let mut dice = Vec::new();
        for (l, d) in validation.dice.iter().enumerate() {
            if let Some(d) = d {
                let name = label_name(l + 1);
                self.validation.push((step, format!("Dice {name}"), *d));
                dice.push(format!("{name} {d:.3}"));
            }
        }
        if let Some(a) = validation.class_auc {
            self.validation.push((step, "class AUC".into(), a));
        }
        dice
    }

    /// The validation figures' names, in order of first appearance.
    pub fn validation_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (_, n, _) in &self.validation {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        names
    }

    /// The (step, value) points of the validation figure `name`.
    pub fn validation_points(&self, name: &str) -> Vec<[f64; 2]> {
        self.validation
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(s, _, v)| [*s as f64, *v])
            .collect()
    }
}

/// Moving average of `w` points (the first points average what is there so far).
pub fn smooth(points: &[(usize, f64)], w: usize) -> Vec<[f64; 2]> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, (s, v)) in points.iter().enumerate() {
        sum += v;
        if i >= w {
            sum -= points[i - w].1;
        }
        out.push([*s as f64, sum / (i + 1).min(w) as f64]);
    }
    out
}

/// The moving-mean window of a loss series of `n` points (about 25 windows, at least `min`).
pub fn smoothing_window(n: usize, min: usize) -> usize {
    (n / 25).max(min)
}
