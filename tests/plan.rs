//! The dataset fingerprint and the training plan, on small datasets built here (not mriloop's
//! phantom): known voxel sizes, label volumes and class balance, one of them anisotropic. The
//! expected plan values are worked out in each test from the rules in `model/plan.rs`'s header,
//! not copied from the program's output.

use mriloop::model::fingerprint::{quantile, Fingerprint};
use mriloop::model::plan::{depth_for, patch_for, plan, Augmentation, DeviceClass};
use mriloop::project::{
    Case, InputForm, Label, LabelTable, Manifest, Project, SequenceFile, SequenceName,
};
use mriloop::volume::{write_volume, Affine, Volume};
use std::path::Path;

/// NIfTI stores voxel sizes as f32: compare at that precision.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn close3(a: [f64; 3], b: [f64; 3]) -> bool {
    (0..3).all(|i| close(a[i], b[i]))
}

/// One synthetic case: a bright box "head" filling the middle half of the grid, and cubic
/// labels of `label_edges[k]` voxels a side for label k + 1 (0: absent).
struct CaseSpec {
    dims: [usize; 3],
    spacing_mm: [f64; 3],
    label_edges: [usize; 2],
    class: &'static str,
}

/// A cube of label `value` and edge `edge` voxels at `origin`.
fn paint_cube(mask: &mut [u8], dims: [usize; 3], origin: [usize; 3], edge: usize, value: u8) {
    for k in origin[2]..origin[2] + edge {
        for j in origin[1]..origin[1] + edge {
            for i in origin[0]..origin[0] + edge {
                mask[i + dims[0] * (j + dims[1] * k)] = value;
            }
        }
    }
}

fn write_case(root: &Path, id: &str, spec: &CaseSpec) -> Case {
    let [nx, ny, nz] = spec.dims;
    let affine = Affine::from_spacing(spec.spacing_mm);
    let mut t1 = vec![0.0f32; nx * ny * nz];
    for k in nz / 4..3 * nz / 4 {
        for j in ny / 4..3 * ny / 4 {
            for i in nx / 4..3 * nx / 4 {
                t1[i + nx * (j + ny * k)] = 100.0 + ((i * 7 + j * 3 + k) % 11) as f32;
            }
        }
    }
    let mut mask = vec![0u8; nx * ny * nz];
    let origins = [[nx / 4, ny / 4, nz / 4], [nx / 2, ny / 2, nz / 2]];
    for (k, edge) in spec.label_edges.iter().enumerate() {
        if *edge > 0 {
            paint_cube(&mut mask, spec.dims, origins[k], *edge, k as u8 + 1);
        }
    }
    let dir = format!("cases/{id}");
    std::fs::create_dir_all(root.join(&dir)).unwrap();
    let dims4 = [nx, ny, nz, 1];
    write_volume(
        &root.join(format!("{dir}/T1.nii.gz")),
        &Volume::new(dims4, affine, t1).unwrap(),
    )
    .unwrap();
    write_volume(
        &root.join(format!("{dir}/seg.nii.gz")),
        &Volume::new(dims4, affine, mask).unwrap(),
    )
    .unwrap();
    let mut case = Case::new(id, InputForm::Volume3d);
    case.sequences.push(SequenceFile {
        name: SequenceName::from("T1".to_string()),
        path: format!("{dir}/T1.nii.gz"),
    });
    case.reference_mask = Some(format!("{dir}/seg.nii.gz"));
    case.class_label = Some(spec.class.into());
    case
}

/// The label table of the synthetic cases (`named`), or none.
fn labels(named: bool) -> LabelTable {
    if !named {
        return LabelTable::default();
    }
    let label = |value, name: &str| Label {
        value,
        name: name.into(),
        color: [200, 60 * value, 40],
    };
    LabelTable::new(vec![label(1, "small"), label(2, "large")]).unwrap()
}

/// Four cases of `dims` at 1 mm, labels of 2 and 4 voxels a side, control / patient by turns.
fn alternating(dims: [usize; 3]) -> Vec<CaseSpec> {
    (0..4)
        .map(|k| CaseSpec {
            dims,
            spacing_mm: [1.0; 3],
            label_edges: [2, 4],
            class: if k % 2 == 0 { "control" } else { "patient" },
        })
        .collect()
}

/// A tiny joint fit on T1: 8-voxel patches and class crop, width 2, batch 1.
fn tiny_options(epochs: usize, steps_per_epoch: usize) -> mriloop::model::FitOptions {
    mriloop::model::FitOptions {
        sequences: vec!["T1".into()],
        epochs,
        steps_per_epoch,
        patch: 8,
        batch: 1,
        class_window: 8,
        base_channels: 2,
        mode: "joint".into(),
        spacing_mm: None,
        learning_rate: 1e-3,
        seed: 1,
    }
}

fn project(root: &Path, specs: &[CaseSpec]) -> Project {
    project_with(root, specs, true)
}

fn project_with(root: &Path, specs: &[CaseSpec], named_labels: bool) -> Project {
    let mut manifest = Manifest::new("synthetic");
    manifest.sequences = vec![SequenceName::from("T1".to_string())];
    manifest.classes = vec!["control".into(), "patient".into()];
    manifest.labels = labels(named_labels);
    std::fs::create_dir_all(root).unwrap();
    for (k, s) in specs.iter().enumerate() {
        manifest
            .cases
            .push(write_case(root, &format!("c{k:02}"), s));
    }
    Project::create(root, manifest).unwrap()
}

