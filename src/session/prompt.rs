//! Prompted correction in the logic tier: the promptable model, the open case's prompt context
//! (its channels on the model's grid, read by a worker), the prompts so far (markers in world
//! mm for the views) and the requests a worker answers. A click becomes a request; its answer —
//! the target inside a window of the model's grid — lands through `apply` as one undoable,
//! journaled mask delta on the active label, respecting locks and paint-over; a newer prompt
//! supersedes a pending one (the older answer is dropped when it comes).
//!
//! Invariants: no reading or inference on the calling thread; an answer for another case or
//! an older request changes nothing; the prompts are dropped when the case, the label or the
//! model changes (they belong to one object).

use super::jobs::Gate;
use super::{Input, Message, Session};
use crate::edit::tools::set_object;
use crate::model::apply::PromptContext;
use crate::model::prompt::{prompt_on_grid, Prompt};
use crate::model::prompt_infer::{
    interaction_record, predict_prompted, PromptedWindow, MAX_WINDOW_PATCHES,
};
use crate::model::{MultiTaskUNet, TrainingConfig};
use crate::project::prompt_log::{PromptMm, PromptRecord};
use crate::volume::Volume;
use burn::prelude::Device;
use glam::DVec3;
use std::path::PathBuf;
use std::sync::Arc;

/// A loaded promptable model.
#[derive(Debug)]
pub struct PromptModel {
    /// Where its checkpoint is (shown to the user).
    pub source: String,
    /// Its configuration (sequences, spacing, window, prompt settings).
    pub config: TrainingConfig,
    /// The network.
    pub net: MultiTaskUNet,
    /// The device it runs on.
    pub device: Device,
}

/// A prompt's answer, with its record for the case's prompt log.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptAnswer {
    /// The object inside a window of the model's grid.
    pub window: PromptedWindow,
    /// The interaction as the prompt log keeps it.
    pub record: PromptRecord,
}

/// The session's prompting state.
#[derive(Debug, Default)]
pub struct PromptState {
    model: Option<Arc<PromptModel>>,
    model_loading: bool,
    /// The open case's id and its context on the model's grid.
    context: Option<(String, Arc<PromptContext>)>,
    context_loading: bool,
    /// The prompts of the current object, on the model's grid.
    prompts: Vec<Prompt>,
    /// The same in world mm (the views' markers, the prompt log's record).
    recorded: Vec<PromptMm>,
    /// Prompts made before the model or the context was ready.
    waiting: Vec<PromptMm>,
    /// The label the prompts segment.
    label: u8,
    /// The newest request issued, and whether its answer is still to come.
    issued: u64,
    pending: bool,
    /// Prompt workers pass it before predicting.
    gate: Gate,
}

impl PromptState {
    /// The loaded model's source, if any.
    pub fn model_source(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.source.as_str())
    }

    /// The prompts of the current object (world mm), for the views.
    pub fn markers(&self) -> &[PromptMm] {
        &self.recorded
    }

    /// The gate prompt workers pass before predicting (hold it to keep one mid-job).
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// Whether a prompt's answer is awaited (its worker issued).
    pub fn awaiting_answer(&self) -> bool {
        self.pending
    }

    /// Whether an answer is awaited (or the context or model is being read).
    pub fn busy(&self) -> bool {
        self.pending || self.context_loading || self.model_loading
    }

    /// Forget the current object's prompts.
    fn clear(&mut self) {
        self.prompts.clear();
        self.recorded.clear();
        self.waiting.clear();
    }
}

/// Read the promptable checkpoint in `dir` on the best device (a worker's job).
pub fn load_prompt_model(dir: &std::path::Path) -> Result<PromptModel, String> {
    let (device, _) = crate::model::choose_device("auto");
    let (config, net) = crate::model::load_checkpoint(dir, &device).map_err(|e| e.to_string())?;
    if config.prompt.is_none() {
        return Err(format!(
            "{}: not a promptable model (train one with --promptable)",
            dir.display()
        ));
    }
    Ok(PromptModel {
        source: dir.display().to_string(),
        config,
        net,
        device,
    })
}

