//! The `mriloop` command line, run as a user would.

mod common;

use std::path::Path;
use std::process::Command;

fn mriloop(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(args)
        .output()
        .expect("mriloop runs")
}

/// Run `mriloop` with `args`, asserting it succeeds (its stderr otherwise); its stdout.
fn mriloop_ok(args: &[&str]) -> String {
    let out = mriloop(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn phantom_then_info_json_reports_the_stored_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let run = mriloop(&[
        "phantom",
        "--out",
        out.to_str().unwrap(),
        "--cases",
        "2",
        "--seed",
        "3",
        "--grid",
        "20",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = out.join("cases/phantom_001/T2.nii.gz");
    let run = mriloop(&["info", "--json", file.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let h = mriloop::volume::read_header(&file).unwrap();
    assert_eq!(v["dims"], serde_json::json!(h.dims[..3]));
    assert_eq!(v["datatype"], "int16");
    assert_eq!(v["affine"], serde_json::json!(h.affine.rows()));
    assert_eq!(v["spacing"], serde_json::json!(h.affine.spacing_mm()));
    assert_eq!(v["orientation"], h.orientation_code());
    let text = mriloop(&["info", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("orientation:"));
}

#[test]
fn a_bad_file_fails_cleanly_with_its_name() {
    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed/huge_dims_30000.nii");
    let run = mriloop(&["info", bad.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("huge_dims_30000.nii") && err.contains("more than mriloop accepts"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_world_position_may_start_with_a_minus_sign() {
    // `--at -5.4,31.8,23.2` is a position, not a flag; two numbers are refused before any
    // window opens (so this runs without a display).
    let run = mriloop(&["open", "/nonexistent", "--at", "-5.4,31.8"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("--at takes three numbers") && err.contains("got 2"),
        "{err}"
    );
}

#[test]
fn nnunet_export_and_import_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let ds = dir.path().join("Dataset002_Phantom");
    let p2 = dir.path().join("p2");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    assert!(
        mriloop(&["phantom", "--out", &s(&p), "--cases", "2", "--grid", "16"])
            .status
            .success()
    );
    let run = mriloop(&["export", &s(&p), "--out", &s(&ds)]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("exported 2 training"));
    let run = mriloop(&["import", &s(&ds), "--out", &s(&p2)]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(p2.join("mriloop.json").exists());
}

/// An nnU-Net dataset has no case classes (no `classes.csv`): imported, it trains with the
/// defaults (a joint run) as segmentation only and says so; asking for the class is refused
/// naming what the cases lack; the model evaluates by Dice.
#[test]
fn a_dataset_without_classes_trains_the_segmentation_with_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (p, ds, p2) = (
        dir.path().join("p"),
        dir.path().join("ds"),
        dir.path().join("p2"),
    );
    mriloop_ok(&["phantom", "--out", &s(&p), "--cases", "4", "--grid", "16"]);
    mriloop_ok(&["export", &s(&p), "--out", &s(&ds)]);
    // What nnU-Net itself writes: no `classes.csv`, no class list in `dataset.json`.
    std::fs::remove_file(ds.join("classes.csv")).unwrap();
    let json = ds.join("dataset.json");
    let mut dataset: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    dataset.as_object_mut().unwrap().remove("mriloop_classes");
    std::fs::write(&json, dataset.to_string()).unwrap();
    mriloop_ok(&["import", &s(&ds), "--out", &s(&p2)]);
    assert!(mriloop_ok(&["plan", &s(&p2)]).contains("classes: none (training segments only)"));
    let small = [
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--patch",
        "8",
        "--base-channels",
        "2",
    ];
    let project = s(&p2);
    let train = |extra: &[&str]| {
        let args = [
            &["train", project.as_str(), "--backend", "cpu"],
            &small[..],
            extra,
        ]
        .concat();
        mriloop(&args)
    };
    let out = train(&[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("note: no case has a class: training the segmentation only"),
        "{said}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("epoch   1:") && !text.contains("class accuracy"),
        "{text}"
    );
    let fit = std::fs::read_to_string(p2.join("model/fit.json")).unwrap();
    assert!(fit.contains("\"mode\": \"SegmentationOnly\""), "{fit}");
    let out = train(&["--mode", "class", "--out", &s(&dir.path().join("class"))]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("at least two cases with a class; found 0"),
        "{said}"
    );
    let model = s(&p2.join("model/best"));
    let text = mriloop_ok(&["eval", &s(&p2), "--model", &model, "--backend", "cpu"]);
    assert!(text.contains("metric: dice_habenula_L = "), "{text}");
    assert!(
        !text.contains("class_accuracy"),
        "no case has a class: {text}"
    );
}

/// Train, evaluate and predict from the command line on tiny projects of each input form
/// (3D multi-sequence, 2D slices, 4D series): checkpoints, curves, `metric:` lines, predictions.
#[test]
fn train_eval_predict_for_the_three_input_forms() {
    let dir = tempfile::tempdir().unwrap();
    // Mixed precision on two of the forms (slower on the CPU, but the same code path as on a
    // GPU): bf16, and f16 with its loss scale across two data-parallel replicas.
    for (form, grid, precision) in [
        ("3d", "24", "f32"),
        ("2d", "32", "bf16"),
        ("4d", "8", "f16"),
    ] {
        let p = dir.path().join(form);
        let ps = p.to_str().unwrap();
        mriloop_ok(&[
            "phantom", "--out", ps, "--cases", "4", "--form", form, "--grid", grid, "--frames", "6",
        ]);
        if form == "3d" {
            let out = mriloop(&["train", ps, "--backend", "cpu", "--precision", "f8"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("unknown precision 'f8'"),
                "{err}"
            );
        }
        let out = mriloop(&[
            "train",
            ps,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--patch",
            "8",
            "--class-window",
            "16",
            "--base-channels",
            "2",
            "--backend",
            "cpu",
            "--plot",
            // Data-parallel: each batch split across two replicas on the CPU device.
            "--devices",
            "2",
            "--precision",
            precision,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("epoch   1:"), "{form}: {text}");
        assert!(p.join("model/best/model.bpk").exists() && p.join("model/curves.png").exists());
        let fit = std::fs::read_to_string(p.join("model/fit.json")).unwrap();
        assert!(fit.contains("\"devices\": 2"), "{form}: {fit}");
        let mixed = format!("\"precision\": \"{precision}\"");
        assert!(fit.contains(&mixed), "{form}: {fit}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(&format!("in {precision}")), "{form}: {said}");
        let model = p.join("model/best");
        let out = mriloop(&[
            "eval",
            ps,
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("metric: class_accuracy = "), "{form}: {text}");
        if form != "4d" {
            assert!(
                text.contains("metric: dice_habenula_L = "),
                "{form}: {text}"
            );
        }
        let out = mriloop(&[
            "predict",
            ps,
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{form}: {said}");
        // A model trained in mixed precision predicts in it on a GPU; the CPU says it cannot.
        let note = format!("note: the CPU predicts in f32 ({precision} is for GPUs)");
        assert_eq!(said.contains(&note), precision != "f32", "{form}: {said}");
        let project = mriloop::project::Project::open(&p).unwrap();
        let case = &project.manifest.cases[0];
        assert_eq!(case.predicted_class.as_ref().map(Vec::len), Some(2));
        let mask = project.resolve(case.predicted_mask.as_deref().unwrap());
        let image = project.resolve(&case.sequences[0].path);
        let (m, i) = (
            mriloop::volume::read_header(&mask).unwrap(),
            mriloop::volume::read_header(&image).unwrap(),
        );
        assert_eq!(
            m.dims[..3],
            i.dims[..3],
            "{form}: the prediction is on the case's grid"
        );
        assert!(m.affine.max_abs_diff(&i.affine) < 1e-5);
        if form == "3d" {
            shards_match_one_run(&p, &model, dir.path());
            an_added_model_predicts_as_the_active_version(&p, &model, dir.path());
        }
    }
}

/// A copy of the project `one_run` at `copy` with its cases' files but no predictions; and
/// the project itself, opened.
fn fresh_copy(one_run: &Path, copy: &Path) -> mriloop::project::Project {
    use mriloop::project::Project;
    std::fs::create_dir_all(copy.join("cases")).unwrap();
    std::fs::copy(one_run.join("mriloop.json"), copy.join("mriloop.json")).unwrap();
    let reference = Project::open(one_run).unwrap();
    for c in &reference.manifest.cases {
        let dir = copy.join("cases").join(&c.id);
        std::fs::create_dir_all(&dir).unwrap();
        for s in &c.sequences {
            std::fs::copy(reference.resolve(&s.path), copy.join(&s.path)).unwrap();
        }
        if let Some(r) = &c.reference_mask {
            std::fs::copy(reference.resolve(r), copy.join(r)).unwrap();
        }
    }
    let mut fresh = Project::open(copy).unwrap();
    for c in &mut fresh.manifest.cases {
        (
            c.predicted_mask,
            c.predicted_probabilities,
            c.predicted_class,
        ) = (None, None, None);
    }
    fresh.save().unwrap();
    reference
}

/// `add-model` makes a checkpoint trained elsewhere a version of a project (copied, recorded
/// with where it came from, active when asked); `predict` without `--model` then predicts with
/// it, naming the version, the same masks as predicting with the folder.
fn an_added_model_predicts_as_the_active_version(one_run: &Path, model: &Path, scratch: &Path) {
    let copy = scratch.join("added");
    let reference = fresh_copy(one_run, &copy);
    let cs = copy.to_str().unwrap();
    let out = mriloop(&["predict", cs, "--backend", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no active model version"),
        "{err}"
    );
    let m = model.to_str().unwrap();
    let out = mriloop(&["add-model", cs, "--model", m, "--activate"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("added v1 (joint"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(copy.join("models/v1/best/model.bpk")).unwrap(),
        std::fs::read(model.join("model.bpk")).unwrap()
    );
    mriloop_ok(&["predict", cs, "--backend", "cpu"]);
    let added = mriloop::project::Project::open(&copy).unwrap();
    let version = &added.manifest.models[0];
    assert_eq!(added.manifest.active_model.as_deref(), Some("v1"));
    assert_eq!(version.added_from.as_deref(), Some(m));
    for (a, r) in added.manifest.cases.iter().zip(&reference.manifest.cases) {
        assert_eq!(a.predicted_by.as_deref(), Some("v1"), "{}", a.id);
        assert_eq!(a.predicted_class, r.predicted_class, "{}", a.id);
    }
    // A model whose labels are not the project's is refused, naming both lists.
    let mut renamed = mriloop::project::Project::open(&copy).unwrap();
    let mut labels = renamed.manifest.labels.labels().to_vec();
    labels[0].name = "hippocampus_L".into();
    renamed.manifest.labels = mriloop::project::LabelTable::new(labels).unwrap();
    renamed.save().unwrap();
    let out = mriloop(&["add-model", cs, "--model", m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("are not the project's")
            && err.contains("hippocampus_L"),
        "{err}"
    );
    // A model reading a sequence the project lacks is refused by name, and nothing is added.
    let mut lacking = mriloop::project::Project::open(&copy).unwrap();
    lacking.manifest.sequences.pop();
    for c in &mut lacking.manifest.cases {
        c.sequences.pop();
    }
    lacking.save().unwrap();
    let out = mriloop(&["add-model", cs, "--model", m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("reads sequences the project does not have"),
        "{err}"
    );
    assert_eq!(
        mriloop::project::Project::open(&copy)
            .unwrap()
            .manifest
            .models
            .len(),
        1
    );
}

/// Two shards of `predict` running at once on a copy of the project (predicted by one run),
/// then `merge-shards`: the shards leave the manifest alone, and the merged project has the
/// same predicted masks and class probabilities as the one run.
fn shards_match_one_run(one_run: &Path, model: &Path, scratch: &Path) {
    use mriloop::project::Project;
    let copy = scratch.join("sharded");
    let reference = fresh_copy(one_run, &copy);
    let manifest_before = std::fs::read(copy.join("mriloop.json")).unwrap();
    let shard = |i: usize| {
        Command::new(env!("CARGO_BIN_EXE_mriloop"))
            .args(["predict", copy.to_str().unwrap(), "--model"])
            .arg(model)
            .args(["--backend", "cpu", "--shard", &format!("{i}/2")])
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (shard(0), shard(1));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let manifest_after = std::fs::read(copy.join("mriloop.json")).unwrap();
    assert_eq!(
        manifest_before, manifest_after,
        "a shard wrote the manifest"
    );
    let text = mriloop_ok(&["merge-shards", copy.to_str().unwrap()]);
    let n = reference.manifest.cases.len();
    assert!(
        text.contains(&format!("merged {n} cases; 0 without")),
        "{text}"
    );
    let merged = Project::open(&copy).unwrap();
    for (m, r) in merged.manifest.cases.iter().zip(&reference.manifest.cases) {
        assert_eq!(m.predicted_class, r.predicted_class, "{}", m.id);
        let read = |p: &Project, c: &mriloop::project::Case| {
            let path = p.resolve(c.predicted_mask.as_deref().unwrap());
            mriloop::volume::read_volume(&path)
                .unwrap()
                .to_f32()
                .into_data()
        };
        assert_eq!(read(&merged, m), read(&reference, r), "{}", m.id);
    }
    // A malformed record is refused by name, and the merge says so.
    let bad = merged.prediction_record_path(&merged.manifest.cases[0].id);
    std::fs::write(&bad, b"{ not json").unwrap();
    let out = mriloop(&["merge-shards", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("prediction.json"),
        "{err}"
    );
}

#[test]
fn import_dicom_lists_series_and_problems_then_adds_them_to_a_case() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom-pydicom");
    let dicom = dir.path().join("dicom");
    std::fs::create_dir(&dicom).unwrap();
    for f in ["MR_small.dcm", "MR_truncated.dcm"] {
        std::fs::copy(data.join(f), dicom.join(f)).unwrap();
    }
    let project = dir.path().join("study");
    let run = mriloop(&[
        "import-dicom",
        dicom.to_str().unwrap(),
        "--project",
        project.to_str().unwrap(),
        "--case",
        "subject01",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("2 files, 1 series"), "{stdout}");
    assert!(stdout.contains("64x64x1 voxels"), "{stdout}");
    assert!(
        stdout.contains("not imported:") && stdout.contains("MR_truncated.dcm"),
        "{stdout}"
    );
    let p = mriloop::project::Project::open(&project).unwrap();
    let case = p.manifest.case("subject01").unwrap();
    assert_eq!(case.form, mriloop::project::InputForm::Slice2d);
    assert_eq!(case.sequences.len(), 1);
    assert!(p.resolve(&case.sequences[0].path).exists());
    // A series number outside the listing is refused, naming the range.
    let run = mriloop(&["import-dicom", dicom.to_str().unwrap(), "--series", "2"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("series 1 to 1"));
}

/// The `epoch` and `step` of a run's saved state (`OUT/continue/state.json`), if written.
fn saved_state(out: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(out.join("continue/state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v["epoch"].as_u64()?, v["step"].as_u64()?))
}

/// Run `mriloop ARGS` and kill it as soon as a first epoch is saved in `out`; the saved state.
fn kill_after_first_epoch(args: &[String], out: &Path) -> (u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while saved_state(out).is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "it ended before its first epoch"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    saved_state(out).unwrap()
}

/// A training run killed during its second epoch and continued with `train --continue` ends at
/// the planned step count, repeating only the epoch it was killed in, with the weights an
/// uninterrupted run reaches (optimiser state, step and random draws restored).
#[test]
fn a_killed_training_run_continues_to_the_planned_steps_repeating_at_most_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let ps = p.to_str().unwrap();
    mriloop_ok(&["phantom", "--out", ps, "--cases", "4", "--grid", "24"]);
    let flags = |run: &Path| {
        let out = run.display().to_string();
        [
            "train",
            ps,
            "--epochs",
            "3",
            "--steps-per-epoch",
            "30",
            "--patch",
            "8",
            "--class-window",
            "16",
            "--base-channels",
            "2",
            "--backend",
            "cpu",
            "--out",
            &out,
        ]
        .map(String::from)
    };
    let whole = dir.path().join("whole");
    let run = Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(flags(&whole))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(saved_state(&whole), Some((3, 90)));
    // The same run, killed as soon as its first epoch is saved (again, in a new folder, if
    // this machine was too busy to kill it before its last epoch).
    let killed = dir.path().join("killed");
    let mut at_kill = (3, 90);
    for _attempt in 0..5 {
        let _ = std::fs::remove_dir_all(&killed);
        at_kill = kill_after_first_epoch(&flags(&killed), &killed);
        if at_kill.0 < 3 {
            break;
        }
    }
    assert!(at_kill.0 < 3, "killed after the last epoch: {at_kill:?}");
    let text = mriloop_ok(&[
        "train",
        ps,
        "--continue",
        killed.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let first = at_kill.0 + 1;
    assert!(text.contains(&format!("epoch   {first}:")), "{text}");
    assert!(!text.contains(&format!("epoch   {}:", at_kill.0)), "{text}");
    assert_eq!(saved_state(&killed), Some((3, 90)), "{text}");
    // The same weights as the uninterrupted run (training here is deterministic): the two
    // models predict the same probabilities. (The files differ: parameter ids are random.)
    let probabilities = |model: &Path| {
        let m = model.to_str().unwrap();
        mriloop_ok(&["predict", ps, "--model", m, "--backend", "cpu"]);
        let prob = p.join("cases/phantom_000/predicted_prob.nii.gz");
        mriloop::volume::read_volume(&prob)
            .unwrap()
            .to_f32()
            .into_data()
    };
    let (a, b) = (
        probabilities(&whole.join("last")),
        probabilities(&killed.join("last")),
    );
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differ, 0,
        "the continued run predicts otherwise at {differ} voxels"
    );
}

#[test]
fn bench_predict_prints_burns_figure_beside_the_reference_and_says_what_it_skipped() {
    let out = mriloop_ok(&["bench", "predict", "--size", "32"]);
    let figure = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("bench: {name} = ")))
            .and_then(|v| v.strip_suffix(" s"))
            .map(|v| v.parse::<f64>().unwrap())
    };
    let burn = figure("predict_s_32_cpu").unwrap_or_else(|| panic!("{out}"));
    assert!(burn > 0.0, "{out}");
    // PyTorch's figure when python3 has torch, else a note saying why not.
    let cpu_skipped = ["note: PyTorch on cpu skipped", "note: PyTorch skipped"];
    assert!(
        figure("predict_s_32_torch_cpu").is_some_and(|t| t > 0.0)
            || cpu_skipped.iter().any(|n| out.contains(n)),
        "{out}"
    );
    assert!(out.contains("reference: goal predict_s_256_cpu"), "{out}");
}

#[test]
fn bench_predict_on_lavapipe_times_the_gpu_route() {
    // 48³: two rows of four 32³ windows, summed on the device by the slab kernels.
    let args = ["bench", "predict", "--size", "48", "--backends", "wgpu"];
    let out = mriloop_ok(&[&args[..], &["--software-gpu"]].concat());
    let figure = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("bench: {name} = ")))
            .and_then(|v| v.strip_suffix(" s"))
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert!(
        !out.contains("predict_s_48_cpu"),
        "only wgpu was asked for: {out}"
    );
    // A machine with a hardware GPU times that instead.
    if figure("predict_s_48_wgpu").is_some_and(|s| s > 0.0) {
        return;
    }
    let seconds = figure("predict_s_48_wgpu_software");
    assert!(seconds.is_some_and(|s| s > 0.0), "{out}");
    let without = mriloop_ok(&args);
    assert!(without.contains("note: wgpu skipped"), "{without}");
}

#[test]
fn bench_backends_measures_only_the_named_ones() {
    // burn's CPU alone: no PyTorch figure and no note about PyTorch or the GPU (the
    // `reference:` line names them all).
    let out = mriloop_ok(&["bench", "predict", "--size", "32", "--backends", "cpu"]);
    assert!(out.contains("bench: predict_s_32_cpu = "), "{out}");
    let measured = |out: &str| {
        out.lines()
            .filter(|l| l.starts_with("bench:") || l.starts_with("note:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for absent in ["torch", "PyTorch", "wgpu", "cuda"] {
        assert!(!measured(&out).contains(absent), "{absent}: {out}");
    }
    let out = mriloop_ok(&[
        "bench",
        "train",
        "--config",
        "small",
        "--repeats",
        "1",
        "--rounds",
        "1",
        "--backends",
        "cpu",
    ]);
    assert!(
        out.contains("bench: train_steps_per_s_cpu_small = "),
        "{out}"
    );
    assert!(!measured(&out).contains("torch"), "{out}");
    let refused = mriloop(&["bench", "train", "--backends", "cpu,gpu"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("unknown backend \"gpu\""), "{err}");
}

#[test]
fn bench_train_prints_steps_flops_and_utilisation_per_network() {
    let out = mriloop_ok(&[
        "bench",
        "train",
        "--config",
        "small",
        "--repeats",
        "1",
        "--peak-tflops",
        "1",
        "--precision",
        "f32,bf16",
        "--rounds",
        "2",
    ]);
    // Two rounds of each backend in turn: each figure their median, the rounds in a note.
    assert!(out.contains("note: cpu small: rounds "), "{out}");
    assert!(out.contains("note: cpu_bf16 small: rounds "), "{out}");
    // Each precision under its own name (mixed precision: the backend's name + the type).
    for name in [
        "train_steps_per_s_cpu_small",
        "train_tflops_cpu_small",
        "train_mfu_cpu_small",
        "train_steps_per_s_cpu_bf16_small",
        "train_mfu_cpu_bf16_small",
    ] {
        assert!(out.contains(&format!("bench: {name} = ")), "{name}: {out}");
    }
    // PyTorch in both, with autocast, when python3 has torch; else a note says why not.
    let torch = ["torch_cpu_small", "torch_cpu_bf16_small"]
        .iter()
        .all(|b| out.contains(&format!("bench: train_steps_per_s_{b} = ")));
    let cpu_skipped = ["note: PyTorch on cpu skipped", "note: PyTorch skipped"];
    assert!(
        torch || cpu_skipped.iter().any(|n| out.contains(n)),
        "{out}"
    );
    let refused = mriloop(&["bench", "train", "--config", "huge"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("use small, nnunet or all"));
}

/// A user's own files become a project case with `add-case`: MRIcron's Colin27 T1 and AAL
/// atlas (Debian's `mricron-data`), the atlas rewritten as int16 with nibabel the way many
/// pipelines save labels. The files are copied, never changed; the labels take their names from
/// the atlas's text table beside it and their voxels are nibabel's; what does not fit is
/// refused by name.
#[test]
fn add_case_makes_a_project_case_from_the_users_own_files() {
    let templates = Path::new("/usr/share/mricron/templates");
    let (t1, bet) = (
        templates.join("ch2.nii.gz"),
        templates.join("ch2bet.nii.gz"),
    );
    assert!(t1.is_file(), "mricron-data is installed by .ci/run");
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("atlas.nii.gz");
    let counts = common::python(
        "import sys, nibabel as nib, numpy as np
img = nib.load(sys.argv[1])
a = np.asarray(img.dataobj).astype(np.int16)
out = nib.Nifti1Image(a, img.affine, img.header)
out.set_data_dtype(np.int16)
nib.save(out, sys.argv[2])
print(int((a == 1).sum()), int((a == 116).sum()), len(np.unique(a)) - 1)",
        &[templates.join("aal.nii.gz"), labels.clone()],
    );
    std::fs::copy(
        templates.join("aal.nii.txt"),
        dir.path().join("atlas.nii.txt"),
    )
    .unwrap();
    let before = std::fs::read(&labels).unwrap();
    let p = dir.path().join("p");
    let ps = p.to_str().unwrap();
    let image = |name: &str, path: &Path| format!("--image={name}={}", path.display());
    let text = mriloop_ok(&[
        "add-case",
        ps,
        "--case",
        "colin27",
        &image("T1", &t1),
        &image("T1-brain", &bet),
        "--mask",
        labels.to_str().unwrap(),
        "--class",
        "healthy",
    ]);
    assert!(text.contains("new label 1: Precentral_L"), "{text}");
    assert_eq!(std::fs::read(&labels).unwrap(), before, "the user's file");
    let project = mriloop::project::Project::open(&p).unwrap();
    let m = &project.manifest;
    let sequences: Vec<&str> = m.sequences.iter().map(|s| s.as_str()).collect();
    assert_eq!(sequences, ["T1", "T1-brain"]);
    assert_eq!(m.classes, ["healthy"]);
    assert_eq!(m.labels.get(116).unwrap().name, "Vermis_10");
    let case = &m.cases[0];
    assert_eq!(case.class_label.as_deref(), Some("healthy"));
    assert_eq!(
        std::fs::read(project.resolve(&case.sequences[0].path)).unwrap(),
        std::fs::read(&t1).unwrap(),
        "a .nii.gz is copied byte for byte"
    );
    let mask = project.load_reference_mask(case).unwrap().unwrap();
    let count = |v: u8| mask.data().iter().filter(|x| **x == v).count();
    let ours = format!("{} {} {}", count(1), count(116), m.labels.labels().len());
    assert_eq!(ours, counts.trim(), "label voxels as nibabel reads them");

    // Refused, by file: a mask on another grid (MNI's 182 × 218 × 182, not Colin's 181 × 217
    // × 181); a sequence the case has; a malformed --image.
    let jhu = templates.join("JHU-WhiteMatter-labels-1mm.nii.gz");
    let refused = |args: &[&str], said: &[&str]| {
        let out = mriloop(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(said.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    };
    let (t1_arg, bet_arg) = (image("T1", &t1), image("T1", &bet));
    let jhu = jhu.to_str().unwrap();
    refused(
        &["add-case", ps, "--case", "other", &t1_arg, "--mask", jhu],
        &["JHU-WhiteMatter-labels-1mm", "co-registered"],
    );
    refused(
        &["add-case", ps, "--case", "colin27", &bet_arg],
        &["already has a T1 image"],
    );
    refused(
        &["add-case", ps, "--case", "x", "--image", "T1"],
        &["SEQUENCE=FILE"],
    );
    // Refused into a new folder: no project is left there.
    let fresh = dir.path().join("fresh");
    let fresh_s = fresh.to_str().unwrap();
    refused(
        &["add-case", fresh_s, "--case", "x", &t1_arg, "--mask", jhu],
        &["co-registered"],
    );
    assert!(!fresh.exists(), "a refused case left {}", fresh.display());
    assert_eq!(
        mriloop::project::Project::open(&p).unwrap().manifest,
        project.manifest,
        "a refused case changes nothing"
    );
    // A BIDS file names its sequence itself.
    let bids = dir.path().join("sub-02_T1w.nii.gz");
    std::fs::copy(&t1, &bids).unwrap();
    let text = mriloop_ok(&[
        "add-case",
        ps,
        "--case",
        "sub-02",
        "--image",
        bids.to_str().unwrap(),
    ]);
    assert!(text.contains("added case sub-02"), "{text}");
    let project = mriloop::project::Project::open(&p).unwrap();
    assert_eq!(project.manifest.cases[1].sequences[0].name.as_str(), "T1");
    // A prediction made elsewhere joins the case, to review.
    let labels_path = labels.to_str().unwrap();
    mriloop_ok(&[
        "add-case",
        ps,
        "--case",
        "colin27",
        "--prediction",
        labels_path,
    ]);
    let project = mriloop::project::Project::open(&p).unwrap();
    let case = &project.manifest.cases[0];
    assert!(case.predicted_mask.is_some() && case.predicted_by.is_none());
    // The project trains as it is: its plan reads every case.
    let text = mriloop_ok(&["plan", ps]);
    assert!(text.contains("written:"), "{text}");
}

/// Output piped into a reader that has gone (`mriloop … | head`) ends the command quietly, as
/// `ls` or `grep` end, not with a panic; and a command that looks for a GPU on a machine with no
/// Wayland session (no XDG_RUNTIME_DIR, as under Slurm) prints no libwayland error.
#[test]
fn headless_commands_end_quietly_on_a_closed_pipe_and_print_no_display_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let ps = p.to_str().unwrap();
    mriloop_ok(&["phantom", "--out", ps, "--cases", "2", "--grid", "24"]);
    let exe = env!("CARGO_BIN_EXE_mriloop");
    // `true` reads nothing and is gone before mriloop has copied the image.
    let t1 = p.join("cases/phantom_000/T1.nii.gz");
    let (q, t1) = (dir.path().join("q"), t1.display());
    let command = format!(
        "'{exe}' add-case '{}' --case a --image T1='{t1}' | true",
        q.display()
    );
    let out = Command::new("sh").args(["-c", &command]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let out = Command::new(exe)
        .args(["plan", ps, "--backend", "auto"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}
