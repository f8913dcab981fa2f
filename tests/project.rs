//! Projects, the phantom generator and nnU-Net exchange.

mod common;

use mriloop::phantom::{self, PhantomConfig, LABEL_HABENULA_L, LABEL_HABENULA_R};
use mriloop::project::{
    nnunet, Case, InputForm, LabelTable, Manifest, Project, ProjectError, SequenceName,
    MANIFEST_FILE,
};
use mriloop::volume::{read_header, read_volume};
use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn small(cases: usize, seed: u64) -> PhantomConfig {
    PhantomConfig {
        cases,
        seed,
        grid: 32,
        ..PhantomConfig::default()
    }
}

#[test]
fn phantom_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    phantom::generate_project(&a, &small(2, 5), |_, _| {}).unwrap();
    phantom::generate_project(&b, &small(2, 5), |_, _| {}).unwrap();
    phantom::generate_project(&c, &small(2, 6), |_, _| {}).unwrap();
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(
        ta.len(),
        1 + 2 * 7,
        "manifest + 6 sequences and a mask per case"
    );
    assert_eq!(ta, tb, "same seed, same bytes");
    let t1 = "cases/phantom_000/T1.nii.gz";
    assert_ne!(ta[t1], tc[t1], "another seed, another case");
    // A case does not depend on how many cases are generated.
    let one = dir.path().join("one");
    phantom::generate_project(&one, &small(1, 5), |_, _| {}).unwrap();
    assert_eq!(tree(&one)[t1], ta[t1]);
}

#[test]
fn tiny_structure_is_20_to_40_mm3_per_side_and_class_is_learnable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(8, 3);
    let project = phantom::generate_project(dir.path(), &cfg, |_, _| {}).unwrap();
    let mut by_class: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for case in &project.manifest.cases {
        let mask = project.load_reference_mask(case).unwrap().unwrap();
        let voxel = mask.voxel_volume_mm3();
        let count = |label| mask.data().iter().filter(|v| **v == label).count() as f64 * voxel;
        let (left, right) = (count(LABEL_HABENULA_L), count(LABEL_HABENULA_R));
        for (side, v) in [("left", left), ("right", right)] {
            assert!((20.0..=40.0).contains(&v), "{} {side}: {v:.1} mm³", case.id);
        }
        let lesion_voxels = mask.data().iter().filter(|v| **v >= 3).count();
        let class = case.class_label.clone().unwrap();
        if class == "patient" {
            assert!(lesion_voxels > 0, "{}: every patient has lesions", case.id);
        }
        by_class.entry(class).or_default().extend([left, right]);
        // All sequences share the mask's grid (co-registered).
        for s in &case.sequences {
            let h = read_header(&project.resolve(&s.path)).unwrap();
            assert_eq!(h.dims[..3], mask.dims()[..3]);
            assert_eq!(h.affine, *mask.affine());
        }
    }
    let mean = |c: &str| {
        let v = &by_class[c];
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(
        by_class.len() == 2,
        "both classes occur in 8 cases: {by_class:?}"
    );
    assert!(
        mean("patient") + 3.0 < mean("control"),
        "patients have a smaller tiny structure"
    );
}