/// The newest promptable checkpoint among `project`'s versions (newest first), if any.
pub fn newest_promptable(project: &crate::project::Project) -> Option<PathBuf> {
    project.manifest.models.iter().rev().find_map(|v| {
        let dir = project.root().join(&v.checkpoint);
        if v.promptable {
            return Some(dir);
        }
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let config: TrainingConfig = serde_json::from_str(&text).ok()?;
        config.prompt.is_some().then_some(dir)
    })
}

/// The voxels of `mask` holding `label`, read onto the model's grid `ctx` within `reach`
/// voxels of `centre_vox` (false elsewhere: a prompt's window never reaches there).
fn object_on_model_grid(
    mask: &Volume<u8>,
    label: u8,
    ctx: &PromptContext,
    centre_vox: [usize; 3],
    reach: [usize; 3],
) -> Vec<bool> {
    let d = ctx.dims;
    let mut out = vec![false; d[0] * d[1] * d[2]];
    let lo = [0, 1, 2].map(|a| centre_vox[a].saturating_sub(reach[a]));
    let hi = [0, 1, 2].map(|a| (centre_vox[a] + reach[a] + 1).min(d[a]));
    for k in lo[2]..hi[2] {
        for j in lo[1]..hi[1] {
            for i in lo[0]..hi[0] {
                let mm = ctx
                    .affine
                    .vox_to_mm(DVec3::new(i as f64, j as f64, k as f64));
                let Some(v) = mask.affine().mm_to_vox(mm).map(|v| v.round()) else {
                    continue;
                };
                if v.min_element() >= 0.0 {
                    let at = [v.x as usize, v.y as usize, v.z as usize];
                    out[i + d[0] * (j + d[1] * k)] = mask.get(at) == Some(label);
                }
            }
        }
    }
    out
}

/// The case voxels of `mask`'s grid inside `window` (on the model grid `ctx`; a case voxel
/// belongs to the window whose nearest model voxel does): those where the answer, read
/// trilinearly (the window's edge repeated outside it), is at least one half — smoother than
/// its nearest voxel when the grids differ — and the others.
fn answer_on_case_grid(
    mask: &Volume<u8>,
    ctx: &PromptContext,
    window: &PromptedWindow,
) -> (Vec<[usize; 3]>, Vec<[usize; 3]>) {
    let o = window.origin_vox;
    let (min, max) = crate::edit::tools::world_box_of_voxels(&ctx.affine, o, window.dims);
    let region = crate::edit::tools::voxel_box_of_world_box(mask.affine(), mask.dims3(), min, max);
    let target: Vec<f32> = window
        .target
        .iter()
        .map(|t| f32::from(u8::from(*t)))
        .collect();
    let last = DVec3::from_array(window.dims.map(|d| d.saturating_sub(1) as f64));
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for v in region.iter() {
        let mm = mask
            .affine()
            .vox_to_mm(DVec3::new(v[0] as f64, v[1] as f64, v[2] as f64));
        let Some(m) = ctx.affine.mm_to_vox(mm) else {
            continue;
        };
        let local = m - DVec3::from_array(o.map(|x| x as f64));
        let near = local.round();
        if (0..3).any(|a| near[a] < 0.0 || near[a] >= window.dims[a] as f64) {
            continue;
        }
        let at = local.clamp(DVec3::ZERO, last);
        match crate::volume::resample::trilinear(&target, window.dims, at) >= 0.5 {
            true => on.push(v),
            false => off.push(v),
        }
    }
    (on, off)
}

impl Session {
    /// The prompting state (markers, model, busy).
    pub fn prompts(&self) -> &PromptState {
        &self.prompt
    }