#[test]
fn an_isotropic_dataset_gets_the_plan_its_rules_imply() {
    let dir = tempfile::tempdir().unwrap();
    // Six cases: spacings 0.9–1.1 mm, 40×48×36 voxels; label 1 a 2-voxel cube (tiny), label 2 a
    // 6-voxel cube; 4 controls, 2 patients.
    let spacings = [0.9, 1.0, 1.0, 1.1, 1.0, 1.0];
    let specs: Vec<CaseSpec> = spacings
        .iter()
        .enumerate()
        .map(|(k, s)| CaseSpec {
            dims: [40, 48, 36],
            spacing_mm: [*s, *s, 1.2 * s],
            label_edges: [2, 6],
            class: if k < 4 { "control" } else { "patient" },
        })
        .collect();
    let p = project(&dir.path().join("p"), &specs);
    let fp = Fingerprint::of(&p).unwrap();

    // Fingerprint: median spacing of {0.9, 1, 1, 1, 1, 1.1} is 1.0 (×1.2 through-plane); label
    // volumes are edge³ voxels × voxel volume, whose median over the cases is at spacing 1.0.
    assert!(close3(fp.median_spacing_mm(), [1.0, 1.0, 1.2]));
    let l1 = &fp.labels[0];
    assert_eq!((l1.value, l1.cases), (1, 6));
    assert!(close(l1.median_volume_mm3, 8.0 * 1.2));
    assert!(close(l1.min_volume_mm3, 8.0 * 0.9f64.powi(3) * 1.2));
    assert!(close(fp.labels[1].median_volume_mm3, 216.0 * 1.2));
    assert_eq!(
        fp.classes,
        vec![("control".into(), 4), ("patient".into(), 2)]
    );
    // The head (the bright box) spans half of each axis.
    assert!(close3(fp.median_head_extent_mm(), [20.0, 24.0, 18.0 * 1.2]));

    let plan = plan(&fp, DeviceClass::Cpu);
    // Rule 1: isotropic enough (1.2 / 1.0 < 3): the median.
    assert!(close3(plan.spacing_mm, [1.0, 1.0, 1.2]));
    assert_eq!(plan.anisotropic_axis, None);
    // Rule 2: the median case is 40 × 48 × 36 voxels at that spacing; multiples of 8:
    // [40, 48, 32] (61 440 voxels > the CPU's 24³ = 13 824). Shrink the axis spanning the most
    // mm by 8: y 48 mm → [40, 40, 32]; x and y 40 mm, z 38.4 mm: y (the last of the tie) →
    // [40, 32, 32]; x 40 mm → [32, 32, 32] (32 768); z 38.4 mm → [32, 32, 24] (24 576); x, y
    // 32 mm: y → [32, 24, 24] (18 432); x 32 mm → [24, 24, 24] = 13 824 ≤ 13 824.
    assert_eq!(plan.patch, [24, 24, 24]);
    // Rule 3: 24 / 2³ = 3 ≥ 3 but 24 is not a multiple of 2⁴: depth 3. CPU width 8, batch 2.
    assert_eq!((plan.depth, plan.base_channels, plan.batch), (3, 8, 2));
    // Rule 5: the tiny label (9.6 mm³) fills under 1 % of a 24 × 24 × 28.8 mm patch: half the
    // patches on foreground; weights ∝ 1/√volume.
    assert_eq!(plan.foreground_fraction, 0.5);
    let (w1, w2) = (1.0 / (9.6f64).sqrt(), 1.0 / (259.2f64).sqrt());
    assert!(close(plan.label_weights[0].1, w1 / (w1 + w2)));
    assert!(close(plan.label_weights[1].1, w2 / (w1 + w2)));
    // Rule 6: head 20 × 24 × 21.6 mm → 20, 24, 18 voxels → up to multiples of 8: 24, 24, 24;
    // a class step costs r = 24³ / (2 · 24³) = 0.5 segmentation steps: k = ⌈0.5 + 1⌉ = 2.
    // That is under 1.5 × the CPU's 48³ crop budget: the class sees the volume's own grid.
    assert_eq!(plan.class_window, [24, 24, 24]);
    assert_eq!(plan.class_stride, [1, 1, 1]);
    assert_eq!(plan.class_every, 2);
    // Rule 7: n / (k · n_c) = 6 / (2 · 4) and 6 / (2 · 2).
    assert_eq!(
        plan.class_weights,
        vec![("control".into(), 0.75), ("patient".into(), 1.5)]
    );
    // Rules 8 and 9: 6 cases → strong; 75 × 6 = 450 → 600 steps.
    assert_eq!(plan.augmentation, Augmentation::Strong);
    assert_eq!((plan.steps, plan.epochs), (600, 12));
    // Rule 12: a promptable run learns one object of one label a patch: 600 steps for each of
    // the 2 labels; applied once, and said.
    let prompting = plan.clone().for_prompting();
    assert_eq!((prompting.steps, prompting.epochs), (1200, 12));
    assert!(prompting.promptable && !plan.promptable);
    assert_eq!(prompting.clone().for_prompting().steps, 1200);
    assert!(prompting.rationale.last().unwrap().contains("2 labels"));
    // Two patients are too few to learn and validate the class well: said.
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0].contains("patient has only 2"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn an_anisotropic_dataset_resamples_its_coarse_axis_at_the_10th_percentile() {
    let dir = tempfile::tempdir().unwrap();
    // Thick slices: 0.8 mm in-plane, 2.5–4.0 mm through-plane; label 2 only in two cases;
    // every case a control (no patient).
    let thick = [3.0, 4.0, 2.5, 3.5, 3.0];
    let specs: Vec<CaseSpec> = thick
        .iter()
        .enumerate()
        .map(|(k, t)| CaseSpec {
            dims: [64, 64, 16],
            spacing_mm: [0.8, 0.8, *t],
            label_edges: [4, if k < 2 { 3 } else { 0 }],
            class: "control",
        })
        .collect();
    let p = project(&dir.path().join("p"), &specs);
    let fp = Fingerprint::of(&p).unwrap();
    let plan = plan(&fp, DeviceClass::Cpu);
    // Rule 1: median 3.0 > 3 × 0.8, so z takes the 10th percentile of {2.5, 3, 3, 3.5, 4}:
    // position 0.4 between 2.5 and 3.0 → 2.7.
    let p10 = quantile(thick.to_vec(), 0.1);
    assert!((p10 - 2.7).abs() < 1e-12);
    assert_eq!(plan.anisotropic_axis, Some(2));
    assert!(close3(plan.spacing_mm, [0.8, 0.8, p10]));
    // Rule 2: the median case is 51.2 mm in-plane (64 voxels) and 16 × 3 = 48 mm deep, i.e.
    // 48 / 2.7 = 17.8 → 18 voxels → [64, 64, 16] (65 536 > 13 824); z (43.2 mm) is at the
    // 16-voxel floor, so x and y shrink, the one spanning more mm first, y on a tie:
    // [64, 56, 16], [56, 56, 16], [56, 48, 16], [48, 48, 16], [48, 40, 16], [40, 40, 16],
    // [40, 32, 16], [32, 32, 16] = 16 384, [32, 24, 16] = 12 288.
    assert_eq!(plan.patch, [32, 24, 16]);
    // Rule 3: 24 / 2² = 6 and 16 / 2² = 4 ≥ 3, but 16 / 2³ = 2 < 3: depth 2.
    assert_eq!(plan.depth, 2);
    // Warnings: no patient, and label 2 in only two cases.
    assert!(
        plan.warnings.iter().any(|w| w.contains("patient")),
        "{:?}",
        plan.warnings
    );
    assert!(
        plan.warnings.iter().any(|w| w.contains("label 2")),
        "{:?}",
        plan.warnings
    );
    assert_eq!(plan.class_weights[1], ("patient".into(), 0.0));
}

#[test]
fn patch_and_depth_rules_on_their_own() {
    // A GPU budget (96³) takes a whole 80 × 96 × 72 case.
    assert_eq!(
        patch_for([80, 96, 72], [1.0; 3], false, 96 * 96 * 96),
        [80, 96, 72]
    );
    // A 2D form keeps one voxel through-plane and ignores that axis for the depth.
    let p = patch_for([200, 180, 1], [0.5, 0.5, 3.0], true, 32 * 32 * 32);
    assert_eq!(p[2], 1);
    assert!(p[0] * p[1] <= 32 * 32 * 32);
    assert_eq!(depth_for([64, 64, 1]), 4);
    assert_eq!(depth_for([24, 24, 24]), 3);
    assert_eq!(depth_for([12, 12, 12]), 2);
}

#[test]
fn the_class_crop_sees_the_whole_head_on_a_coarser_grid() {
    use mriloop::model::plan::class_view_for;
    let budget = 48 * 48 * 48; // 110 592 voxels; 1.5× is 165 888.
                               // A 100 × 97 × 88 mm head at 1 mm, depth 3 (multiples of 8): [104, 104, 88] = 951 808.
                               // Equal spacings: the longest window coarsens first (x on the tie) → [56, 104, 88];
                               // then y (1 mm, longer than z) → [56, 56, 88] = 275 968; then z → [56, 56, 48] = 150 528
                               // ≤ 165 888. Cropped into the budget, the longest axis (y, the last of the tie) first:
                               // [56, 48, 48], then x: [48, 48, 48] = 110 592, 96 mm of 2 mm blocks per axis.
    assert_eq!(
        class_view_for([100.0, 97.0, 88.0], [1.0; 3], 3, false, budget),
        ([48, 48, 48], [2, 2, 2])
    );
    // Thick slices: 0.9 × 0.9 × 3 mm, a 180 × 200 × 150 mm head → [200, 223, 50] voxels →
    // [200, 224, 56]. In-plane axes coarsen first, the longer on a tie: y → [200, 112, 56];
    // x → 100 → [104, 112, 56]; y (1.8 mm) → 223/3 → 75 → [104, 80, 56]; x → 200/3 → 67 →
    // [72, 80, 56]; y (2.7 mm) → 56 → [72, 56, 56]; x → [56, 56, 56] = 175 616 > 165 888;
    // now z (3 mm) is the finest: 50/2 = 25 → 32: [56, 56, 32] = 100 352, within budget.
    assert_eq!(
        class_view_for([180.0, 200.0, 150.0], [0.9, 0.9, 3.0], 3, false, budget),
        ([56, 56, 32], [4, 4, 2])
    );
    // A head that fits keeps its grid; a 2D form one voxel through-plane.
    assert_eq!(
        class_view_for([40.0, 40.0, 40.0], [1.0; 3], 2, false, budget),
        ([40, 40, 40], [1, 1, 1])
    );
    let (w, s) = class_view_for([240.0, 240.0, 5.0], [0.5, 0.5, 5.0], 3, true, budget);
    assert_eq!((w[2], s[2]), (1, 1));
    // 480 × 480 in-plane: 230 400 > 165 888 → x (the first of the tie) → [240, 480] =
    // 115 200 ≤ 165 888; cropped, y (the longest) loses 8 three times: [240, 456] = 109 440.
    assert_eq!((w, s), ([240, 456, 1], [2, 1, 1]));
}

#[test]
fn block_means_average_whole_and_partial_blocks() {
    use mriloop::model::data::block_mean;
    // A 3 × 2 × 2 grid, i fastest, valued by its linear index; blocks of 2 × 2 × 2: the x axis
    // has a whole block (i 0–1) and a partial one (i 2).
    let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let (mean, dims) = block_mean(&values, [3, 2, 2], [2, 2, 2]);
    assert_eq!(dims, [2, 1, 1]);
    // i 0–1 of every row: 0 1 3 4 6 7 9 10 → 5; i 2: 2 5 8 11 → 6.5.
    assert_eq!(mean, vec![5.0, 6.5]);
    // Stride 1 leaves the grid as it is.
    assert_eq!(
        block_mean(&values, [3, 2, 2], [1, 1, 1]),
        (values, [3, 2, 2])
    );
}

#[test]
fn a_label_that_only_one_class_holds_tells_the_class() {
    use mriloop::model::planned::{planned_config, PlanOverrides};
    use mriloop::model::{MultiTaskUNetConfig, TaskMode, TrainingConfig};
    let dir = tempfile::tempdir().unwrap();
    // Three controls with label 1 only; three patients also hold label 2, cubes of edge 4, 3
    // and 5 at 1 mm: 64, 27 and 125 mm³.
    let spec = |class, edge: usize| CaseSpec {
        dims: [24, 24, 24],
        spacing_mm: [1.0; 3],
        label_edges: [2, edge],
        class,
    };
    let mut specs = vec![spec("control", 0), spec("control", 0), spec("control", 0)];
    specs.extend([spec("patient", 4), spec("patient", 3), spec("patient", 5)]);
    let p = project(&dir.path().join("p"), &specs);
    let plan = plan(&Fingerprint::of(&p).unwrap(), DeviceClass::Cpu);
    // Rule 11: label 2 is in 100 % of patients and 0 % of controls (label 1 in 100 % of both).
    let e = plan
        .class_evidence
        .clone()
        .expect("label 2 tells the class");
    assert_eq!(
        (
            e.labels.as_slice(),
            e.present_class.as_str(),
            e.absent_class.as_str()
        ),
        (&[2u8][..], "patient", "control")
    );
    // Even at half the smallest reference volume, 27 / 2 mm³; a logistic in ln(1 + v) of
    // slope 4 above and below it.
    assert!(close(e.threshold_mm3, 13.5));
    let logistic = |v: f64| 1.0 / (1.0 + (-4.0 * ((1.0 + v).ln() - 14.5f64.ln())).exp());
    for v in [0.0, 5.0, 13.5, 27.0, 125.0] {
        assert!(close(e.present_probability(v), logistic(v)));
    }
    assert!(close(e.present_probability(13.5), 0.5));
    // A predicted mask with 27 voxels of label 2 at 1 mm³: the patient's probability, whatever
    // the head said; without a voxel size the head's stands.
    let config = TrainingConfig::new(MultiTaskUNetConfig::new(1, 3, 2))
        .with_class_names(vec!["control".into(), "patient".into()])
        .with_class_evidence(Some(e.clone()));
    let mut mask = vec![0u8; 1000];
    mask[..27].fill(2);
    let probs = config.class_probabilities(vec![0.9, 0.1], &mask, Some(1.0));
    assert!((f64::from(probs[1]) - logistic(27.0)).abs() < 1e-6);
    assert!((f64::from(probs[0]) - (1.0 - logistic(27.0))).abs() < 1e-6);
    assert_eq!(
        config.class_probabilities(vec![0.9, 0.1], &mask, None),
        vec![0.9, 0.1]
    );
    // The run trains the segmentation only and reads the class from the mask, unless the
    // user asks for class steps.
    let planned = |choices: &PlanOverrides| planned_config(&p, &tiny_options(1, 1), choices, &plan);
    let c = planned(&PlanOverrides::default()).unwrap();
    assert_eq!(c.training.mode, TaskMode::SegmentationOnly);
    assert_eq!(c.training.class_evidence, Some(e));
    let user = PlanOverrides {
        class_every: Some(3),
        ..PlanOverrides::default()
    };
    let c = planned(&user).unwrap();
    assert_eq!(
        (c.training.mode, c.training.class_evidence),
        (TaskMode::Joint, None)
    );
    // One control of three holding label 2 (33 % > 10 %): the class is the head's to learn.
    let mut mixed = specs;
    mixed[0].label_edges[1] = 4;
    let p = project(&dir.path().join("q"), &mixed);
    assert_eq!(plan_of(&p).class_evidence, None);
    // Controls hold nothing; each patient label 1, label 2 or both (2 of 3 each, under 90 %):
    // their union is in every patient. The smallest union volume: 27, 64 and 8 + 125 → 27.
    let none = |class| CaseSpec {
        label_edges: [0, 0],
        ..spec(class, 0)
    };
    let mut union = vec![none("control"), none("control"), none("control")];
    let patient = |edges| CaseSpec {
        label_edges: edges,
        ..spec("patient", 0)
    };
    union.extend([patient([3, 0]), patient([0, 4]), patient([2, 5])]);
    let e = plan_of(&project(&dir.path().join("u"), &union))
        .class_evidence
        .expect("labels 1 and 2 together tell the class");
    assert_eq!(e.labels, vec![1, 2]);
    assert!(close(e.threshold_mm3, 13.5));
}

fn plan_of(p: &Project) -> mriloop::model::Plan {
    plan(&Fingerprint::of(p).unwrap(), DeviceClass::Cpu)
}

fn mriloop(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_takes_what_its_flags_leave_unset_from_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<CaseSpec> = (0..4)
        .map(|k| CaseSpec {
            dims: [40, 48, 36],
            spacing_mm: [1.0, 1.0, 1.2],
            label_edges: [2, 6],
            class: if k % 2 == 0 { "control" } else { "patient" },
        })
        .collect();
    let root = dir.path().join("p");
    project(&root, &specs);
    let ps = root.to_str().unwrap();
    // `mriloop plan` writes the plan; its patch is the isotropic test's, [24, 24, 24].
    let out = mriloop(&["plan", ps, "--backend", "cpu", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("plan.json")).unwrap()).unwrap();
    assert_eq!(written["plan"]["patch"], serde_json::json!([24, 24, 24]));
    let fit_of = |model: &str, extra: &[&str]| {
        let out_dir = root.join(model);
        let mut args = vec!["train", ps, "--backend", "cpu", "--epochs", "1"];
        args.extend(["--steps-per-epoch", "1", "--base-channels", "2", "--out"]);
        args.push(out_dir.to_str().unwrap());
        args.extend(extra);
        let run = mriloop(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            out_dir.join("plan.json").exists(),
            "the plan is written beside the model"
        );
        let text = std::fs::read_to_string(out_dir.join("fit.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    // No geometry flag: the plan's patch, depth, class crop and spacing.
    let planned = fit_of("m1", &[]);
    assert_eq!(planned["patch"], serde_json::json!([24, 24, 24]));
    assert_eq!(planned["training"]["model"]["depth"], 3);
    // and its class steps (rule 6: r = 24³ / (2 · 24³) = 0.5, k = 2).
    assert_eq!(planned["class_every"], 2);
    assert_eq!(
        planned["training"]["class_window"],
        serde_json::json!([24, 24, 24])
    );
    let spacing = planned["training"]["spacing_mm"].as_array().unwrap();
    assert!(
        (spacing[2].as_f64().unwrap() - 1.2).abs() < 1e-5,
        "{spacing:?}"
    );
    // A flag wins over the plan.
    let flagged = fit_of("m2", &["--patch", "16", "--spacing", "1.5"]);
    assert_eq!(flagged["patch"], serde_json::json!([16, 16, 16]));
    assert_eq!(
        flagged["training"]["spacing_mm"],
        serde_json::json!([1.5, 1.5, 1.5])
    );
    // With a fit configuration, its settings — but the schedule given as flags wins.
    let from_config = root.join("m3");
    let config = root.join("m1").join("fit.json");
    let run = mriloop(&[
        "train",
        ps,
        "--backend",
        "cpu",
        "--config",
        config.to_str().unwrap(),
        "--steps-per-epoch",
        "2",
        "--out",
        from_config.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(from_config.join("fit.json")).unwrap();
    let written: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            written["epochs"].as_u64(),
            written["steps_per_epoch"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(written["patch"], planned["patch"]);
}

#[test]
fn a_mask_label_the_label_table_does_not_name_is_refused_with_the_case_named() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<CaseSpec> = (0..3)
        .map(|k| CaseSpec {
            dims: [24, 24, 24],
            spacing_mm: [1.0; 3],
            label_edges: [2, 4],
            class: if k == 0 { "control" } else { "patient" },
        })
        .collect();
    let root = dir.path().join("p");
    project_with(&root, &specs, false);
    let run = mriloop(&[
        "train",
        root.to_str().unwrap(),
        "--backend",
        "cpu",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("holds label 2") && err.contains("c0"), "{err}");
}

/// A 32³ case with `mask` (a flat image) and an 8³-patch sampler without spatial augmentation,
/// every patch on foreground, labels by `weights`, objects alike with `by_object`.
fn foreground_sampler(
    mask: Vec<u8>,
    weights: Vec<(u8, f64)>,
    by_object: bool,
) -> (mriloop::model::PatchSampler, mriloop::model::Sample) {
    use mriloop::model::data::ForegroundSampling;
    use mriloop::model::{AugmentConfig, PatchSampler, Sample};
    let affine = Affine::from_spacing([1.0; 3]);
    let mask = Volume::new([32, 32, 32, 1], affine, mask).unwrap();
    let image = Volume::new([32, 32, 32, 1], affine, vec![1.0f32; 32 * 32 * 32]).unwrap();
    let sample = Sample::new("c", &[image], &mask, 0).unwrap();
    let still = AugmentConfig::new()
        .with_flip_x(false)
        .with_rotate_deg(0.0)
        .with_zoom(0.0);
    let sampler = PatchSampler::new(7, [8, 8, 8], still).with_foreground(ForegroundSampling {
        one_in: 1,
        label_weights: weights,
        by_object,
    });
    (sampler, sample)
}

/// The label at the centre of each of `n` foreground patches of a case holding a 2-voxel cube
/// of label 1 and a 6-voxel cube of label 2, with `weights`.
fn centre_labels(weights: Vec<(u8, f64)>, n: usize) -> [usize; 3] {
    let dims = [32usize, 32, 32];
    let mut mask = vec![0u8; dims.iter().product()];
    paint_cube(&mut mask, dims, [8, 8, 8], 2, 1);
    paint_cube(&mut mask, dims, [16, 16, 16], 6, 2);
    let (mut sampler, sample) = foreground_sampler(mask, weights, false);
    let mut counts = [0usize; 3];
    for _ in 0..n {
        let (_, labels) = sampler.patch(&sample);
        counts[labels[4 + 8 * (4 + 8 * 4)] as usize] += 1;
    }
    counts
}

#[test]
fn objects_alike_centre_a_small_object_as_often_as_a_large_one() {
    // Label 1 as a 6³ cube (216 voxels) and, well apart from it, a 2³ one (8 voxels): voxels
    // alike, the small cube gets about 8 / 224 of the patches; objects alike, about half.
    let (voxels, objects) = (
        small_cube_patches(false, 400),
        small_cube_patches(true, 400),
    );
    assert!(
        voxels < 40,
        "voxels alike: {voxels} of 400 in the small cube"
    );
    assert!(
        (150..=250).contains(&objects),
        "objects alike: {objects} of 400"
    );
}

/// How many of `n` foreground patches (8³) of a 32³ case holding a 6³ cube of label 1 at
/// (16, 16, 16) and a 2³ one at (4, 4, 4) are centred in the small one: such a patch holds
/// at most its 8 labelled voxels, one centred in the big cube at least 4³.
fn small_cube_patches(by_object: bool, n: usize) -> usize {
    let dims = [32usize, 32, 32];
    let mut mask = vec![0u8; dims.iter().product()];
    paint_cube(&mut mask, dims, [16, 16, 16], 6, 1);
    paint_cube(&mut mask, dims, [4, 4, 4], 2, 1);
    let (mut sampler, sample) = foreground_sampler(mask, Vec::new(), by_object);
    (0..n)
        .filter(|_| {
            let (_, labels) = sampler.patch(&sample);
            labels.iter().filter(|l| **l == 1).count() <= 8
        })
        .count()
}

#[test]
fn foreground_patches_favour_the_labels_the_plan_weights() {
    // Every patch on foreground (one in one); alike, each label gets about half.
    let alike = centre_labels(Vec::new(), 400);
    assert_eq!(alike[0], 0, "{alike:?}");
    assert!((150..=250).contains(&alike[1]), "{alike:?}");
    // Weighted 0.9 : 0.1, the tiny label gets about 90 %.
    let weighted = centre_labels(vec![(1, 0.9), (2, 0.1)], 400);
    assert!(weighted[1] >= 330, "{weighted:?}");
}

/// A tiny sample of class `class` whose mask holds `labels`.
fn sample(id: &str, class: usize, labels: &[u8]) -> mriloop::model::Sample {
    let affine = Affine::from_spacing([1.0; 3]);
    let mut mask = vec![0u8; 64];
    for (k, l) in labels.iter().enumerate() {
        mask[k] = *l;
    }
    let mask = Volume::new([4, 4, 4, 1], affine, mask).unwrap();
    let image = Volume::new([4, 4, 4, 1], affine, vec![1.0f32; 64]).unwrap();
    mriloop::model::Sample::new(id, &[image], &mask, class).unwrap()
}

fn ids(set: &[mriloop::model::Sample]) -> Vec<String> {
    set.iter().map(|s| s.case_id.clone()).collect()
}

/// Cases without a class (a segmentation-only run on a dataset that has none, or only some)
/// split as a stratum of their own beside the classes.
#[test]
fn cases_without_a_class_are_a_stratum_of_their_own() {
    use mriloop::model::split::split_by_case;
    for seed in 0..10 {
        let samples: Vec<_> = (0..8)
            .map(|i| {
                let mut s = sample(&format!("c{i}"), 0, &[1]);
                s.class = (i < 4).then_some(0);
                s
            })
            .collect();
        let (train, val) = split_by_case(samples, 0.25, seed);
        assert_eq!((train.len(), val.len()), (6, 2));
        assert!(val.iter().any(|s| s.class.is_none()), "seed {seed}");
        assert!(val.iter().any(|s| s.class == Some(0)), "seed {seed}");
        let none: Vec<_> = (0..4)
            .map(|i| {
                let mut s = sample(&format!("n{i}"), 0, &[1]);
                s.class = None;
                s
            })
            .collect();
        let (train, val) = split_by_case(none, 0.25, seed);
        assert_eq!((train.len(), val.len()), (3, 1));
    }
}

#[test]
fn validation_is_stratified_by_class_and_covers_the_labels() {
    use mriloop::model::split::{class_quotas, split_by_case, validation_gaps};
    // 9 controls and 3 patients, 20 % held out: 2.4 → 2 cases; by class 1.5 and 0.5, so the
    // controls' larger share comes first, then the patients get one taken from it: 1 and 1.
    let classes: Vec<usize> = (0..12).map(|i| usize::from(i >= 9)).collect();
    assert_eq!(class_quotas(&classes, 2), vec![1, 1]);
    // A 12/12 project, 20 % held out (5 cases): both classes are validated.
    let balanced: Vec<usize> = (0..24).map(|i| usize::from(i >= 12)).collect();
    let q = class_quotas(&balanced, 5);
    assert!(
        q[0] >= 2 && q[1] >= 2 && q.iter().sum::<usize>() == 5,
        "{q:?}"
    );
    // Never the last case of a class: a class of one case stays in training.
    assert_eq!(class_quotas(&[0, 0, 0, 1], 2), vec![2, 0]);
    for seed in 0..20 {
        // Label 3 only in two controls: the validation set takes one of them.
        let samples: Vec<_> = (0..12)
            .map(|i| {
                let labels: &[u8] = if i == 2 || i == 6 { &[1, 3] } else { &[1] };
                sample(&format!("c{i:02}"), usize::from(i >= 9), labels)
            })
            .collect();
        let (train, val) = split_by_case(samples, 0.2, seed);
        assert_eq!(val.len(), 2);
        assert_eq!(train.len(), 10);
        let mut all = [ids(&train), ids(&val)].concat();
        all.sort();
        assert_eq!(all, (0..12).map(|i| format!("c{i:02}")).collect::<Vec<_>>());
        assert!(val.iter().any(|s| s.class == Some(0)) && val.iter().any(|s| s.class == Some(1)));
        let label3 = |set: &[mriloop::model::Sample]| {
            set.iter()
                .any(|s| s.foreground_by_label.iter().any(|l| l.0 == 3))
        };
        assert!(
            label3(&val) && label3(&train),
            "seed {seed}: {:?}",
            ids(&val)
        );
        let names = ["control".to_string(), "patient".to_string()];
        assert!(validation_gaps(&train, &val, &names, |v| format!("L{v}")).is_empty());
    }
    // A split that cannot hold a class says so.
    let samples = vec![
        sample("a", 0, &[1]),
        sample("b", 0, &[1]),
        sample("c", 0, &[1]),
        sample("d", 1, &[1, 2]),
    ];
    let (train, val) = split_by_case(samples, 0.5, 1);
    let names = ["control".to_string(), "patient".to_string()];
    let gaps = validation_gaps(&train, &val, &names, |v| format!("L{v}"));
    assert!(gaps.iter().any(|g| g.contains("patient")), "{gaps:?}");
    assert!(gaps.iter().any(|g| g.contains("label 2 (L2)")), "{gaps:?}");
}

/// A clock that moves one second each time it is read.
struct TickingClock(std::sync::atomic::AtomicU64);

impl mriloop::model::budget::Clock for TickingClock {
    fn now_s(&self) -> f64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as f64 + 1.0
    }
}

#[test]
fn the_budget_schedule_fits_its_time_and_the_deadline_stops_the_fit_on_time() {
    use mriloop::model::budget::{schedule, Deadline, Schedule};
    use mriloop::model::{self, FitControl, FitEvent, TrainEvent};
    use std::sync::Arc;
    // 30 min, 1 s steps, 30 s validations, at most 12: a quarter of the budget allows 15
    // validations, so 12; (1800 − 12 × 30) / 1 = 1440 steps, 120 per epoch.
    assert_eq!(
        schedule(1800.0, 1.0, 30.0, 12),
        Schedule {
            epochs: 12,
            steps_per_epoch: 120
        }
    );
    // Validation that costs 300 s: one (a quarter is 450 s); 1500 s of 1 s steps.
    assert_eq!(schedule(1800.0, 1.0, 300.0, 12).epochs, 1);
    assert_eq!(schedule(1800.0, 1.0, 300.0, 12).steps_per_epoch, 1500);

    // A real (tiny) fit of 3 epochs (5 steps each, as planned) paced by a deadline at 20 s on a
    // clock that moves 1 s per reading, a validation reckoned at 3 s: the fit reads the clock
    // before each step and around each validation, and each epoch steps for its share of the
    // time left after the validations to come, whatever the count planned.
    // Epoch 1: first reading 1, its steps end at 1 + (20 − 1 − 3 × 3) / 3 = 4.33; steps at 1,
    // 2 and 3 (3 + the 1 s step ≤ 4.33), not at 4; validation 5–6.
    // Epoch 2: from 7, ending at 7 + (20 − 7 − 2 × 3) / 2 = 10.5: steps at 7, 8, 9; validation
    // 11–12. Epoch 3 (the last) runs to the deadline: steps at 13–16 (16 + 1 + 3 ≤ 20), not
    // at 17; validation 18–19. 10 steps, three validations, over by 19 s.
    let dir = tempfile::tempdir().unwrap();
    let specs = alternating([16, 16, 16]);
    let p = project(&dir.path().join("p"), &specs);
    let options = tiny_options(3, 5);
    let config = model::fit_config_for(&p, &options).unwrap();
    let selection = model::SampleSelection::for_training(&config.training);
    let samples = model::load_samples_with(&p, &selection).unwrap();
    let (train, val) = model::split_by_case(samples, 0.25, 1);
    let clock = Arc::new(TickingClock(std::sync::atomic::AtomicU64::new(0)));
    let control = FitControl::default();
    control.set_deadline(
        Deadline {
            clock: clock.clone(),
            end_s: 20.0,
        },
        3.0,
        3,
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let out = dir.path().join("run");
    let device = burn::prelude::Device::flex();
    let result = model::fit(&config, train, &val, &device, &out, &tx, &control).unwrap();
    drop(tx);
    let steps = rx.iter().find_map(|e| match e {
        FitEvent::Train(TrainEvent::Finished { steps, cancelled }) => Some((steps, cancelled)),
        _ => None,
    });
    assert_eq!(steps, Some((10, false)));
    assert_eq!(result.epochs.len(), 3);
    assert!(control.is_time_up());
    let readings = clock.0.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        readings, 19,
        "the last reading is the last validation's end"
    );
    assert!(out.join("best/model.bpk").exists());
}

#[test]
fn a_one_class_validation_set_cannot_choose_the_checkpoint_by_accuracy() {
    use mriloop::model::fit::validation_score;
    use mriloop::model::{Metrics, TaskMode};
    // The failure: Dice 0 but every (control) case "right" beat a later epoch that
    // segments. The class counts at chance without an AUC, so segmenting wins.
    let all_controls = Metrics {
        dice: vec![Some(0.0), Some(0.0)],
        class_accuracy: 1.0,
        class_auc: None,
    };
    let segments = Metrics {
        dice: vec![Some(0.8), Some(0.6)],
        class_accuracy: 0.4,
        class_auc: None,
    };
    assert!(
        validation_score(TaskMode::Joint, &segments)
            > validation_score(TaskMode::Joint, &all_controls)
    );
    // With both classes validated, the AUC counts in full.
    let with_auc = Metrics {
        class_auc: Some(0.9),
        ..segments.clone()
    };
    assert!((validation_score(TaskMode::Joint, &with_auc) - (0.7 + 0.9)).abs() < 1e-12);
    assert!((validation_score(TaskMode::SegmentationOnly, &with_auc) - 0.7).abs() < 1e-12);
}

#[test]
fn one_lucky_epoch_does_not_choose_the_checkpoint() {
    use mriloop::model::fit::smoothed_score;
    // Epoch 2's AUC spiked on a few validation cases; the later epochs segment and classify
    // steadily better. Raw scores would keep epoch 2 (nothing later beats 1.6).
    let raw = [0.5, 1.6, 1.2, 1.45, 1.55, 1.6];
    let mut smoothed = Vec::new();
    for s in raw {
        smoothed.push(smoothed_score(smoothed.last().copied(), s));
    }
    // The moving average with memory ½: each value is half the previous plus half the new.
    let mut expected = vec![0.5];
    for s in &raw[1..] {
        expected.push(0.5 * expected.last().copied().unwrap_or(0.0) + 0.5 * s);
    }
    for (a, b) in smoothed.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12);
    }
    let best = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) + 1;
    assert_eq!(best(&raw), 2);
    assert_eq!(best(&smoothed), 6);
}

/// A window training run on the CPU of all the cases, with `options`, sized by `minutes` or
/// by the options' schedule.
fn cpu_run(
    options: mriloop::model::FitOptions,
    minutes: Option<f64>,
) -> mriloop::model::runs::RunRequest {
    mriloop::model::runs::RunRequest {
        options,
        backend: "cpu".into(),
        fine_tune_from: None,
        only_reviewed: false,
        changed_weight: 1.0,
        masks: Vec::new(),
        minutes,
        plan: Default::default(),
        promptable: false,
        devices: 1,
        precision: Default::default(),
    }
}

/// The window's training run on a project whose cases have no class (as an nnU-Net dataset
/// imports): its default joint request trains the segmentation only and ends with a version.
#[test]
fn a_window_run_on_a_project_without_classes_trains_the_segmentation() {
    use mriloop::model::runs::{start_run, RunEvent};
    let dir = tempfile::tempdir().unwrap();
    let mut p = project(&dir.path().join("p"), &alternating([16, 16, 16]));
    p.manifest.classes.clear();
    p.manifest
        .cases
        .iter_mut()
        .for_each(|c| c.class_label = None);
    p.save().unwrap();
    let request = cpu_run(tiny_options(1, 1), None);
    let handle = start_run(p.clone(), request, || {});
    let finished = handle.events.iter().find_map(|e| match e {
        RunEvent::Finished(v) => Some(v),
        RunEvent::Failed(e) => panic!("{e}"),
        _ => None,
    });
    let v = finished.expect("the run finishes");
    let fit = std::fs::read_to_string(p.resolve(&format!("models/{}/fit.json", v.id))).unwrap();
    assert!(fit.contains("\"mode\": \"SegmentationOnly\""), "{fit}");
}

#[test]
fn a_run_with_a_budget_plans_its_steps_and_finishes_with_a_version() {
    use mriloop::model::runs::{start_run_on, RunEvent};
    use mriloop::project::RunOutcome;
    let dir = tempfile::tempdir().unwrap();
    let specs = alternating([16, 16, 16]);
    let p = project(&dir.path().join("p"), &specs);
    let request = cpu_run(tiny_options(4, 1), Some(0.25));
    // The 15 s budget on a clock that moves 1 s per reading: the same plan on any machine.
    let clock = std::sync::Arc::new(TickingClock(std::sync::atomic::AtomicU64::new(0)));
    let handle = start_run_on(p.clone(), request, clock, || {});
    let (mut planned, mut finished) = (None, None);
    for e in handle.events.iter() {
        match e {
            RunEvent::Started { total_steps, .. } => planned = Some(total_steps),
            RunEvent::Finished(v) => finished = Some(v),
            RunEvent::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    let (planned, v) = (planned.unwrap(), finished.unwrap());
    assert_eq!(v.outcome, RunOutcome::Finished);
    // The budget, not the request's 4 × 1 steps, set the plan; fit.json says the same.
    let fit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.resolve(&format!("models/{}/fit.json", v.id))).unwrap(),
    )
    .unwrap();
    let (epochs, steps) = (
        fit["epochs"].as_u64().unwrap(),
        fit["steps_per_epoch"].as_u64().unwrap(),
    );
    assert_eq!(planned as u64, epochs * steps);
    eprintln!("planned {planned} steps");
    assert!(planned > 4, "planned {planned} steps");
    assert!(!v.epochs.is_empty());
}

/// A budget that one validation would mostly fill is refused before training, saying the
/// minutes it needs; the validation is timed on a crop of a few windows, never on a whole case
/// (a whole 181 × 217 × 181 case took longer than a 2-minute budget on this CPU).
#[test]
fn a_budget_a_validation_would_fill_is_refused_with_the_minutes_it_needs() {
    use mriloop::model::budget::fit_to_budget;
    use mriloop::model::{self};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let p = project(&dir.path().join("p"), &alternating([40, 40, 40]));
    let config = model::fit_config_for(&p, &tiny_options(3, 5)).unwrap();
    assert_eq!(config.training.window, [8, 8, 8]);
    let selection = model::SampleSelection::for_training(&config.training);
    let samples = model::load_samples_with(&p, &selection).unwrap();
    let (_, val) = model::split_by_case(samples, 0.25, 1);
    assert_eq!(val.len(), 1);
    // Windows of 8 voxels every 4: 9³ = 729 cover a 40³ case, 2³ = 8 its 12³ crop. On a clock
    // that moves 1 s per reading the crop takes 1 s: a validation is reckoned at 729 / 8 = 91 s.
    // Read 5 times by then, a 120 s budget has 115 s left: less than twice 91 s.
    let device = burn::prelude::Device::flex();
    let ticking = || Arc::new(TickingClock(std::sync::atomic::AtomicU64::new(0)));
    let control = model::FitControl::default();
    let e = fit_to_budget(&config, &val, &device, 120.0, ticking(), &control)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("takes about 91 s") && e.contains("of the 115 s left"),
        "{e}"
    );
    assert!(e.contains("give at least 4 minutes"), "{e}");
    assert!(!control.has_deadline());
    // Ten minutes: planned, the validation reckoned as measured.
    let (planned, said) =
        fit_to_budget(&config, &val, &device, 600.0, ticking(), &control).unwrap();
    assert!(said.contains("a validation 91.1 s"), "{said}");
    assert!(planned.epochs >= 1 && control.has_deadline());
}
