//! The logic tier headless (no egui, no wgpu): every change goes through `Session::apply` and
//! comes back as `Changes`. Edit → undo → redo → journal → save on a project case; a
//! re-inference result for the open case replaces its prediction and agreement, mid-edit too; a
//! worker's panic becomes a typed error; loose files are journaled into a working copy and the
//! user's file (a symbolic link here) changes only on Save, written through the link.

mod common;

use glam::DVec3;
use mriloop::edit::Agreement;
use mriloop::model::runs::CasePrediction;
use mriloop::phantom::{generate_project, PhantomConfig};
use mriloop::project::journal::{journal_path, read_journal};
use mriloop::project::{Project, ReviewStatus, Uncertainty};
use mriloop::render::Orientation;
use mriloop::session::load::read_mask;
use mriloop::session::script::{open_session, ScriptTarget};
use mriloop::session::{Changes, EditCommand, Input, Message, Session, Tool, WorkerError};
use mriloop::volume::{write_volume, Volume};
use std::path::Path;
use std::time::Duration;

fn phantom(dir: &Path) -> Project {
    let cfg = PhantomConfig {
        cases: 1,
        seed: 5,
        grid: 20,
        ..PhantomConfig::default()
    };
    generate_project(dir, &cfg, |_, _| {}).unwrap()
}

/// A one-case phantom project at `root`, its case id, and a headless session with it open.
fn open_phantom_case(root: &Path) -> (Project, String, Session) {
    let project = phantom(root);
    let id = project.manifest.cases[0].id.clone();
    let session = open_session(&ScriptTarget::Project {
        dir: root.to_path_buf(),
        case_id: id.clone(),
    })
    .unwrap();
    (project, id, session)
}

fn edit(s: &mut Session, e: EditCommand) -> Changes {
    s.apply(Input::Edit(e))
}

fn mask(s: &Session) -> Volume<u8> {
    s.open_case().unwrap().reference.clone().unwrap()
}

/// The centre of the open case's mask grid, in world mm.
fn centre_mm(s: &Session) -> DVec3 {
    let m = mask(s);
    let [x, y, z] = m.dims3();
    m.affine()
        .vox_to_mm(DVec3::new(x as f64 / 2.0, y as f64 / 2.0, z as f64 / 2.0))
}

/// A round 3D dab of label 2 at `at`, released: one undo step.
fn dab(s: &mut Session, at: DVec3) -> Changes {
    edit(s, EditCommand::SetTool(Tool::Brush));
    edit(s, EditCommand::SetLabel(2));
    edit(s, EditCommand::Set3d(true));
    edit(s, EditCommand::SetRadius(3.0));
    let mut c = edit(s, EditCommand::Dab(Orientation::Axial, at));
    let end = edit(s, EditCommand::EndStroke);
    c.mask_boxes.extend(end.mask_boxes);
    c
}