    /// Start reading a promptable model: `dir`, or the project's newest promptable version
    /// (found by the worker: it reads the versions' configurations).
    pub(super) fn request_prompt_model(&mut self, dir: Option<PathBuf>) {
        let project = match (&dir, &self.project) {
            (Some(_), _) => None,
            (None, Some(p)) => Some(p.clone()),
            (None, None) => {
                return self.message(Message::Error(
                    "prompting needs a project with a promptable model version".into(),
                ))
            }
        };
        self.prompt.model_loading = true;
        self.spawn_worker("prompt model", move || {
            let dir = dir.or_else(|| project.as_ref().and_then(newest_promptable));
            let model = match dir {
                Some(dir) => load_prompt_model(&dir).map(Arc::new),
                None => Err(
                    "no promptable model in this project: train one (`mriloop train \
                             PROJECT --promptable`)"
                        .to_string(),
                ),
            };
            Input::PromptModel(model)
        });
    }

    /// A promptable model was read (or not); clicks made meanwhile go out.
    pub(super) fn prompt_model_read(&mut self, model: Result<Arc<PromptModel>, String>) {
        self.prompt.model_loading = false;
        let waiting = std::mem::take(&mut self.prompt.waiting);
        match model {
            Ok(m) => {
                self.prompt.clear();
                self.prompt.context = None;
                let source = m.source.clone();
                self.prompt.model = Some(m);
                self.message(Message::Notice(format!("prompting with {source}")));
                for prompt in waiting {
                    self.prompt_given(prompt);
                }
            }
            Err(e) => self.message(Message::Error(e)),
        }
    }

    /// A prompt with the Prompt tool: a click on the object or off it, a box, a scribble.
    pub(super) fn prompt_given(&mut self, prompt: PromptMm) {
        let label = self.tools.label;
        if self.prompt.model.is_none() {
            if !self.prompt.model_loading {
                self.request_prompt_model(None);
            }
            self.prompt.waiting.push(prompt);
            return;
        }
        let Some(case_id) = self.open.as_ref().map(|o| o.case_id.clone()) else {
            return;
        };
        if self.prompt.label != label {
            self.prompt.clear();
            self.prompt.label = label;
        }
        match &self.prompt.context {
            Some((id, ctx)) if *id == case_id => {
                let ctx = ctx.clone();
                self.add_prompt(&ctx, prompt, true);
            }
            _ => {
                self.prompt.waiting.push(prompt);
                self.request_prompt_context(case_id);
            }
        }
    }

    /// Start reading the open case's channels on the model's grid.
    fn request_prompt_context(&mut self, case_id: String) {
        if self.prompt.context_loading {
            return;
        }
        let (Some(model), Some(project), Some(index)) = (
            self.prompt.model.clone(),
            self.project.as_ref(),
            self.open.as_ref().and_then(|o| o.case_index),
        ) else {
            self.prompt.clear();
            self.message(Message::Error(
                "prompting needs a project case (open the files as a project)".into(),
            ));
            return;
        };
        let Some(case) = project.manifest.cases.get(index).cloned() else {
            return;
        };
        let project = project.clone();
        self.prompt.context_loading = true;
        self.spawn_worker("prompt context", move || {
            let context = crate::model::apply::prompt_context(&project, &case, &model.config)
                .map(Arc::new)
                .map_err(|e| e.to_string());
            Input::PromptContext { case_id, context }
        });
    }

    /// The open case's prompt context was read (or not): clicks waiting for it go out.
    pub(super) fn prompt_context_read(
        &mut self,
        case_id: String,
        context: Result<Arc<PromptContext>, String>,
    ) {
        self.prompt.context_loading = false;
        match context {
            Ok(ctx) => {
                self.prompt.context = Some((case_id, ctx.clone()));
                let waiting = std::mem::take(&mut self.prompt.waiting);
                let n = waiting.len();
                for (k, prompt) in waiting.into_iter().enumerate() {
                    self.add_prompt(&ctx, prompt, k + 1 == n);
                }
            }
            Err(e) => {
                self.prompt.clear();
                self.message(Message::Error(format!(
                    "reading the case for prompting: {e}"
                )));
            }
        }
    }