#[test]
fn phantom_contrasts_follow_the_sequences_physics() {
    let dir = tempfile::tempdir().unwrap();
    let project = phantom::generate_project(dir.path(), &small(1, 9), |_, _| {}).unwrap();
    let case = &project.manifest.cases[0];
    let mask = project.load_reference_mask(case).unwrap().unwrap();
    let t1 = project
        .load_sequence(case, &SequenceName::T1)
        .unwrap()
        .to_f32();
    let t2 = project
        .load_sequence(case, &SequenceName::T2)
        .unwrap()
        .to_f32();
    let flair = project
        .load_sequence(case, &SequenceName::Flair)
        .unwrap()
        .to_f32();
    // The ventricles (CSF) sit where T2 is brightest inside the head; check T1 and FLAIR are dark there
    // relative to the head's median.
    let n = t1.data().len();
    let mut idx: Vec<usize> = (0..n).filter(|i| t1.data()[*i] > 100.0).collect();
    idx.sort_by(|a, b| t2.data()[*b].total_cmp(&t2.data()[*a]));
    let csf = &idx[..idx.len() / 50];
    let median = |v: &[f32], ids: &[usize]| {
        let mut x: Vec<f32> = ids.iter().map(|i| v[*i]).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    let head: Vec<usize> = (0..n)
        .filter(|i| t1.data()[*i] > 100.0 || t2.data()[*i] > 100.0)
        .collect();
    assert!(
        median(t1.data(), csf) < 0.5 * median(t1.data(), &head),
        "CSF dark on T1"
    );
    assert!(
        median(flair.data(), csf) < 0.5 * median(flair.data(), &head),
        "CSF dark on FLAIR"
    );
    assert!(mask.data().contains(&LABEL_HABENULA_L));
    // ADC (10⁻⁶ mm²/s): free water (CSF) diffuses fast, about 3000.
    let adc = project
        .load_sequence(case, &SequenceName::Adc)
        .unwrap()
        .to_f32();
    let csf_adc = median(adc.data(), csf);
    assert!(
        csf_adc > 2.0 * median(adc.data(), &head),
        "CSF bright on ADC: {csf_adc}"
    );
    assert!(csf_adc < 3300.0, "free water tops out near 3000: {csf_adc}");
}

#[test]
fn phantom_2d_and_4d_variants() {
    let dir = tempfile::tempdir().unwrap();
    let cfg2 = PhantomConfig {
        form: InputForm::Slice2d,
        ..small(2, 4)
    };
    let p2 = phantom::generate_project(&dir.path().join("2d"), &cfg2, |_, _| {}).unwrap();
    for case in &p2.manifest.cases {
        assert_eq!(case.form, InputForm::Slice2d);
        let mask = p2.load_reference_mask(case).unwrap().unwrap();
        assert_eq!(mask.dims()[2], 1, "single slice");
        assert!(mask
            .data()
            .iter()
            .any(|v| *v == LABEL_HABENULA_L || *v == LABEL_HABENULA_R));
    }
    let cfg4 = PhantomConfig {
        form: InputForm::TimeSeries4d,
        grid: 12,
        frames: 30,
        ..small(1, 4)
    };
    let p4 = phantom::generate_project(&dir.path().join("4d"), &cfg4, |_, _| {}).unwrap();
    let case = &p4.manifest.cases[0];
    let bold = p4.load_sequence(case, &SequenceName::Bold).unwrap();
    assert_eq!(bold.dims(), [12, 12, 12, 30]);
    assert_eq!(bold.time_step_s(), 2.0);
    let spacing = bold.affine().spacing_mm();
    assert!(
        spacing.iter().all(|s| (s - 3.0).abs() < 1e-4),
        "{spacing:?}"
    );
}

/// A change that makes a manifest invalid.
type ManifestEdit = Box<dyn Fn(&mut Manifest)>;

#[test]
fn manifest_round_trips_and_rejects_unsafe_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Manifest::new("test");
    m.classes = vec!["control".into(), "patient".into()];
    m.labels = phantom::label_table();
    let mut case = Case::new("c1", InputForm::Volume3d);
    case.class_label = Some("patient".into());
    case.predicted_class = Some(vec![0.25, 0.75]);
    case.predicted_by = Some("v1".into());
    case.uncertainty = Some(mriloop::project::Uncertainty {
        segmentation: 0.3,
        classification: 0.5,
    });
    m.cases.push(case);
    m.models.push(mriloop::project::ModelVersion {
        id: "v1".into(),
        created: mriloop::project::models::utc_now(),
        parent: None,
        checkpoint: "models/v1/best".into(),
        tasks: "joint".into(),
        sequences: vec!["T1".into()],
        trained_on: vec!["c1".into()],
        validated_on: Vec::new(),
        epochs: vec![mriloop::project::EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            dice: vec![Some(0.8), None],
            class_accuracy: 1.0,
            class_auc: None,
        }],
        outcome: mriloop::project::RunOutcome::Finished,
        learned_prompts: 0,
        promptable: false,
        added_from: None,
    });
    m.active_model = Some("v1".into());
    let p = Project::create(dir.path(), m.clone()).unwrap();
    let reopened = Project::open(dir.path()).unwrap();
    assert_eq!(reopened.manifest, m);
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));

    let bad_cases: Vec<(&str, ManifestEdit)> = vec![
        (
            "path escapes",
            Box::new(|m| m.cases[0].reference_mask = Some("../../etc/passwd".into())),
        ),
        (
            "absolute path",
            Box::new(|m| m.cases[0].reference_mask = Some("/etc/passwd".into())),
        ),
        ("bad id", Box::new(|m| m.cases[0].id = "../x".into())),
        (
            "duplicate id",
            Box::new(|m| m.cases.push(m.cases[0].clone())),
        ),
        (
            "unknown class",
            Box::new(|m| m.cases[0].class_label = Some("alien".into())),
        ),
        (
            "probabilities",
            Box::new(|m| m.cases[0].predicted_class = Some(vec![1.0])),
        ),
        ("future schema", Box::new(|m| m.schema_version = 99)),
        (
            "active model unknown",
            Box::new(|m| m.active_model = Some("v9".into())),
        ),
        (
            "model checkpoint escapes",
            Box::new(|m| m.models[0].checkpoint = "../elsewhere".into()),
        ),
        (
            "model id unsafe",
            Box::new(|m| m.models[0].id = "../v1".into()),
        ),
        (
            "model twice",
            Box::new(|m| m.models.push(m.models[0].clone())),
        ),
    ];
    for (what, edit) in bad_cases {
        let mut bad = m.clone();
        edit(&mut bad);
        let json = serde_json::to_string(&bad).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), json).unwrap();
        let err = Project::open(dir.path()).expect_err(what);
        assert!(matches!(err, ProjectError::Invalid { .. }), "{what}: {err}");
        assert!(
            err.to_string().contains(MANIFEST_FILE),
            "{what}: names the file: {err}"
        );
    }
    std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").unwrap();
    assert!(Project::open(dir.path())
        .unwrap_err()
        .to_string()
        .contains(MANIFEST_FILE));
    p.save().unwrap();
    assert_eq!(
        Project::open(dir.path()).unwrap().manifest,
        m,
        "save rewrites a valid manifest"
    );
    let again = Project::create(dir.path(), m.clone())
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("already exists"),
        "create never overwrites a project: {again}"
    );
    let e = phantom::generate_project(dir.path(), &small(1, 1), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(!dir.path().join("cases").exists(), "nothing was written");
}

