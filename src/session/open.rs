//! Opening: a project read by a worker becomes the session's project; a loaded case becomes the
//! open case (view state carried over from the previous case where it still applies, edits and
//! journal set up, recovered edits applied, agreement computed); imported sequences join the
//! manifest.
//!
//! Invariants: the previous case is saved (project) or autosaved to its working copy (loose
//! files) before it is replaced; opening loose files closes the project.

use super::edit::CaseEdits;
use super::load::{CaseSource, LoadedCase};
use super::persist::LooseFiles;
use super::time::TimeView;
use super::view::{SequenceDisplay, ViewerState};
use super::{Message, OpenCase, Session};
use crate::edit::{Agreement, Edit};
use crate::project::store::CaseStore;
use crate::project::{journal, InputForm, Project};
use crate::render::{Colormap, GridInfo};
use crate::volume::Volume;

impl Session {
    /// A project was read: it replaces the open one (the open case is saved first).
    pub(super) fn project_opened(&mut self, p: Project) {
        self.close_case(false);
        self.open = None;
        self.labels = p.manifest.labels.clone();
        self.project = Some(p);
        self.pending.project = true;
    }

    /// Close the project and its open case.
    pub(super) fn close_project(&mut self) {
        self.close_case(false);
        self.open = None;
        self.project = None;
        self.labels = crate::project::LabelTable::default();
        self.pending.project = true;
    }

    /// A case was loaded: it becomes the open case.
    pub(super) fn case_loaded(
        &mut self,
        mut loaded: LoadedCase,
        case_index: Option<usize>,
        source: &CaseSource,
    ) {
        if loaded.images.is_empty() {
            return self.message(Message::Error(format!(
                "case {} has no image",
                loaded.case_id
            )));
        }
        self.close_case(false);
        self.forget_prompt_case();
        if case_index.is_none() && self.project.is_some() {
            self.project = None;
            self.labels = crate::project::LabelTable::default();
            self.pending.project = true;
        }
        if case_index.is_none() {
            self.loose_label_names(loaded.label_names.take());
        }
        // A label table recovered from the journal is in force before the colours go up.
        if let (Some(rec), Some(p)) = (&loaded.recovered, self.project.as_mut()) {
            for e in &rec.edits {
                journal::apply_project_record(&mut p.manifest, e, true);
            }
            self.labels = p.manifest.labels.clone();
        }
        let viewer = self.viewer_for(&loaded, case_index);
        let labels_grid = labels_grid_of(&loaded);
        let mut edits = self.edits_for(&loaded, case_index, source);
        if let Some(rec) = loaded.recovered.take() {
            self.recovered(&loaded.case_id, case_index, &rec, &mut edits);
        }
        if loaded.from_working_copy {
            edits.unsaved_for_user = true;
            if let Some(l) = &edits.loose {
                self.message(Message::Info(format!(
                    "{}: unsaved edits from an earlier session were recovered (kept in {}). \
                     Save (Ctrl+S) writes them into {}.",
                    loaded.case_id,
                    l.work_dir.display(),
                    l.mask_path.display()
                )));
            }
        }
        let agreement = agreement_of(loaded.reference.as_ref(), loaded.predicted.as_ref());
        let time = loaded
            .images
            .iter()
            .enumerate()
            .find_map(|(i, img)| Some(TimeView::new(i, img.series.clone()?)));
        self.open = Some(OpenCase {
            case_id: loaded.case_id,
            layers: loaded.images.into_iter().map(layer_of).collect(),
            reference: loaded.reference,
            predicted: loaded.predicted,
            predicted_revision: 0,
            viewer,
            case_index,
            labels_grid,
            edits,
            agreement,
            time,
        });
        self.pending.case_opened = true;
    }

    /// Loose files: the label names found beside the label file name its labels (said in a
    /// message); without them, or when they cannot be read (said too), the labels are
    /// `label N` in the default colours.
    fn loose_label_names(
        &mut self,
        found: Option<Result<(std::path::PathBuf, crate::project::LabelTable), String>>,
    ) {
        self.labels = crate::project::LabelTable::default();
        match found {
            Some(Ok((file, table))) => {
                let n = table.labels().len();
                self.labels = table;
                self.message(Message::Notice(format!(
                    "{n} label names from {}",
                    file.display()
                )));
            }
            Some(Err(e)) => self.message(Message::Info(format!(
                "label names not read ({e}); the labels are numbered"
            ))),
            None => {}
        }
    }

    /// The form of project case `index`, if any.
    fn form_of(&self, index: Option<usize>) -> Option<InputForm> {
        let p = self.project.as_ref()?;
        Some(p.manifest.cases.get(index?)?.form)
    }