/// Tick until `done` or about 10 s.
fn tick_until(s: &mut Session, done: impl Fn(&Changes, &Session) -> bool) -> Changes {
    let mut all = Changes::default();
    for k in 0..1000 {
        let c = s.apply(Input::Tick {
            now_s: k as f64 * 0.01,
        });
        let hit = done(&c, s);
        all.mask_boxes.extend(c.mask_boxes);
        all.messages.extend(c.messages);
        all.predicted |= c.predicted;
        if hit {
            return all;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing came: {all:?}");
}

#[test]
fn edit_undo_redo_journal_and_save_go_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    let (project, id, mut s) = open_phantom_case(&root);
    let before = mask(&s);
    let at = centre_mm(&s);
    let c = dab(&mut s, at);
    assert!(!c.mask_boxes.is_empty(), "a dab reports its sub-box");
    let after = mask(&s);
    let painted = after.data().iter().filter(|v| **v == 2).count();
    assert!(painted > before.data().iter().filter(|v| **v == 2).count());
    edit(&mut s, EditCommand::SetStatus(ReviewStatus::Reviewed));
    let case = |s: &Session| s.project().unwrap().manifest.cases[0].clone();
    assert_eq!(case(&s).review, ReviewStatus::Reviewed);

    // Undo twice: status, then the dab (the mask back bit for bit); redo the dab.
    edit(&mut s, EditCommand::Undo);
    assert_ne!(case(&s).review, ReviewStatus::Reviewed);
    let undone = edit(&mut s, EditCommand::Undo);
    assert!(!undone.mask_boxes.is_empty());
    assert_eq!(mask(&s).data(), before.data());
    edit(&mut s, EditCommand::Redo);
    assert_eq!(mask(&s).data(), after.data());

    // Every step is in the journal (an undo as its reverse), in order.
    s.flush();
    let jpath = journal_path(&project, &id);
    let journal = read_journal(&jpath).unwrap();
    assert_eq!(journal.edits.len(), 5, "dab, status, undo ×2, redo");
    assert!(s.has_unsaved_edits());

    // Save: mask and manifest on disk, journal emptied.
    edit(&mut s, EditCommand::Save);
    s.flush();
    assert!(!jpath.exists(), "the journal is emptied by the save");
    assert!(!s.has_unsaved_edits());
    let reopened = Project::open(&root).unwrap();
    let saved = reopened
        .load_reference_mask(&reopened.manifest.cases[0])
        .unwrap()
        .unwrap();
    assert_eq!(saved.data(), after.data());
    assert_ne!(reopened.manifest.cases[0].review, ReviewStatus::Reviewed);
}

#[test]
fn a_reinference_result_refreshes_the_open_case_prediction_and_agreement_mid_edit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    let (project, id, mut s) = open_phantom_case(&root);
    // The user is mid-edit: one stroke committed.
    let at = centre_mm(&s);
    dab(&mut s, at);
    let reference = mask(&s);
    let old_agreement = s.open_case().unwrap().agreement.clone();

    // A new version predicted this case: the reference with its labels shifted by 2 voxels.
    let [nx, ny, nz] = reference.dims3();
    let mut predicted = reference.clone();
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let v = if i >= 2 {
                    reference.get([i - 2, j, k]).unwrap()
                } else {
                    0
                };
                predicted.data_mut()[i + nx * (j + ny * k)] = v;
            }
        }
    }
    let rel = format!("{}/predicted_v9.nii.gz", Project::case_dir_rel(&id));
    write_volume(&project.resolve(&rel), &predicted).unwrap();
    s.apply(Input::Predicted(CasePrediction {
        case_id: id.clone(),
        version: "v9".into(),
        mask: rel.clone(),
        probabilities: rel.clone(),
        class_probabilities: Vec::new(),
        uncertainty: Uncertainty {
            segmentation: 0.1,
            classification: 0.2,
        },
    }));
    let c = tick_until(&mut s, |c, _| c.predicted);
    assert!(c.predicted);
    let open = s.open_case().unwrap();
    assert_eq!(open.predicted.as_ref().unwrap().data(), predicted.data());
    let expected = Agreement::of(reference.data(), predicted.data()).unwrap();
    let got = open.agreement.clone().unwrap();
    assert_eq!(got.foreground_dice(), expected.foreground_dice());
    assert_ne!(Some(got), old_agreement, "the agreement changed");
    assert_eq!(open.edits.undo.undo_depth(), 1, "the user's edit is kept");
    let case = &s.project().unwrap().manifest.cases[0];
    assert_eq!(case.predicted_mask.as_deref(), Some(rel.as_str()));
    assert_eq!(case.predicted_by.as_deref(), Some("v9"));
}

#[test]
fn a_worker_panic_becomes_a_typed_error() {
    let mut s = Session::new(
        tempfile::tempdir().unwrap().path().to_path_buf(),
        mriloop::session::jobs::no_wake(),
    );
    s.spawn_worker("test worker", || panic!("boom at step 3"));
    let c = tick_until(&mut s, |c, _| !c.messages.is_empty());
    let expected = WorkerError::Panicked {
        worker: "test worker".into(),
        message: "boom at step 3".into(),
    };
    assert_eq!(c.messages, vec![Message::Error(expected.to_string())]);
    assert_eq!(
        expected.to_string(),
        "test worker stopped unexpectedly: boom at step 3"
    );
    // The same for a joined thread.
    let joined = std::thread::spawn(|| -> u32 { panic!("{}", "in a thread") }).join();
    assert_eq!(
        mriloop::session::jobs::joined("the loader", joined),
        Err(WorkerError::Panicked {
            worker: "the loader".into(),
            message: "in a thread".into()
        })
    );
}

/// A loose T1 and its label file (reached through a symbolic link) in `dir`.
fn loose_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let project = phantom(&dir.join("src"));
    let case = &project.manifest.cases[0];
    let t1 = dir.join("T1.nii.gz");
    std::fs::copy(project.resolve(&case.sequences[0].path), &t1).unwrap();
    let real = dir.join("labels_real.nii.gz");
    std::fs::copy(
        project.resolve(case.reference_mask.as_deref().unwrap()),
        &real,
    )
    .unwrap();
    let link = dir.join("labels.nii.gz");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    (t1, link, real)
}