#[test]
fn itksnap_label_file_round_trip() {
    let table = phantom::label_table();
    let text = table.to_itksnap();
    assert_eq!(LabelTable::from_itksnap(&text).unwrap(), table);
    let foreign = "# comment\n    0     0    0    0        0  0  0    \"Clear Label\"\n   12   10   20   30     0.5  1  1    \"my label\"\n";
    let t = LabelTable::from_itksnap(foreign).unwrap();
    assert_eq!(t.get(12).unwrap().name, "my label");
    assert_eq!(t.get(12).unwrap().color, [10, 20, 30]);
    assert!(LabelTable::from_itksnap("1 2 3 \"x\"").is_err());
    assert!(LabelTable::from_itksnap("300 0 0 0 1 1 1 \"x\"").is_err());
}

#[test]
fn nnunet_import_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let project =
        phantom::generate_project(&dir.path().join("p"), &small(3, 8), |_, _| {}).unwrap();
    // Leave one case unlabelled so imagesTs is exercised.
    let mut project = project;
    project.manifest.cases[2].reference_mask = None;
    project.save().unwrap();
    let ds1 = dir.path().join("Dataset001_Phantom");
    let summary = nnunet::export_nnunet(&project, &ds1).unwrap();
    assert_eq!((summary.training, summary.test), (2, 1));
    let files = tree(&ds1);
    assert!(files.contains_key("imagesTr/phantom_000_0000.nii.gz"));
    assert!(files.contains_key("imagesTr/phantom_000_0005.nii.gz"));
    assert!(files.contains_key("labelsTr/phantom_000.nii.gz"));
    assert!(files.contains_key("imagesTs/phantom_002_0000.nii.gz"));
    let ds: serde_json::Value = serde_json::from_slice(&files["dataset.json"]).unwrap();
    assert_eq!(ds["channel_names"]["3"], "Gd-T1");
    assert_eq!(ds["labels"]["habenula_R"], 2);
    assert_eq!(ds["numTraining"], 2);

    let imported = nnunet::import_nnunet(&ds1, &dir.path().join("p2")).unwrap();
    assert_eq!(imported.manifest.cases.len(), 3);
    assert_eq!(imported.manifest.sequences, project.manifest.sequences);
    assert_eq!(imported.manifest.labels, project.manifest.labels);
    assert_eq!(imported.manifest.classes, project.manifest.classes);
    for (a, b) in imported.manifest.cases.iter().zip(&project.manifest.cases) {
        assert_eq!(a.class_label, b.class_label);
        assert_eq!(a.reference_mask.is_some(), b.reference_mask.is_some());
        let va = read_volume(&imported.resolve(&a.sequences[0].path)).unwrap();
        let vb = read_volume(&project.resolve(&b.sequences[0].path)).unwrap();
        assert_eq!(va, vb);
    }
    let ds2 = dir.path().join("again");
    nnunet::export_nnunet(&imported, &ds2).unwrap();
    assert_eq!(
        tree(&ds2),
        files,
        "import → export gives back the dataset byte for byte"
    );
}