    /// Add `prompt` (and its marker) when it meets the image; with `ask`, request the object
    /// for every prompt so far.
    fn add_prompt(&mut self, ctx: &Arc<PromptContext>, prompt: PromptMm, ask: bool) {
        let Some(on_grid) = prompt_on_grid(&prompt, &ctx.affine, ctx.dims) else {
            self.message(Message::Notice("the prompt is outside the image".into()));
            return;
        };
        self.prompt.recorded.push(prompt);
        self.prompt.prompts.push(on_grid);
        if ask {
            self.issue_prompt_request(ctx.clone());
        }
    }

    /// Ask a worker for the object given every prompt so far (superseding any pending ask).
    fn issue_prompt_request(&mut self, ctx: Arc<PromptContext>) {
        let (Some(model), Some(open)) = (self.prompt.model.clone(), self.open.as_ref()) else {
            return;
        };
        let Some(mask) = open.reference.clone() else {
            return;
        };
        let Some((lo, hi)) = self.prompt.prompts.last().and_then(Prompt::bounds_vox) else {
            return;
        };
        self.prompt.issued += 1;
        self.prompt.pending = true;
        let (request, label, case_id) =
            (self.prompt.issued, self.prompt.label, open.case_id.clone());
        let prompts = self.prompt.prompts.clone();
        let recorded = self.prompt.recorded.clone();
        let gate = self.prompt.gate.clone();
        self.spawn_worker("prompt", move || {
            gate.pass();
            let centre = [0, 1, 2].map(|a| (lo[a] + hi[a]) / 2);
            let reach =
                [0, 1, 2].map(|a| model.config.window[a] * MAX_WINDOW_PATCHES + hi[a] - lo[a]);
            let current = object_on_model_grid(&mask, label, &ctx, centre, reach);
            let answer = predict_prompted(
                &model.net,
                &ctx.channels,
                ctx.dims,
                &prompts,
                &current,
                &model.config,
                &model.device,
            )
            .map(|window| {
                let grid = (&ctx.affine, ctx.dims);
                let record =
                    interaction_record(&model.source, label, recorded, grid, &current, &window);
                Box::new(PromptAnswer { window, record })
            })
            .map_err(|e| e.to_string());
            Input::PromptAnswer {
                case_id,
                request,
                answer,
            }
        });
    }