#[test]
fn loose_files_are_journaled_in_a_working_copy_and_written_only_on_save() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, link, real) = loose_files(dir.path());
    let original = std::fs::read(&real).unwrap();
    let loose_root = dir.path().join("unsaved");
    let target = ScriptTarget::Files {
        images: vec![t1.clone()],
        mask: Some(link.clone()),
        loose_root: loose_root.clone(),
    };
    let mut s = open_session(&target).unwrap();
    let at = centre_mm(&s);
    dab(&mut s, at);
    let edited = mask(&s);
    s.flush();
    let case_id = s.open_case().unwrap().case_id.clone();
    let reports = s.apply(Input::Tick { now_s: 0.0 });
    assert!(
        reports.messages.is_empty(),
        "{:?} ({case_id})",
        reports.messages
    );
    let work_dir = s.open_case().unwrap().edits.loose.clone().unwrap().work_dir;
    assert_eq!(
        read_journal(&work_dir.join("edits.journal"))
            .unwrap()
            .edits
            .len(),
        1,
        "the stroke is journaled in the working copy before any save"
    );
    s.apply(Input::Autosave);
    s.flush();
    assert!(work_dir.starts_with(&loose_root));
    assert!(
        work_dir.join("mask.nii.gz").exists(),
        "autosave wrote the working copy"
    );
    assert_eq!(
        std::fs::read(&real).unwrap(),
        original,
        "autosave left the user's file"
    );
    assert!(s.has_unsaved_loose_edits());
    // Closing (as on exit) keeps the edits in the working copy, not in the user's file.
    s.apply(Input::CloseCase { wait: true });
    assert_eq!(std::fs::read(&real).unwrap(), original);

    // Opened again: the unsaved edits are back and said so.
    let mut s = open_session(&target).unwrap();
    assert_eq!(mask(&s).data(), edited.data());
    assert!(s.has_unsaved_loose_edits());
    // Save: through the link into the user's file; the working copy is gone.
    edit(&mut s, EditCommand::Save);
    s.flush();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read_mask(&real).unwrap().data(), edited.data());
    assert!(!work_dir.join("mask.nii.gz").exists());
    assert!(!s.has_unsaved_loose_edits());
    // Save As: a new file, which later saves go to.
    let other = dir.path().join("labels_v2.nii.gz");
    dab(&mut s, at + DVec3::new(4.0, 0.0, 0.0));
    edit(&mut s, EditCommand::SaveAs(other.clone()));
    s.flush();
    assert_eq!(read_mask(&other).unwrap().data(), mask(&s).data());
    assert_eq!(read_mask(&real).unwrap().data(), edited.data());
}

#[test]
fn a_prompt_is_answered_off_the_calling_thread_and_lands_as_one_undo_step() {
    use burn::prelude::Device;
    use mriloop::model::prompt::PromptConfig;
    use mriloop::model::{MultiTaskUNetConfig, TrainingConfig};
    use mriloop::session::prompt::PromptModel;
    let dir = tempfile::tempdir().unwrap();
    let (project, _, mut s) = open_phantom_case(dir.path());
    let sequences: Vec<String> = project.manifest.sequences[..2]
        .iter()
        .map(|q| q.as_str().to_string())
        .collect();
    let net = MultiTaskUNetConfig::new(2 + 3, 2, 2)
        .with_base_channels(4)
        .with_depth(2);
    let config = TrainingConfig::new(net)
        .with_window([16, 16, 16])
        .with_sequences(sequences)
        .with_prompt(Some(PromptConfig::default()));
    let device = Device::flex();
    device.seed(7);
    let net = config.model.init(&device);
    let model = PromptModel {
        source: "a random promptable network".into(),
        config,
        net,
        device,
    };
    s.apply(Input::PromptModel(Ok(std::sync::Arc::new(model))));
    edit(&mut s, EditCommand::SetTool(Tool::Prompt));
    edit(&mut s, EditCommand::SetLabel(1));
    let before = mask(&s);
    let at = centre_mm(&s);
    // Two clicks before any answer: the second supersedes the first (one answer lands).
    let point = |p: DVec3, include| {
        EditCommand::Prompt(mriloop::project::prompt_log::PromptMm::Point {
            pos_mm: p.to_array(),
            include,
        })
    };
    let c1 = edit(&mut s, point(at, true));
    // (Both include: an exclude answer may change nothing — it erases no object it does not
    // touch, and a random network's erasures elsewhere are kept from the mask.)
    let c2 = edit(&mut s, point(at + DVec3::new(3.0, 0.0, 0.0), true));
    assert!(
        c1.mask_boxes.is_empty() && c2.mask_boxes.is_empty(),
        "nothing on this thread"
    );
    assert!(s.busy());
    let all = tick_until(&mut s, |_, s| !s.busy());
    assert!(
        !all.messages.iter().any(|m| matches!(m, Message::Error(_))),
        "{:?}",
        all.messages
    );
    assert!(!all.mask_boxes.is_empty());
    assert_eq!(s.prompts().markers().len(), 2);
    // The answered prompt is in the case's prompt log (the superseded one never answered).
    s.flush();
    let case_id = s.open_case().unwrap().case_id.clone();
    let log = mriloop::project::prompt_log::read_prompt_log(
        &project.resolve(&mriloop::project::prompt_log::prompt_log_rel(&case_id)),
    )
    .unwrap();
    assert_eq!(log.records.len(), 1, "{:?}", log.skipped);
    assert_eq!(log.records[0].label, 1);
    assert_eq!(log.records[0].prompts.len(), 2);
    assert_eq!(log.records[0].model, "a random promptable network");
    let after = mask(&s);
    assert_ne!(after.data(), before.data(), "the answer changed the mask");
    // Only the active label was set or cleared.
    for (b, a) in before.data().iter().zip(after.data()) {
        assert!(b == a || *a == 1 || (*b == 1 && *a == 0), "{b} -> {a}");
    }
    // One undo step: undo restores the mask bit for bit, redo brings the answer back.
    edit(&mut s, EditCommand::Undo);
    assert_eq!(mask(&s).data(), before.data());
    edit(&mut s, EditCommand::Redo);
    assert_eq!(mask(&s).data(), after.data());
    edit(&mut s, EditCommand::ClearPrompts);
    assert!(s.prompts().markers().is_empty());
}