/// Rewrite the NIfTI label file `path` with nibabel as `dtype` (after adding `add` to voxel 0).
fn nibabel_relabel(path: &Path, dtype: &str, add: f64) {
    let script = "import sys, nibabel as nib, numpy as np
img = nib.load(sys.argv[1])
a = np.asarray(img.dataobj).astype(np.float64)
a.flat[0] += float(sys.argv[3])
out = nib.Nifti1Image(a.astype(sys.argv[2]), img.affine)
out.set_data_dtype(sys.argv[2])
nib.save(out, sys.argv[1])";
    let path = path.to_str().unwrap();
    common::python(script, &[path, dtype, &add.to_string()]);
}

#[test]
fn nnunet_labels_in_any_whole_number_type_import_as_label_masks() {
    let dir = tempfile::tempdir().unwrap();
    let project =
        phantom::generate_project(&dir.path().join("p"), &small(4, 3), |_, _| {}).unwrap();
    let ds = dir.path().join("Dataset002_Types");
    nnunet::export_nnunet(&project, &ds).unwrap();
    // Label files as nibabel-based pipelines, ITK-SNAP and FreeSurfer write them.
    let types = ["int16", "uint16", "int32", "float64"];
    for (case, dtype) in project.manifest.cases.iter().zip(types) {
        nibabel_relabel(&ds.join(format!("labelsTr/{}.nii.gz", case.id)), dtype, 0.0);
    }
    let imported = nnunet::import_nnunet(&ds, &dir.path().join("q")).unwrap();
    for (a, b) in imported.manifest.cases.iter().zip(&project.manifest.cases) {
        let read = imported.load_mask(a.reference_mask.as_deref().unwrap());
        let want = project.load_mask(b.reference_mask.as_deref().unwrap());
        let (read, want) = (read.unwrap(), want.unwrap());
        assert_eq!(read.dims(), want.dims(), "case {}", a.id);
        assert!(read.data() == want.data(), "case {}: other labels", a.id);
    }
    // A label no uint8 mask holds (FreeSurfer's cortical parcels are 1000 and above), or a
    // fraction, is refused at import with the file and the value.
    for (dtype, add, said) in [("int16", 1000.0, "1000"), ("float32", 0.5, "0.5")] {
        let file = ds.join(format!("labelsTr/{}.nii.gz", project.manifest.cases[0].id));
        nibabel_relabel(&file, dtype, add);
        let target = dir.path().join(format!("bad_{dtype}"));
        let e = nnunet::import_nnunet(&ds, &target).unwrap_err().to_string();
        assert!(
            e.contains(&*file.to_string_lossy())
                && e.contains("whole numbers 0–255")
                && e.contains(said),
            "{e}"
        );
        nibabel_relabel(&file, "uint8", -add);
    }
}