    /// A worker's answer: the newest request's object merges into the mask as one undo step.
    pub(super) fn prompt_answered(
        &mut self,
        case_id: &str,
        request: u64,
        answer: Result<Box<PromptAnswer>, String>,
    ) {
        // Only the newest request's first answer counts.
        if request != self.prompt.issued || !self.prompt.pending {
            return;
        }
        self.prompt.pending = false;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return self.message(Message::Error(format!("prompt: {e}"))),
        };
        let (label, rules) = (self.prompt.label, self.tools.rules.clone());
        let Some((_, ctx)) = self.prompt.context.clone() else {
            return;
        };
        let Some(open) = self.open.as_mut().filter(|o| o.case_id == case_id) else {
            return;
        };
        let Some(mask) = open.reference.as_mut() else {
            return;
        };
        let (on, off) = answer_on_case_grid(mask, &ctx, &answer.window);
        let delta = set_object(mask, &on, &off, label, &rules);
        if let (Some(store), Some(project)) = (&open.edits.store, &self.project) {
            let path = project.resolve(&crate::project::prompt_log::prompt_log_rel(case_id));
            store.append_prompt_record(path, answer.record);
        }
        self.apply_mask_delta(delta, false);
    }

    /// The Prompt tool's drag ended: a scribble along it (in scribble mode) or the box it
    /// spans; a drag of one point is no prompt.
    pub(super) fn end_prompt_drag(&mut self) {
        let t = &mut self.tools;
        let path = std::mem::take(&mut t.prompt_drag);
        t.prompt_drag_view = None;
        let (Some(first), Some(last)) = (path.first(), path.last()) else {
            return;
        };
        if path.len() < 2 {
            return;
        }
        let prompt = match t.prompt_scribble {
            true => PromptMm::Scribble {
                path_mm: path.iter().map(|p| p.to_array()).collect(),
                include: t.prompt_drag_include,
            },
            false => PromptMm::Box {
                a_mm: first.to_array(),
                b_mm: last.to_array(),
            },
        };
        self.prompt_given(prompt);
    }

    /// Drop the prompts (the object is done, or the user starts over).
    pub(super) fn clear_prompts(&mut self) {
        self.prompt.clear();
        self.prompt.pending = false;
        self.prompt.issued += 1;
    }

    /// A newer promptable model exists: drop the loaded one (and its prompts).
    pub(super) fn forget_prompt_model(&mut self) {
        self.forget_prompt_case();
        self.prompt.model = None;
    }

    /// The open case changed: its context and prompts no longer apply.
    pub(super) fn forget_prompt_case(&mut self) {
        self.clear_prompts();
        self.prompt.context = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    /// The voxels of a ball of `radius_mm` about `centre_mm` on a `dims`³ grid of `spacing` mm.
    fn ball(dims: usize, spacing: f64, centre_mm: f64, radius_mm: f64) -> Vec<bool> {
        let mut out = Vec::with_capacity(dims * dims * dims);
        for k in 0..dims {
            for j in 0..dims {
                for i in 0..dims {
                    let d = DVec3::new(i as f64, j as f64, k as f64) * spacing - centre_mm;
                    out.push(d.length() <= radius_mm);
                }
            }
        }
        out
    }

    #[test]
    fn an_answer_on_a_coarser_grid_lands_as_a_smooth_object_on_the_case_grid() {
        let (coarse, fine) = (
            Affine::from_spacing([2.0; 3]),
            Affine::from_spacing([1.0; 3]),
        );
        let ctx = PromptContext {
            channels: Vec::new(),
            dims: [16; 3],
            affine: coarse,
        };
        let (centre, radius) = (15.3, 6.2);
        let window = PromptedWindow {
            origin_vox: [0; 3],
            dims: [16; 3],
            target: ball(16, 2.0, centre, radius),
        };
        let mask = Volume::new([32, 32, 32, 1], fine, vec![0u8; 32 * 32 * 32]).unwrap();
        let (on, off) = answer_on_case_grid(&mask, &ctx, &window);
        assert_eq!(
            on.len() + off.len(),
            31 * 31 * 31,
            "the window's case voxels"
        );
        let truth = ball(32, 1.0, centre, radius);
        let index = |v: &[usize; 3]| v[0] + 32 * (v[1] + 32 * v[2]);
        let dice = |set: &[[usize; 3]]| {
            let hits = set.iter().filter(|v| truth[index(v)]).count();
            let n = truth.iter().filter(|t| **t).count();
            2.0 * hits as f64 / (set.len() + n) as f64
        };
        // The nearest coarse voxel of each case voxel, for comparison.
        let nearest: Vec<[usize; 3]> = on
            .iter()
            .chain(&off)
            .filter(|v| {
                let c = v.map(|x| ((x as f64 / 2.0).round() as usize).min(15));
                window.target[c[0] + 16 * (c[1] + 16 * c[2])]
            })
            .copied()
            .collect();
        let (smooth, near) = (dice(&on), dice(&nearest));
        println!("Dice to the ball: trilinear {smooth:.3}, nearest {near:.3}");
        assert!(
            smooth > near + 0.02,
            "trilinear {smooth:.3} vs nearest {near:.3}"
        );
    }
}