    /// The view of a newly loaded case, keeping the previous case's settings where they still
    /// apply (same sequences; the layout only between volumes: a single slice or a stack
    /// always gets its one view).
    fn viewer_for(&self, loaded: &LoadedCase, case_index: Option<usize>) -> ViewerState {
        let first = &loaded.images[0].volume;
        let count = loaded.images.len();
        let mut viewer = ViewerState::new(first.affine(), first.dims3(), count);
        let fixed = fixed_layout(self.form_of(case_index), first.affine(), first.dims3());
        if let Some(l) = fixed {
            viewer.layout = l;
        }
        let Some(prev) = self.open.as_ref().filter(|p| p.viewer.layer_count == count) else {
            return viewer;
        };
        let prev_fixed = prev
            .layers
            .first()
            .and_then(|l| fixed_layout(self.form_of(prev.case_index), &l.grid.affine, l.grid.dims));
        let kept: Vec<usize> = prev
            .viewer
            .shown
            .iter()
            .copied()
            .filter(|s| !prev.is_derived_image(*s))
            .collect();
        ViewerState {
            layout: if fixed.is_none() && prev_fixed.is_none() {
                prev.viewer.layout
            } else {
                viewer.layout
            },
            shown: if kept.is_empty() { vec![0] } else { kept },
            blend: prev
                .viewer
                .blend
                .filter(|(b, _)| !prev.is_derived_image(*b)),
            linear: prev.viewer.linear,
            overlay: prev.viewer.overlay,
            ..viewer
        }
    }

    /// Undo, journal and save targets of a newly loaded case.
    fn edits_for(
        &self,
        loaded: &LoadedCase,
        case_index: Option<usize>,
        source: &CaseSource,
    ) -> CaseEdits {
        if let (Some(p), Some(i)) = (&self.project, case_index) {
            let rel = p
                .manifest
                .cases
                .get(i)
                .and_then(|c| c.reference_mask.clone())
                .unwrap_or_else(|| {
                    format!(
                        "{}/reference.nii.gz",
                        Project::case_dir_rel(&loaded.case_id)
                    )
                });
            let store = CaseStore::open(&journal::journal_path(p, &loaded.case_id));
            return CaseEdits::new(Some(store), Some(rel), None);
        }
        let loose = LooseFiles::of(source);
        let store = source.journal.as_deref().map(CaseStore::open);
        CaseEdits::new(store, None, loose)
    }

    /// Edits recovered from the journal: applied to the record, said to the user, and marked
    /// for saving.
    fn recovered(
        &mut self,
        case_id: &str,
        case_index: Option<usize>,
        rec: &super::load::Recovered,
        edits: &mut CaseEdits,
    ) {
        let n_mask = rec
            .edits
            .iter()
            .filter(|e| matches!(e, Edit::Mask(_)))
            .count();
        let n_record = rec.edits.len() - n_mask;
        if let (Some(p), Some(i)) = (self.project.as_mut(), case_index) {
            if let Some(case) = p.manifest.cases.get_mut(i) {
                for e in &rec.edits {
                    journal::apply_record(case, e, true);
                }
            }
        }
        let mut msg = format!(
            "Case {case_id}: recovered {} unsaved edits from its journal ({n_mask} to the mask, \
             {n_record} to the class, status, note or labels). They are shown now and will be saved.",
            rec.edits.len()
        );
        if let Some(p) = &rec.problem {
            msg.push_str(&format!("\n\nThe journal's end could not be read: {p}"));
        }
        self.message(Message::Info(msg));
        edits.dirty = true;
        edits.unsaved_for_user = true;
        edits.mask_dirty = n_mask > 0;
    }

    /// Imported sequences join their case (made if new); the manifest is saved.
    pub(super) fn sequences_imported(
        &mut self,
        case_id: &str,
        form: InputForm,
        files: &[crate::project::SequenceFile],
    ) {
        let Some(p) = self.project.as_mut() else {
            return;
        };
        crate::project::dicom_import::add_sequences(p, case_id, form, files);
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        self.pending.manifest = true;
        self.message(Message::Info(format!(
            "Imported into case {case_id}: {}.",
            names.join(", ")
        )));
        self.save_manifest();
    }
}

/// The one view of a single slice or of a stack of 2D images, if the case is one.
fn fixed_layout(
    form: Option<InputForm>,
    affine: &crate::volume::Affine,
    dims: [usize; 3],
) -> Option<super::view::Layout> {
    ViewerState::single_slice_layout(affine, dims)
        .or_else(|| (form == Some(InputForm::Slice2d)).then(|| ViewerState::stack_layout(affine)))
}

/// A loaded image as a layer: grey, or the diverging map for an ADC map, robust window.
fn layer_of(image: super::LoadedImage) -> super::Layer {
    let colormap = if image.name.as_str().eq_ignore_ascii_case("ADC") {
        Colormap::Diverging
    } else {
        Colormap::Grey
    };
    let display = SequenceDisplay::new(image.volume.data(), colormap);
    super::Layer::of(image, display)
}

/// The masks' grid (the first image's, with no mask).
fn labels_grid_of(loaded: &LoadedCase) -> GridInfo {
    match loaded.reference.as_ref().or(loaded.predicted.as_ref()) {
        Some(m) => GridInfo {
            affine: *m.affine(),
            dims: m.dims3(),
            value_range: (0.0, 1.0),
        },
        None => {
            let first = &loaded.images[0].volume;
            GridInfo {
                affine: *first.affine(),
                dims: [1, 1, 1],
                value_range: (0.0, 1.0),
            }
        }
    }
}

/// Agreement of the prediction with the reference, when both are on one grid.
pub(super) fn agreement_of(
    reference: Option<&Volume<u8>>,
    predicted: Option<&Volume<u8>>,
) -> Option<Agreement> {
    match (reference, predicted) {
        (Some(r), Some(p)) if r.dims3() == p.dims3() => {
            Agreement::of(&r.data()[..r.frame_len()], &p.data()[..p.frame_len()])
        }
        _ => None,
    }
}