/// A real atlas opened on its own (MRIcron's Colin27 T1 and AAL from Debian's `mricron-data`,
/// which `.ci/run` installs): the names in `aal.nii.txt` beside it name the labels, said in a
/// notice; without a table beside it the labels are numbered.
#[test]
fn an_atlas_opened_on_its_own_takes_its_label_names_from_the_table_beside_it() {
    let templates = Path::new("/usr/share/mricron/templates");
    let (t1, aal) = (templates.join("ch2.nii.gz"), templates.join("aal.nii.gz"));
    assert!(aal.is_file(), "mricron-data is installed by .ci/run");
    let dir = tempfile::tempdir().unwrap();
    let loose_root = dir.path().join("unsaved");
    let source =
        mriloop::session::CaseSource::from_files(std::slice::from_ref(&t1), Some(aal.clone()))
            .with_working_copy(&loose_root);
    let case = mriloop::session::script::load_now(&source).unwrap();
    let mut s = Session::new(loose_root, mriloop::session::jobs::no_wake());
    let said = s
        .apply(Input::CaseLoaded {
            case: Box::new(case),
            index: None,
            source,
        })
        .messages;
    assert_eq!(s.labels().labels().len(), 116);
    assert_eq!(s.labels().name_of(1), "Precentral_L");
    assert_eq!(s.labels().name_of(116), "Vermis_10");
    let from = format!(
        "116 label names from {}",
        templates.join("aal.nii.txt").display()
    );
    assert!(said.contains(&Message::Notice(from)), "{said:?}");
    // Saved as a Slicer segmentation, the labels keep the names the user sees (one renamed
    // here), as pynrrd reads them.
    edit(
        &mut s,
        EditCommand::RenameLabel(2, "precentral right".into()),
    );
    let seg = dir.path().join("aal.seg.nrrd");
    edit(&mut s, EditCommand::SaveAs(seg.clone()));
    s.flush();
    let names = common::python(
        "import sys, nrrd
h = nrrd.read_header(sys.argv[1])
seg = {int(h[f'Segment{i}_LabelValue']): h[f'Segment{i}_Name'] for i in range(200) if f'Segment{i}_Name' in h}
print(len(seg), seg[1], '|', seg[2], '|', seg[116])",
        &[&seg],
    );
    assert_eq!(
        names.trim(),
        "116 Precentral_L | precentral right | Vermis_10"
    );
    assert!(
        templates.join("aal.nii.gz").is_file(),
        "the user's atlas is where it was"
    );
    // The same labels copied where no table lies beside them: numbered.
    let copy = dir.path().join("atlas.nii.gz");
    std::fs::copy(&aal, &copy).unwrap();
    let s = open_session(&ScriptTarget::Files {
        images: vec![t1],
        mask: Some(copy),
        loose_root: dir.path().join("unsaved"),
    })
    .unwrap();
    assert_eq!(s.labels().name_of(1), "label 1");
}