#[test]
fn nnunet_import_reports_bad_datasets_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("ds");
    std::fs::create_dir_all(ds.join("imagesTr")).unwrap();
    let write_json =
        |v: serde_json::Value| std::fs::write(ds.join("dataset.json"), v.to_string()).unwrap();
    write_json(
        serde_json::json!({"channel_names": {"0": "T1", "2": "T2"}, "labels": {"background": 0}}),
    );
    let e = nnunet::import_nnunet(&ds, &dir.path().join("p"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dataset.json") && e.contains("without gaps"),
        "{e}"
    );
    write_json(
        serde_json::json!({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": [1, 2]}}),
    );
    let e = nnunet::import_nnunet(&ds, &dir.path().join("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("region-based"), "{e}");
    write_json(
        serde_json::json!({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}),
    );
    std::fs::write(ds.join("imagesTr/case1_0000.nii.gz"), b"junk").unwrap();
    let e = nnunet::import_nnunet(&ds, &dir.path().join("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lacks channel"), "{e}");
    std::fs::write(ds.join("imagesTr/case1_0001.nii.gz"), b"junk").unwrap();
    let e = nnunet::import_nnunet(&ds, &dir.path().join("p"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("case1_000") && e.contains("not a NIfTI file"),
        "a bad image is named: {e}"
    );
}

#[test]
fn built_in_demo_is_real_anatomy_with_a_prediction_and_both_models() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    let project = Project::open(&demo).unwrap();
    assert_eq!(project.manifest.cases.len(), 1);
    let case = &project.manifest.cases[0];
    assert_eq!(case.sequences.len(), 6);
    let mask = project.load_reference_mask(case).unwrap().unwrap();
    for s in &case.sequences {
        let v = read_volume(&project.resolve(&s.path)).unwrap();
        assert_eq!(v.dims()[..3], mask.dims()[..3], "{}", s.name);
        assert_eq!(v.affine(), mask.affine(), "{}", s.name);
    }
    // Named atlas structures, the habenulae and the three lesion kinds.
    let names = project.manifest.labels.names_by_value();
    for name in [
        "habenula_L",
        "thalamus_R",
        "putamen_L",
        "hippocampus_R",
        "tumour",
    ] {
        let value = names.iter().position(|n| n == name).unwrap() as u8;
        assert!(mask.data().contains(&value), "the demo shows {name}");
    }
    for label in 1..=5 {
        assert!(mask.data().contains(&label), "the demo shows label {label}");
    }
    // The active automatic model made the prediction and the class; the promptable one is there.
    let active = project.manifest.active_model.as_deref().unwrap();
    assert_eq!(case.predicted_by.as_deref(), Some(active));
    assert_eq!(case.predicted_class.as_ref().map(Vec::len), Some(2));
    let predicted = project
        .load_mask(case.predicted_mask.as_deref().unwrap())
        .unwrap();
    assert_eq!(predicted.dims(), mask.dims());
    let thalamus = names.iter().position(|n| n == "thalamus_L").unwrap() as u8;
    let dice = mriloop::model::prompt_infer::dice_bool(
        &mask
            .data()
            .iter()
            .map(|v| *v == thalamus)
            .collect::<Vec<_>>(),
        &predicted
            .data()
            .iter()
            .map(|v| *v == thalamus)
            .collect::<Vec<_>>(),
    );
    eprintln!("demo prediction: thalamus_L Dice {dice:.3}");
    assert!(
        dice > 0.5,
        "the shipped model finds the left thalamus: Dice {dice}"
    );
    let promptable: Vec<_> = project
        .manifest
        .models
        .iter()
        .filter(|v| v.promptable)
        .collect();
    assert_eq!(promptable.len(), 1);
    for v in &project.manifest.models {
        assert!(
            project.resolve(&v.checkpoint).join("model.bpk").is_file(),
            "{}",
            v.id
        );
    }
    // The built-in copy (what the app opens) is these files, byte for byte, with the notice.
    let dir = tempfile::tempdir().unwrap();
    let copy = mriloop::project::demo::demo_project_copy(&dir.path().join("demo")).unwrap();
    let files = tree(&demo);
    assert_eq!(tree(&copy), files);
    assert!(
        files.contains_key("README.md"),
        "the attribution travels with the data"
    );
}

#[test]
fn slices_of_a_volume_become_a_2d_project_with_renumbered_labels() {
    use mriloop::project::slices::{slice_project, SliceOptions};
    use mriloop::volume::{write_volume, Affine, Volume};
    let dir = tempfile::tempdir().unwrap();
    let affine = Affine::from_rows3([
        [0.0, -0.9, 0.0, 40.0],
        [1.1, 0.0, 0.0, -20.0],
        [0.0, 0.0, 2.0, -10.0],
    ]);
    let (nx, ny, nz) = (6, 5, 4);
    let image: Vec<f32> = (0..nx * ny * nz).map(|i| i as f32).collect();
    // Label 7 in slices 1 and 2 (3 and 1 voxels), label 9 in slice 2, label 5 (not kept) in 3.
    let mut labels = vec![0u8; nx * ny * nz];
    for i in [30, 31, 32, 65] {
        labels[i] = 7;
    }
    labels[66] = 9;
    labels[95] = 5;
    let (img_path, lab_path) = (dir.path().join("t1.nii.gz"), dir.path().join("lab.nii.gz"));
    write_volume(
        &img_path,
        &Volume::new([nx, ny, nz, 1], affine, image).unwrap(),
    )
    .unwrap();
    write_volume(
        &lab_path,
        &Volume::new([nx, ny, nz, 1], affine, labels).unwrap(),
    )
    .unwrap();
    let options = SliceOptions {
        keep: vec![(9, "b".into()), (7, "a".into())],
        sequence: "T1".into(),
        min_voxels: 2,
        class: "slice".into(),
    };
    let p = slice_project(&img_path, &lab_path, &dir.path().join("p"), &options).unwrap();
    let ids: Vec<&str> = p.manifest.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["z001", "z002"]);
    let case = &p.manifest.cases[1];
    let t1 = p.load_sequence(case, &SequenceName::T1).unwrap().to_f32();
    assert_eq!(t1.dims(), [6, 5, 1, 1]);
    assert_eq!(t1.data()[0], 60.0);
    let origin = t1.affine().vox_to_mm(glam::DVec3::ZERO);
    assert!((origin - affine.vox_to_mm(glam::DVec3::new(0.0, 0.0, 2.0))).length() < 1e-4);
    let mask = p.load_reference_mask(case).unwrap().unwrap();
    assert_eq!((mask.data()[5], mask.data()[6]), (2, 1));
    assert_eq!(p.manifest.labels.names_by_value(), ["background", "b", "a"]);
    // Renumbered labels take the colours any label of that value gets by default.
    for l in p.manifest.labels.labels() {
        assert_eq!(
            l.color,
            mriloop::project::default_color(l.value),
            "{}",
            l.name
        );
    }
    // A label volume on another grid is refused, naming it.
    let other = dir.path().join("other.nii.gz");
    write_volume(
        &other,
        &Volume::new([nx, ny, 3, 1], affine, vec![0u8; nx * ny * 3]).unwrap(),
    )
    .unwrap();
    let e = slice_project(&img_path, &other, &dir.path().join("q"), &options).unwrap_err();
    assert!(e.to_string().contains("other.nii.gz"), "{e}");
}

#[test]
fn colin27_subjects_keep_the_atlas_volumes_and_a_habenula_per_side_deterministically() {
    use mriloop::phantom::template::{Template, TemplateSource, DEFAULT_TEMPLATE_DIR, STRUCTURES};
    let dir = tempfile::tempdir().unwrap();
    let templates = Path::new(DEFAULT_TEMPLATE_DIR);
    let cfg = PhantomConfig {
        cases: 3,
        seed: 4,
        grid: 96,
        voxel_mm: Some(1.2),
        template: Some(TemplateSource::colin27(templates.to_path_buf())),
        ..PhantomConfig::default()
    };
    let p = phantom::generate_project(&dir.path().join("a"), &cfg, |_, _| {}).unwrap();
    let template = Template::colin27(templates).unwrap();
    // The atlas's volume of each structure (1 mm voxels).
    let template_mm3 = |value: u8| template.atlas.iter().filter(|v| **v == value).count() as f64;
    let mut classes = Vec::new();
    for case in &p.manifest.cases {
        let mask = p.load_reference_mask(case).unwrap().unwrap();
        let voxel = mask.voxel_volume_mm3();
        let mm3 = |l: u8| mask.data().iter().filter(|v| **v == l).count() as f64 * voxel;
        for side in [LABEL_HABENULA_L, LABEL_HABENULA_R] {
            let v = mm3(side);
            assert!(
                (20.0..=40.0).contains(&v),
                "{} habenula {side}: {v:.1} mm³",
                case.id
            );
        }
        for mriloop::phantom::template::Structure { value, name, .. } in STRUCTURES {
            let (got, want) = (mm3(value), template_mm3(value));
            let ratio = got / want;
            assert!(
                (0.75..=1.25).contains(&ratio),
                "{} {name}: {got:.0} mm³ vs {want:.0} in the template",
                case.id
            );
        }
        let patient = case.class_label.as_deref() == Some("patient");
        if patient {
            assert!(
                (3..=5).any(|l| mm3(l) > 0.0),
                "{}: a patient has lesions",
                case.id
            );
        }
        classes.push(patient);
    }
    assert!(
        classes.contains(&true) && classes.contains(&false),
        "{classes:?}"
    );
    // Another run with one case: the same bytes for it.
    let cfg1 = PhantomConfig { cases: 1, ..cfg };
    let q = phantom::generate_project(&dir.path().join("b"), &cfg1, |_, _| {}).unwrap();
    let t1 = "cases/colin27_000/T1.nii.gz";
    assert_eq!(
        std::fs::read(p.resolve(t1)).unwrap(),
        std::fs::read(q.resolve(t1)).unwrap()
    );
}

/// The affine nibabel reads from `path` (rows of the 4×4 matrix).
fn nibabel_affine(path: &Path) -> Vec<Vec<f64>> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json, nibabel; print(json.dumps(nibabel.load(sys.argv[1]).affine.tolist()))",
        ])
        .arg(path)
        .output()
        .expect("python3 runs (.ci/run installs it with nibabel)");
    assert!(
        out.status.success(),
        "nibabel could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn mni152_subjects_carry_the_atlas_and_open_in_nibabel_with_mriloops_affine() {
    use mriloop::phantom::template::{
        nilearn_data_dir, TemplateKind, TemplateSource, DEFAULT_TEMPLATE_DIR, STRUCTURES,
    };
    let nilearn = nilearn_data_dir().expect("nilearn is not installed (.ci/run pip-installs it)");
    let source = TemplateSource {
        kind: TemplateKind::Mni152,
        dir: nilearn,
        atlas_dir: DEFAULT_TEMPLATE_DIR.into(),
    };
    let template = source.load().unwrap();
    // AAL, drawn on Colin27, lands on MNI152's grey matter: the caudate, putamen and thalamus
    // are greyer inside than in the 2 mm around them.
    for fit in &template.atlas_fit {
        if ["caudate", "putamen", "thalamus"]
            .iter()
            .any(|s| fit.name.starts_with(s))
        {
            assert!(fit.grey_inside > fit.grey_around + 0.1, "{fit:?}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        cases: 2,
        seed: 5,
        grid: 96,
        voxel_mm: Some(1.2),
        ..PhantomConfig::default()
    };
    let out = dir.path().join("m");
    let p = phantom::generate_project_with(&out, &cfg, Some(&template), |_, _| {}).unwrap();
    let template_mm3 = |value: u8| template.atlas.iter().filter(|v| **v == value).count() as f64;
    for case in &p.manifest.cases {
        assert!(case.id.starts_with("mni152_"), "{}", case.id);
        let mask = p.load_reference_mask(case).unwrap().unwrap();
        let voxel = mask.voxel_volume_mm3();
        let mm3 = |l: u8| mask.data().iter().filter(|v| **v == l).count() as f64 * voxel;
        for side in [LABEL_HABENULA_L, LABEL_HABENULA_R] {
            assert!((20.0..=40.0).contains(&mm3(side)), "{}", case.id);
        }
        for mriloop::phantom::template::Structure { value, name, .. } in STRUCTURES {
            let ratio = mm3(value) / template_mm3(value);
            assert!(
                (0.75..=1.25).contains(&ratio),
                "{} {name}: {ratio:.2}",
                case.id
            );
        }
        // Every file opens in nibabel with the affine mriloop reports.
        for path in case.sequences.iter().map(|s| p.resolve(&s.path)) {
            let ours = read_volume(&path).unwrap().affine().rows();
            let theirs = nibabel_affine(&path);
            for (r, row) in ours.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    assert!(
                        (v - theirs[r][c]).abs() < 1e-4,
                        "{}: {ours:?} vs {theirs:?}",
                        path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn thick_slice_acquisitions_average_the_thin_slices_they_cover_in_place() {
    let thin_cfg = PhantomConfig {
        grid: 32,
        voxel_mm: Some(1.0),
        seed: 3,
        ..PhantomConfig::default()
    };
    let thick_cfg = PhantomConfig {
        slice_mm: Some(4.0),
        ..thin_cfg.clone()
    };
    let thin = phantom::generate_case(&thin_cfg, 0).unwrap();
    let thick = phantom::generate_case(&thick_cfg, 0).unwrap();
    let (t, f) = (&thin.images[0].1, &thick.images[0].1);
    let [nx, ny, nz, _] = t.dims();
    assert_eq!(f.dims(), [nx, ny, nz / 4, 1]);
    // A thick voxel's centre is the middle of the thin ones it covers, its value their mean.
    for (x, y, g) in [(5, 7, 0), (16, 16, 3), (nx - 1, ny - 1, nz / 4 - 1)] {
        let centre = |v: &mriloop::volume::Volume<i16>, z: f64| {
            v.affine()
                .vox_to_mm(glam::DVec3::new(x as f64, y as f64, z))
        };
        let thin_mid = (centre(t, (4 * g) as f64) + centre(t, (4 * g + 3) as f64)) / 2.0;
        assert!((centre(f, g as f64) - thin_mid).length() < 1e-3);
        let sum: f64 = (0..4)
            .map(|d| f64::from(t.data()[x + nx * (y + ny * (4 * g + d))]))
            .sum();
        assert_eq!(f.data()[x + nx * (y + ny * g)], (sum / 4.0).round() as i16);
        let label = |v: &mriloop::volume::Volume<u8>, z: usize| v.data()[x + nx * (y + ny * z)];
        let (tm, fm) = (thin.mask.as_ref().unwrap(), thick.mask.as_ref().unwrap());
        assert_eq!(label(fm, g), label(tm, 4 * g + 2));
    }
    assert!((f.affine().spacing_mm()[2] - 4.0).abs() < 1e-3);
}

#[test]
fn bids_file_names_name_their_sequence() {
    let named = |f: &str| SequenceName::from_bids_name(f).map(|s| s.as_str().to_string());
    assert_eq!(named("sub-01_T1w.nii.gz").as_deref(), Some("T1"));
    assert_eq!(named("sub-01_ses-2_run-1_T2w.nii").as_deref(), Some("T2"));
    assert_eq!(
        named("sub-01_ce-gadolinium_T1w.nii.gz").as_deref(),
        Some("Gd-T1")
    );
    assert_eq!(
        named("sub-01_acq-3d_FLAIR.nii.gz").as_deref(),
        Some("FLAIR")
    );
    assert_eq!(named("sub-01_dir-AP_dwi.nii.gz").as_deref(), Some("DWI"));
    assert_eq!(
        named("sub-01_task-rest_bold.nii.gz").as_deref(),
        Some("BOLD")
    );
    // Not BIDS, or a suffix that is not an image of these: no guess.
    assert_eq!(named("T1.nii.gz"), None);
    assert_eq!(named("sub-01_desc-brain_mask.nii.gz"), None);
    assert_eq!(named("ch2.nii.gz"), None);
}
