//! The multi-task network on burn's CPU backend (flex), at small sizes: output shapes for the
//! three input forms, a training step changes the weights, the joint loss falls on a tiny
//! synthetic task, and a checkpoint reloads to identical predictions.

use burn::prelude::*;
use burn::tensor::{Distribution, Int, TensorData};
use mriloop::model::{
    batch_loss, load_checkpoint, save_checkpoint, train, Batch, MultiTaskUNetConfig, Precision,
    TaskMode, TrainEvent, TrainingConfig,
};
use std::sync::atomic::AtomicBool;

fn cpu() -> Device {
    Device::flex()
}

/// Held by each test that runs on the GPU (lavapipe here), so that the GPU kernels' launch
/// counts a test reads are its own (the tests of a binary run in parallel).
fn gpu_alone() -> std::sync::MutexGuard<'static, ()> {
    static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn small(in_channels: usize) -> MultiTaskUNetConfig {
    MultiTaskUNetConfig::new(in_channels, 3, 2)
        .with_base_channels(4)
        .with_depth(2)
}

#[test]
fn output_shapes_for_the_three_input_forms() {
    let d = cpu();
    // 3D multi-sequence: two sequences.
    let m = small(2).init(&d);
    let x = Tensor::<5>::random([2, 2, 8, 12, 16], Distribution::Normal(0.0, 1.0), &d);
    let (seg, cls) = m.forward(x);
    assert_eq!(seg.dims(), [2, 3, 8, 12, 16]);
    assert_eq!(cls.dims(), [2, 2]);
    // The class head may also see the bottleneck's global maximum.
    let x = Tensor::<5>::random([2, 2, 8, 8, 8], Distribution::Normal(0.0, 1.0), &d);
    let (_, cls) = small(2).with_class_max_pool(true).init(&d).forward(x);
    assert_eq!(cls.dims(), [2, 2]);
    // 2D single slices: depth-1 volumes, in-plane kernels.
    let cfg = small(1).with_spatial_dims(2);
    assert_eq!(cfg.size_multiple(), [1, 4, 4]);
    let (seg, cls) = cfg.init(&d).forward(Tensor::<5>::random(
        [3, 1, 1, 16, 20],
        Distribution::Default,
        &d,
    ));
    assert_eq!(seg.dims(), [3, 3, 1, 16, 20]);
    assert_eq!(cls.dims(), [3, 2]);
    // 4D: 12 time points projected to 4 feature channels.
    let cfg = small(4).with_time_points(12);
    let (seg, cls) = cfg.init(&d).forward(Tensor::<5>::random(
        [1, 12, 8, 8, 8],
        Distribution::Default,
        &d,
    ));
    assert_eq!(seg.dims(), [1, 3, 8, 8, 8]);
    assert_eq!(cls.dims(), [1, 2]);
}

/// A tiny task: a bright cube (label 1) in noise, present with a second, dimmer cube (label 2)
/// only in class-1 samples.
fn batch(step: usize, device: &Device) -> Batch {
    let n = 2;
    let s = 12;
    let mut img = vec![0f32; n * s * s * s];
    let mut mask = vec![0i32; n * s * s * s];
    let mut classes = vec![0i32; n];
    let mut seed = step as u64 * 7919 + 1;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    for (b, class_of) in classes.iter_mut().enumerate() {
        let class = (step + b) % 2;
        *class_of = class as i32;
        let o = 2 + (step + 3 * b) % 4;
        for z in 0..s {
            for y in 0..s {
                for x in 0..s {
                    let i = ((b * s + z) * s + y) * s + x;
                    img[i] = 0.3 * rnd();
                    let inside = |lo: usize, w: usize| {
                        (lo..lo + w).contains(&x)
                            && (lo..lo + w).contains(&y)
                            && (lo..lo + w).contains(&z)
                    };
                    if inside(o, 4) {
                        img[i] += 1.5;
                        mask[i] = 1;
                    } else if class == 1 && inside(o + 5, 2) {
                        img[i] += 0.8;
                        mask[i] = 2;
                    }
                }
            }
        }
    }
    Batch {
        images: Tensor::from_data(TensorData::new(img, [n, 1, s, s, s]), device),
        masks: Tensor::<4, Int>::from_data(TensorData::new(mask, [n, s, s, s]), device),
        classes: Tensor::<1, Int>::from_data(TensorData::new(classes, [n]), device),
        weights: None,
    }
}

fn config(steps: usize) -> TrainingConfig {
    TrainingConfig::new(
        MultiTaskUNetConfig::new(1, 3, 2)
            .with_base_channels(4)
            .with_depth(2)
            .with_dropout(0.0),
    )
    .with_steps(steps)
    .with_learning_rate(1e-2)
}

#[test]
fn the_joint_loss_falls_by_a_large_factor_and_a_step_changes_the_weights() {
    let d = cpu();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = AtomicBool::new(false);
    let cfg = config(60);
    let model = train(&cfg, &d, |s| batch(s, &d.clone().autodiff()), &tx, &stop);
    let losses: Vec<f64> = rx
        .try_iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(loss.total),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 60);
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < first / 4.0,
        "joint loss fell from {first:.3} to {last:.3}"
    );
    // One more step changes the weights: the same input predicts differently.
    let probe = batch(999, &d);
    let cfg1 = config(1);
    let (tx1, _rx1) = std::sync::mpsc::channel();
    let untrained = cfg1.model.init(&d);
    let after_one = train(&cfg1, &d, |s| batch(s, &d.clone().autodiff()), &tx1, &stop);
    let a = untrained.forward(probe.images.clone()).0;
    let b = after_one.valid().forward(probe.images.clone()).0;
    let diff: f32 = (a - b).abs().sum().into_scalar();
    assert!(diff > 0.0, "one step changed the weights");
    drop(model);
}

#[test]
fn a_checkpoint_reloads_to_identical_predictions() {
    let d = cpu();
    let (tx, _rx) = std::sync::mpsc::channel();
    let cfg = config(3).with_mode(TaskMode::Joint);
    let model = train(
        &cfg,
        &d,
        |s| batch(s, &d.clone().autodiff()),
        &tx,
        &AtomicBool::new(false),
    );
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(dir.path(), &cfg, &model).unwrap();
    let (cfg2, reloaded) = load_checkpoint(dir.path(), &d).unwrap();
    assert_eq!(cfg2, cfg);
    let x = batch(5, &d);
    let (s1, c1) = model.valid().forward(x.images.clone());
    let (s2, c2) = reloaded.forward(x.images.clone());
    let ds: f32 = (s1 - s2).abs().max().into_scalar();
    let dc: f32 = (c1 - c2).abs().max().into_scalar();
    assert_eq!((ds, dc), (0.0, 0.0));
    // Single-task modes weight only their own loss.
    let (l, t) = batch_loss(
        &reloaded,
        &x,
        (TaskMode::ClassificationOnly, 0.5),
        Precision::F32,
    );
    let v: f32 = l.into_scalar();
    assert!((f64::from(v) - t.class_ce).abs() < 1e-5);
    let e = load_checkpoint(&dir.path().join("missing"), &d).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    // A run's (or a version's) folder stands for its best checkpoint, else its last.
    let run = tempfile::tempdir().unwrap();
    save_checkpoint(
        &run.path().join("last"),
        &cfg.clone().with_mode(TaskMode::SegmentationOnly),
        &model,
    )
    .unwrap();
    let (from_last, _) = load_checkpoint(run.path(), &d).unwrap();
    assert_eq!(
        from_last.mode,
        TaskMode::SegmentationOnly,
        "only last/: last"
    );
    save_checkpoint(&run.path().join("best"), &cfg, &model).unwrap();
    let (from_best, _) = load_checkpoint(run.path(), &d).unwrap();
    assert_eq!(from_best, cfg, "best/ first");
    assert_eq!(
        mriloop::model::checkpoint_dir(run.path()),
        run.path().join("best")
    );
    // Commands that need an automatic (or a promptable) model refuse the other kind by name.
    use mriloop::model::check_model_kind;
    assert!(check_model_kind(run.path(), &cfg, false).is_ok());
    let e = check_model_kind(run.path(), &cfg, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a promptable model") && e.contains(&run.path().display().to_string()),
        "{e}"
    );
    let promptable = cfg
        .clone()
        .with_prompt(Some(mriloop::model::prompt::PromptConfig::default()));
    assert!(check_model_kind(run.path(), &promptable, true).is_ok());
    let e = check_model_kind(run.path(), &promptable, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("promptable model: it segments from prompts"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = load_checkpoint(empty.path(), &d).unwrap_err().to_string();
    assert!(e.contains("not a checkpoint") && e.contains("best/"), "{e}");
    // Fine-tuning starts from the checkpoint's weights, trainable.
    let fit = mriloop::model::FitConfig::new(cfg.clone())
        .with_resume_from(Some(dir.path().display().to_string()));
    let resumed = mriloop::model::initial_model(&fit, &d).unwrap();
    let (s3, _) = resumed.valid().forward(x.images.clone());
    let (s4, _) = reloaded.forward(x.images.clone());
    let d3: f32 = (s3 - s4).abs().max().into_scalar();
    assert_eq!(d3, 0.0);
    let (loss, _) = batch_loss(
        &resumed,
        &batch(6, &d.clone().autodiff()),
        (TaskMode::Joint, 0.5),
        Precision::F32,
    );
    let _grads = loss.backward();
}

#[test]
fn sliding_window_inference_returns_the_cases_exact_grid_and_affine() {
    use glam::{DMat3, DQuat, DVec3};
    use mriloop::model::{predict_volume, ClassView};
    use mriloop::volume::Affine;
    let d = cpu();
    let model = small(2).init(&d);
    let dims = [13, 10, 7];
    let affine = Affine::from_linear_translation(
        DMat3::from_quat(DQuat::from_rotation_z(0.3))
            * DMat3::from_diagonal(DVec3::new(0.7, 0.8, 2.5)),
        DVec3::new(-10.0, 4.0, 20.0),
    );
    let n = dims[0] * dims[1] * dims[2];
    let channels: Vec<Vec<f32>> = (0..2)
        .map(|c| (0..n).map(|i| ((i * (c + 3)) % 17) as f32 / 17.0).collect())
        .collect();
    let p = predict_volume(
        &model,
        &channels,
        dims,
        affine,
        [8, 8, 8],
        ClassView {
            window: [8, 8, 8],
            stride: [1, 1, 1],
        },
        0.5,
        &d,
    )
    .unwrap();
    assert_eq!(p.mask.dims3(), dims);
    assert_eq!(p.mask.affine(), &affine);
    assert_eq!(p.foreground.dims3(), dims);
    assert!(p.mask.data().iter().all(|v| *v < 3));
    assert!(p
        .foreground
        .data()
        .iter()
        .all(|v| (-1e-4..=1.0001).contains(v)));
    assert_eq!(p.class_probabilities.len(), 2);
    assert!((p.class_probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
}

/// A whole volume predicted on burn's GPU backend (wgpu, here on lavapipe; windows stacked into
/// one pass, every layer through the kernels of `model::conv_gpu_direct`, `norm_gpu`,
/// `pointwise_gpu` and `upconv_gpu`) gives the CPU's foreground probabilities and class.
#[test]
fn a_volume_predicted_on_the_gpu_gives_the_cpus_prediction() {
    let _gpu = gpu_alone();
    use burn::module::Module;
    use mriloop::model::ClassView;
    use mriloop::model::{
        conv_gpu_direct, norm_gpu, pointwise_gpu, predict_volume, upconv_gpu, window_slab_gpu,
    };
    use mriloop::volume::Affine;
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let model = small(2).init(&cpu());
    let on_device = model.clone().to_device(&gpu);
    let launches = || {
        [
            conv_gpu_direct::kernel_launches(),
            norm_gpu::kernel_launches(),
            pointwise_gpu::kernel_launches(),
            upconv_gpu::kernel_launches(),
            window_slab_gpu::kernel_launches(),
        ]
    };
    // 8³ windows: one pass of 20 spanning four rows of windows; a grid thinner than the
    // window along x (zero-padded on both routes); windows that do not overlap.
    for (dims, overlap) in [([21, 17, 11], 0.5), ([6, 17, 11], 0.5), ([21, 17, 11], 0.0)] {
        let n = dims[0] * dims[1] * dims[2];
        let channels: Vec<Vec<f32>> = (0..2)
            .map(|c| (0..n).map(|i| ((i * (c + 5)) % 23) as f32 / 23.0).collect())
            .collect();
        let predict = |model: &mriloop::model::MultiTaskUNet, device: &Device| {
            let view = ClassView {
                window: [8, 8, 8],
                stride: [1, 1, 1],
            };
            let affine = Affine::from_spacing([1.0, 1.0, 1.5]);
            predict_volume(
                model,
                &channels,
                dims,
                affine,
                [8, 8, 8],
                view,
                overlap,
                device,
            )
            .expect("prediction")
        };
        let before = launches();
        let on_gpu = predict(&on_device, &gpu);
        let after = launches();
        let on_cpu = predict(&model, &cpu());
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            assert!(b > a, "route {i} of the GPU's prediction not taken");
        }
        let gap = (on_gpu.foreground.data().iter())
            .zip(on_cpu.foreground.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(gap < 1e-4, "{dims:?}: foreground probabilities {gap} apart");
        let labels_apart = (on_gpu.mask.data().iter())
            .zip(on_cpu.mask.data())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            labels_apart * 1000 <= n,
            "{dims:?}: {labels_apart} labels differ"
        );
        let class_gap = (on_gpu.class_probabilities.iter())
            .zip(&on_cpu.class_probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(class_gap < 1e-4, "class probabilities {class_gap} apart");
        let spread = on_cpu.foreground.data().iter().fold(0.0f32, |m, v| {
            m.max((v - on_cpu.foreground.data()[0]).abs())
        });
        assert!(spread > 1e-2, "a varied answer ({spread})");
    }
}

/// A prediction (labels, foreground probabilities) computed in half precision against the f32
/// one: probabilities within 1e-2 but not bit for bit (it was computed in half precision), at
/// most 1 % of the labels apart (near-ties).
fn assert_half_prediction_near_full(half: &(Vec<u8>, Vec<f32>), full: &(Vec<u8>, Vec<f32>)) {
    let gap = (half.1.iter().zip(&full.1))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(gap > 0.0, "computed in half precision");
    assert!(gap < 1e-2, "foreground probabilities {gap} apart");
    let n = half.0.len();
    let labels_apart = half.0.iter().zip(&full.0).filter(|(a, b)| a != b).count();
    assert!(
        labels_apart * 100 <= n,
        "{labels_apart} of {n} labels differ"
    );
}

/// Prediction on the GPU in f16 (`segment_volume_in`: each pass's input in half, its features
/// in half through mriloop's kernels, the sums in f32, as autocast's inference) gives the f32
/// prediction to half precision's rounding: foreground probabilities within 1e-2, all but a few
/// labels (near-ties) the same; on the CPU the precision changes nothing.
#[test]
fn a_volume_predicted_in_f16_on_the_gpu_gives_the_f32_prediction() {
    let _gpu = gpu_alone();
    use burn::module::Module;
    use mriloop::model::inference::segment_volume_in;
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let model = small(2).init(&cpu());
    let on_device = model.clone().to_device(&gpu);
    let dims = [21, 17, 11];
    let n = dims.iter().product::<usize>();
    let channels: Vec<Vec<f32>> = (0..2)
        .map(|c| (0..n).map(|i| ((i * (c + 5)) % 23) as f32 / 23.0).collect())
        .collect();
    let segment = |model: &mriloop::model::MultiTaskUNet, device: &Device, precision| {
        segment_volume_in(model, &channels, dims, ([8; 3], 0.5), device, precision)
            .expect("prediction")
    };
    let launched = |precision| {
        let before = layer_kernel_launches();
        let result = segment(&on_device, &gpu, precision);
        let after = layer_kernel_launches();
        let counts: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        (result, counts)
    };
    let ((half, in_half), (full, in_full)) = (launched(Precision::F16), launched(Precision::F32));
    // The direct convolutions, the 1×1×1 ones, the upsamplings and the norms, as often in f16
    // as in f32 (none falls back to burn's route; a forward pass has no weight gradient).
    assert_eq!(in_half, in_full, "launches of each kernel, f16 against f32");
    assert!(in_full[1..].iter().all(|n| *n > 0), "{in_full:?}");
    assert_half_prediction_near_full(&half, &full);
    let spread = full
        .1
        .iter()
        .fold(0.0f32, |m, v| m.max((v - full.1[0]).abs()));
    assert!(spread > 1e-2, "a varied answer ({spread})");
    let on_cpu = segment(&model, &cpu(), Precision::F16);
    assert_eq!(
        on_cpu,
        segment(&model, &cpu(), Precision::F32),
        "the CPU computes in f32"
    );
}

/// A case predicted with a model trained in f16 predicts in f16 on a GPU (`predict_case` follows
/// the config's precision, as `mriloop predict` does unless `--precision` says otherwise): its
/// foreground within half precision's rounding of the f32 prediction but not bit for bit; on
/// the CPU the same model predicts what an f32 one does.
#[test]
fn a_case_predicts_in_the_precision_its_model_was_trained_in_on_a_gpu() {
    let _gpu = gpu_alone();
    use burn::module::Module;
    use mriloop::model::{predict_case, Precision};
    use mriloop::phantom::{generate_project, PhantomConfig};
    let dir = tempfile::tempdir().unwrap();
    let phantom = PhantomConfig {
        cases: 1,
        grid: 20,
        ..PhantomConfig::default()
    };
    let project = generate_project(dir.path(), &phantom, |_, _| {}).unwrap();
    let sequences: Vec<String> = (project.manifest.sequences.iter())
        .map(|q| q.as_str().to_string())
        .collect();
    let labels = project.manifest.labels.labels().len() + 1;
    let net = MultiTaskUNetConfig::new(sequences.len(), labels, 2)
        .with_base_channels(4)
        .with_depth(2);
    let f32_config = TrainingConfig::new(net)
        .with_window([8, 8, 8])
        .with_sequences(sequences);
    let f16_config = f32_config.clone().with_precision(Precision::F16);
    let model = f32_config.model.init(&cpu());
    let case = &project.manifest.cases[0];
    let predict = |config: &TrainingConfig, device: &Device| {
        let model = model.clone().to_device(device);
        let p = predict_case(&project, case, &model, config, device).expect("prediction");
        (p.mask.data().to_vec(), p.foreground.data().to_vec())
    };
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let (half, full) = (predict(&f16_config, &gpu), predict(&f32_config, &gpu));
    assert_half_prediction_near_full(&half, &full);
    assert_eq!(
        predict(&f16_config, &cpu()),
        predict(&f32_config, &cpu()),
        "the CPU predicts in f32"
    );
}

#[test]
fn windows_predicted_at_once_give_what_one_at_a_time_gives() {
    use mriloop::model::{predict_volume, ClassView};
    use mriloop::volume::Affine;
    let d = cpu();
    let model = small(2).init(&d);
    let dims = [30, 21, 11];
    let n = dims[0] * dims[1] * dims[2];
    let channels: Vec<Vec<f32>> = (0..2)
        .map(|c| (0..n).map(|i| ((i * (c + 5)) % 23) as f32 / 23.0).collect())
        .collect();
    // The CPU predicts as many windows at once as its rayon pool has threads.
    let predict_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let view = ClassView {
                window: [8, 8, 8],
                stride: [1, 1, 1],
            };
            let affine = Affine::from_spacing([1.0, 1.0, 1.5]);
            predict_volume(&model, &channels, dims, affine, [8, 8, 8], view, 0.5, &d).unwrap()
        })
    };
    let (one, three) = (predict_with(1), predict_with(3));
    // The kernels may sum in another order with more threads: equal to float rounding, and a
    // window's answer landing at another window's place would be far off.
    let gap = (one.foreground.data().iter())
        .zip(three.foreground.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(gap < 1e-4, "foreground probabilities {gap} apart");
    let spread = one
        .foreground
        .data()
        .iter()
        .fold(0.0f32, |m, v| m.max((v - one.foreground.data()[0]).abs()));
    assert!(spread > 1e-2, "a varied answer ({spread})");
    let differ = (one.mask.data().iter())
        .zip(three.mask.data())
        .filter(|(a, b)| a != b)
        .count();
    assert!(differ * 1000 <= n, "{differ} of {n} labels differ");
}

#[test]
fn patches_are_deterministic_and_oversample_a_tiny_structure() {
    use mriloop::model::{zscore_in_head, AugmentConfig, PatchSampler, Sample};
    use mriloop::volume::{Affine, Volume};
    let dims = [32, 32, 32];
    let affine = Affine::from_spacing([1.0; 3]);
    let n = 32 * 32 * 32;
    let img = Volume::new(
        [32, 32, 32, 1],
        affine,
        (0..n).map(|i| 1.0 + (i % 7) as f32).collect(),
    )
    .unwrap();
    let mut mask = Volume::filled([32, 32, 32, 1], affine, 0u8).unwrap();
    for (i, j, k) in [(20, 5, 9), (21, 5, 9), (20, 6, 9), (21, 6, 9)] {
        let at = mask.linear_index(i, j, k, 0);
        mask.data_mut()[at] = 1;
    }
    let s = Sample::new("tiny", &[img], &mask, 1).unwrap();
    assert_eq!(s.foreground.len(), 4);
    let z = zscore_in_head(&[1.0, 2.0, 3.0, 0.0]);
    assert!((z[0] + z[2]).abs() < 1e-6 && z[1].abs() < 1e-6);
    let mut a = PatchSampler::new(9, [8, 8, 8], AugmentConfig::new());
    let mut b = PatchSampler::new(9, [8, 8, 8], AugmentConfig::new());
    assert_eq!(a.patch(&s), b.patch(&s), "same seed, same patch");
    let with_structure = (0..300)
        .filter(|_| a.patch(&s).1.iter().any(|l| *l > 0))
        .count();
    // Uniform patches would hold it about 3 % of the time; a third are centred on it.
    assert!(
        with_structure >= 90,
        "{with_structure} of 300 patches show the structure"
    );
    assert_eq!(dims, s.dims);
    let batch = a.batch(std::slice::from_ref(&s), 3, &cpu());
    assert_eq!(batch.images.dims(), [3, 1, 8, 8, 8]);
    assert_eq!(batch.masks.dims(), [3, 8, 8, 8]);
}

#[test]
fn the_cosine_schedule_warms_up_peaks_and_anneals() {
    use mriloop::model::cosine_lr;
    assert!((cosine_lr(1e-3, 1, 100, 10, 0.02) - 1e-4).abs() < 1e-12);
    assert!((cosine_lr(1e-3, 10, 100, 10, 0.02) - 1e-3).abs() < 1e-12);
    let mid = cosine_lr(1e-3, 55, 100, 10, 0.02);
    assert!((mid - (2e-5 + 0.5 * (1e-3 - 2e-5))).abs() < 1e-9, "{mid}");
    assert!((cosine_lr(1e-3, 100, 100, 10, 0.02) - 2e-5).abs() < 1e-12);
}

/// The sliding window written the plain way (accumulators over the whole volume), to check the
/// slab-wise implementation against.
fn naive_sliding_window(
    model: &mriloop::model::MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    window: [usize; 3],
    overlap: f32,
    d: &Device,
) -> (Vec<u8>, Vec<f32>) {
    use burn::tensor::activation::softmax;
    let starts = |n: usize, w: usize, step: usize| -> Vec<usize> {
        if n <= w {
            return vec![0];
        }
        let mut s: Vec<usize> = (0..=n - w).step_by(step.max(1)).collect();
        if s.last() != Some(&(n - w)) {
            s.push(n - w);
        }
        s
    };
    let gaussian = |w: usize| -> Vec<f32> {
        let c = (w as f32 - 1.0) / 2.0;
        let sigma = (w as f32 / 8.0).max(0.5);
        (0..w)
            .map(|i| (-((i as f32 - c) / sigma).powi(2) / 2.0).exp().max(1e-3))
            .collect()
    };
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let step = window.map(|w| ((w as f32) * (1.0 - overlap)).floor() as usize);
    let g = window.map(gaussian);
    let [wx, wy, wz] = window;
    let mut acc: Vec<Vec<f32>> = Vec::new();
    let mut weight = vec![0f32; n];
    for &z0 in &starts(nz, wz, step[2]) {
        for &y0 in &starts(ny, wy, step[1]) {
            for &x0 in &starts(nx, wx, step[0]) {
                let c = channels.len();
                let mut input = vec![0f32; c * wx * wy * wz];
                for (ci, ch) in channels.iter().enumerate() {
                    for k in 0..wz.min(nz - z0) {
                        for j in 0..wy.min(ny - y0) {
                            for i in 0..wx.min(nx - x0) {
                                input[((ci * wz + k) * wy + j) * wx + i] =
                                    ch[(x0 + i) + nx * ((y0 + j) + ny * (z0 + k))];
                            }
                        }
                    }
                }
                let x = Tensor::<5>::from_data(TensorData::new(input, [1, c, wz, wy, wx]), d);
                let probs: Vec<f32> = softmax(model.forward(x).0, 1).try_into_vec_as().unwrap();
                let labels = probs.len() / (wx * wy * wz);
                if acc.is_empty() {
                    acc = vec![vec![0f32; n]; labels];
                }
                for k in 0..wz.min(nz - z0) {
                    for j in 0..wy.min(ny - y0) {
                        for i in 0..wx.min(nx - x0) {
                            let w = g[0][i] * g[1][j] * g[2][k];
                            let dst = (x0 + i) + nx * ((y0 + j) + ny * (z0 + k));
                            weight[dst] += w;
                            for (l, a) in acc.iter_mut().enumerate() {
                                a[dst] += w * probs[((l * wz + k) * wy + j) * wx + i];
                            }
                        }
                    }
                }
            }
        }
    }
    let mut mask = vec![0u8; n];
    let mut fg = vec![0f32; n];
    for v in 0..n {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (l, a) in acc.iter().enumerate() {
            if a[v] > best.1 {
                best = (l, a[v]);
            }
        }
        mask[v] = best.0 as u8;
        fg[v] = 1.0 - acc[0][v] / weight[v].max(1e-12);
    }
    (mask, fg)
}

#[test]
fn slab_wise_inference_matches_the_whole_volume_accumulation() {
    use mriloop::model::{predict_volume, ClassView};
    use mriloop::volume::Affine;
    let d = cpu();
    let model = small(1).init(&d);
    let dims = [11, 9, 21];
    let n = dims[0] * dims[1] * dims[2];
    let channels = vec![(0..n)
        .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
        .collect::<Vec<f32>>()];
    for overlap in [0.0, 0.5, 0.75] {
        let p = predict_volume(
            &model,
            &channels,
            dims,
            Affine::identity(),
            [8, 8, 8],
            ClassView {
                window: [8, 8, 8],
                stride: [1, 1, 1],
            },
            overlap,
            &d,
        )
        .unwrap();
        let (mask, fg) = naive_sliding_window(&model, &channels, dims, [8, 8, 8], overlap, &d);
        assert_eq!(p.mask.data(), &mask[..], "overlap {overlap}");
        for (a, b) in p.foreground.data().iter().zip(&fg) {
            assert!((a - b).abs() < 1e-5, "overlap {overlap}: {a} vs {b}");
        }
    }
}

#[test]
fn a_left_right_flip_swaps_mirror_labels_and_changed_voxels_weigh_more() {
    use mriloop::model::{split_labels, AugmentConfig, PatchSampler, Sample};
    use mriloop::project::{Label, LabelTable};
    use mriloop::volume::{Affine, Volume};
    let l = |value: u8, name: &str| Label {
        value,
        name: name.into(),
        color: [0, 0, 0],
    };
    // Label pairs come from the names.
    let table = LabelTable::new(vec![
        l(1, "habenula_L"),
        l(2, "habenula_R"),
        l(3, "lesion"),
        l(4, "Left_Thalamus"),
        l(5, "right_thalamus"),
    ])
    .unwrap();
    assert_eq!(table.mirror_pairs(), vec![[1, 2], [4, 5]]);
    // A left structure (label 1, low x) and a midline one (label 3) on a 16³ grid.
    let affine = Affine::from_spacing([1.0, 1.0, 1.0]);
    let img = Volume::new(
        [16, 16, 16, 1],
        affine,
        (0..4096).map(|i| 1.0 + (i % 5) as f32).collect(),
    )
    .unwrap();
    let mut mask = Volume::filled([16, 16, 16, 1], affine, 0u8).unwrap();
    for (i, v) in [(3, 1u8), (4, 1), (7, 3), (8, 3)] {
        let at = mask.linear_index(i, 8, 8, 0);
        mask.data_mut()[at] = v;
    }
    let mut s = Sample::new("flip", &[img], &mask, 0).unwrap();
    let mut predicted = s.mask.clone();
    predicted[mask.linear_index(3, 8, 8, 0)] = 0;
    assert_eq!(s.mark_changed(&predicted), 1);
    let augment = AugmentConfig::new()
        .with_rotate_deg(0.0)
        .with_zoom(0.0)
        .with_mirror_pairs(vec![[1, 2]]);
    let mut sampler = PatchSampler::new(3, [16, 16, 16], augment);
    let (mut flipped, mut kept) = (0, 0);
    for _ in 0..40 {
        let (_, labels) = sampler.centre_crop(&s, [16, 16, 16]);
        let (labels, weights) = split_labels(labels, 4.0);
        let at = |i: usize| labels[i + 16 * (8 + 16 * 8)];
        if at(3) == 1 {
            // As stored: the left structure stays label 1.
            assert_eq!((at(4), at(12), at(11)), (1, 0, 0));
            kept += 1;
        } else {
            // Mirrored: it sits on the right and is labelled right; the midline label stays.
            assert_eq!((at(12), at(11), at(3)), (2, 2, 0));
            assert_eq!((at(8), at(7)), (3, 3));
            flipped += 1;
        }
        // The one corrected voxel weighs 4, every other 1.
        let w = weights.expect("a changed voxel is in every crop");
        assert_eq!(w.iter().filter(|x| **x == 4.0).count(), 1);
        assert_eq!(w.iter().filter(|x| **x == 1.0).count(), 4095);
    }
    assert!(flipped > 5 && kept > 5, "flipped {flipped}, kept {kept}");
}

/// The combined batch of `batch(step)` and `batch(step + 100)` on `device`.
fn combined(step: usize, device: &Device) -> Batch {
    let (a, b) = (batch(step, device), batch(step + 100, device));
    Batch {
        images: Tensor::cat(vec![a.images, b.images], 0),
        masks: Tensor::cat(vec![a.masks, b.masks], 0),
        classes: Tensor::cat(vec![a.classes, b.classes], 0),
        weights: None,
    }
}

#[test]
fn data_parallel_steps_on_two_cpu_devices_match_one_device_on_the_combined_batch() {
    use mriloop::model::fit::data_parallel_devices;
    let devices = data_parallel_devices(&cpu(), 2);
    assert_eq!(devices.len(), 2);
    // Replicas on the CPU always; on GPUs only as many as there are, else a clear refusal.
    use mriloop::model::apply::check_data_parallel;
    assert_eq!(check_data_parallel(&cpu(), 2), Ok(()));
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let refused = check_data_parallel(&gpu, 64).unwrap_err();
    assert!(
        refused.contains("on 64 devices") && refused.contains("GPU(s) found"),
        "{refused}"
    );
    // In f32, and in f16 with each part's loss scaled and its gradients unscaled.
    for precision in [Precision::F32, Precision::F16] {
        data_parallel_matches_one_device(&devices, precision);
    }
}

/// Three steps on two CPU replicas in `precision` against one device on the combined batch.
fn data_parallel_matches_one_device(devices: &[Device], precision: Precision) {
    use burn::optim::AdamConfig;
    use burn::tensor::activation::softmax;
    use mriloop::model::train_step_parallel;
    let cfg = config(3).with_precision(precision);
    let start = cfg.model.init(&devices[0]);
    let (mut one, mut two) = (start.clone(), start.clone());
    let (mut optim_one, mut optim_two) = (AdamConfig::new().init(), AdamConfig::new().init());
    let (mut scale_one, mut scale_two) = (
        precision.initial_loss_scale(),
        precision.initial_loss_scale(),
    );
    for step in 0..3 {
        let whole = [combined(step, &devices[0])];
        let halves = [batch(step, &devices[0]), batch(step + 100, &devices[1])];
        let optimiser = (&mut optim_one, &mut scale_one);
        let (m, l1) = train_step_parallel(one, optimiser, &whole, &cfg, 1e-2);
        one = m;
        let optimiser = (&mut optim_two, &mut scale_two);
        let (m, l2) = train_step_parallel(two, optimiser, &halves, &cfg, 1e-2);
        two = m;
        // The cross-entropies are means over patches: split in halves they are the same on the
        // same weights (step 0; to half precision's rounding in f16); after a step the
        // replicas' weights differ a little (soft Dice pools over a part's patches), and so do
        // their losses (up to 1.7e-3 in 3 of 200 release runs; in f16, its rounding moving Adam,
        // just over 1e-2 in 1 of 300; a part dropped: 2e-2 at step 1 in f32, caught there).
        let tolerance = match (step, precision) {
            (0, Precision::F32) => 1e-5,
            (0, _) => 1e-3,
            (_, Precision::F32) => 5e-3,
            _ => 2e-2,
        };
        assert!(
            (l1.seg_ce - l2.seg_ce).abs() < tolerance,
            "{precision:?} step {step}: {l1:?} {l2:?}"
        );
        assert!(
            (l1.class_ce - l2.class_ce).abs() < tolerance,
            "{precision:?} step {step}: {l1:?} {l2:?}"
        );
    }
    // No step skipped on either side.
    let good = |s: Option<mriloop::model::LossScale>| s.map(|s| s.good_steps);
    assert_eq!(good(scale_one), good(scale_two));
    assert_eq!(good(scale_two), (precision == Precision::F16).then_some(3));
    // Soft Dice pools over a part's patches, not the whole batch: the models differ a little,
    // far less than three steps moved them. Adam normalises each gradient, so a parameter whose
    // gradient is near zero can step either way on a tiny difference: the gap varies between
    // starts, builds and runs (mostly ~1e-4 against 0.70 moved in a release build, but 0.053 to
    // 0.068 against 0.71–0.74 in 3 of 150 runs; 4.6e-3 against 0.86 in CI's debug build), and
    // in f16 the rounding alone moves Adam's steps about as much (one device in f16 against one
    // in f32 after the same three steps: 0.12 apart of 0.75 moved; two in f16 0.115 of 0.50 once
    // in 200 runs). A dropped or misweighted
    // part shows in the loss terms above at once (step 1: 2e-2 apart).
    let x = combined(7, &cpu()).images;
    let probs = |m: &mriloop::model::MultiTaskUNet| softmax(m.valid().forward(x.clone()).0, 1);
    let max_diff = |a: Tensor<5>, b: Tensor<5>| f64::from((a - b).abs().max().into_scalar::<f32>());
    let (p_start, p_one, p_two) = (probs(&start), probs(&one), probs(&two));
    let moved = max_diff(p_start, p_one.clone());
    let apart = max_diff(p_one, p_two);
    assert!(
        moved > 0.05,
        "{precision:?}: three steps moved the prediction by {moved}"
    );
    let share = match precision {
        Precision::F32 => 5.0,
        _ => 3.0,
    };
    assert!(
        apart < moved / share,
        "{precision:?}: one device vs two: {apart} (moved {moved})"
    );
}

#[test]
fn forward_multiply_adds_match_pytorchs_flop_counter() {
    // torch.utils.flop_counter.FlopCounterMode on benches/reference/train_torch.py's Net(2, 3,
    // 2, base=8, depth=3) at 32³ counts 1 015 808 256 FLOPs: 507 904 128 multiply-adds, of
    // which 128 are the class head's (not counted here); base 32, depth 5 at 64³:
    // 69 503 813 632 (2 048 of them the head's).
    let small = MultiTaskUNetConfig::new(2, 3, 2);
    assert_eq!(small.forward_macs(32 * 32 * 32), 507_904_000.0);
    let wide = small.clone().with_base_channels(32).with_depth(5);
    assert_eq!(wide.forward_macs(64 * 64 * 64), 69_503_811_584.0);
}

/// The network's 3×3×3 convolutions on the CPU at stride 1 and 2 (`model::conv`: its own im2col
/// and backward pass, and the direct SIMD kernels where the CPU has them) and its
/// 1×1×1 ones (a matrix product) against burn's `Conv3d::forward`: the output and the gradients
/// of input, weight and bias, on odd, unequal sizes (one a single voxel thick) and a batch of
/// two, by both routes in any build.
#[test]
fn the_cpu_block_convolution_matches_burns_convolution_and_its_gradients() {
    for direct in [false, true] {
        let ad = cpu().autodiff();
        let compare = || compare_block_convolutions(&ad, &BLOCK_SHAPES, &BLOCK_KERNELS);
        mriloop::model::conv::with_direct_kernels(direct, compare);
    }
}

/// `(c_in, c_out, [d, h, w])` of the block-convolution comparisons. The fourth has several
/// tiles per batch item at both strides; the fifth is large enough (an output of 8³ and more)
/// for the CPU's direct route's phased stride 2; the last has rows of whole vectors at both
/// strides (32 and 16 wide) and 8 channels, which the direct kernel stores straight into the
/// output.
const BLOCK_SHAPES: [(usize, usize, [usize; 3]); 6] = [
    (3, 5, [7, 5, 9]),
    (8, 4, [1, 6, 4]),
    (2, 2, [12, 11, 10]),
    (40, 3, [6, 18, 17]),
    (2, 3, [16, 17, 15]),
    (8, 8, [16, 16, 32]),
];

/// (kernel depth, in-plane size, stride): the blocks', the downsamplings', the 1×1×1 ones and
/// the single-slice form's 1×3×3 (strided in-plane only, on one slice).
const BLOCK_KERNELS: [(usize, usize, usize); 5] =
    [(3, 3, 1), (3, 3, 2), (1, 1, 1), (1, 3, 1), (1, 3, 2)];

/// On burn's GPU backend (wgpu, here on lavapipe) the block convolutions take the weight
/// gradient of `model::conv_gpu` (one kernel of its own, then a sum) and, being small, the
/// forward pass and input gradient of `model::conv_gpu_direct`: output and gradients equal
/// burn's `Conv3d::forward` and its gradients on the same device, for the same shapes and kernels
/// as on the CPU (odd, unequal sizes; channel counts that are and are not multiples of the
/// kernels' blocks of four channels; strides 1 and 2; 1×3×3).
#[test]
fn the_gpu_block_convolution_matches_burns_convolution_and_its_gradients() {
    let _gpu = gpu_alone();
    use mriloop::model::{conv_gpu, conv_gpu_direct, pointwise_gpu};
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let before = (
        conv_gpu::kernel_launches(),
        conv_gpu_direct::kernel_launches(),
        pointwise_gpu::kernel_launches(),
    );
    // Fewer cases than on the CPU: each new shape compiles and tunes burn's kernels on lavapipe.
    let shapes = [BLOCK_SHAPES[0], BLOCK_SHAPES[1], (5, 6, [6, 9, 8])];
    compare_block_convolutions(&gpu, &shapes, &BLOCK_KERNELS);
    // Each 3×3 case (3×3×3 at strides 1 and 2 and 1×3×3 at stride 1 for each shape, 1×3×3 at
    // stride 2 for the one-slice shape): one weight gradient by conv_gpu, one forward pass and
    // one input gradient by conv_gpu_direct.
    let cases = 3 * 3 + 1;
    let weight_grads = conv_gpu::kernel_launches() - before.0;
    assert_eq!(weight_grads, cases, "weight gradients by conv_gpu's kernel");
    let direct = conv_gpu_direct::kernel_launches() - before.1;
    assert_eq!(
        direct,
        2 * cases,
        "forward passes and input gradients by conv_gpu_direct"
    );
    // Each 1×1×1 case (one a shape): a forward pass and the two gradient kernels.
    let pointwise = pointwise_gpu::kernel_launches() - before.2;
    assert_eq!(
        pointwise,
        3 * shapes.len(),
        "1×1×1 convolutions by pointwise_gpu"
    );
}

/// Launches so far of mriloop's GPU layer kernels: the block convolutions' weight gradients,
/// their direct forward and input-gradient kernels, the 1×1×1 convolutions, the upsamplings
/// and the instance norms (burn's fusion runs them lazily: read after the values).
fn layer_kernel_launches() -> [usize; 5] {
    use mriloop::model::{conv_gpu, conv_gpu_direct, norm_gpu, pointwise_gpu, upconv_gpu};
    [
        conv_gpu::kernel_launches(),
        conv_gpu_direct::kernel_launches(),
        pointwise_gpu::kernel_launches(),
        upconv_gpu::kernel_launches(),
        norm_gpu::kernel_launches(),
    ]
}

/// A mixed-precision step on a GPU: the block convolutions (strides 1 and 2), the 1×1×1
/// convolutions, the upsamplings and the instance norms take half-precision features with their
/// f32 parameters through mriloop's kernels (no copy of the weights in half precision, no casts
/// around the norms, none of burn's routes). In f16 (and bf16 where the device has it) the
/// output and the input gradient are the f32 layer's on the same values, rounded once to the
/// half type; the parameters' gradients come out in f32, equal to the f32 layer's to f32
/// rounding.
#[test]
fn the_gpu_kernels_take_half_precision_features_with_f32_weights() {
    use burn::module::Param;
    use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};
    use burn::nn::{InstanceNormConfig, PaddingConfig3d};
    use burn::tensor::{DType, FloatDType};
    use mriloop::model::conv::conv3d_forward;
    use mriloop::model::norm::instance_norm_forward;
    use mriloop::model::upconv::upconv_forward;
    let _gpu = gpu_alone();
    let ad = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let halves = [(FloatDType::F16, 1e-3), (FloatDType::BF16, 8e-3)];
    let halves: Vec<_> = halves
        .into_iter()
        .filter(|(t, _)| ad.supports_dtype(DType::from(*t)))
        .collect();
    assert!(!halves.is_empty(), "lavapipe computes in f16");
    let conv = |kernel: usize, stride: usize| {
        Conv3dConfig::new([5, 6], [kernel; 3])
            .with_stride([stride; 3])
            .with_padding(PaddingConfig3d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            .init(&ad)
    };
    let convs = [conv(3, 1), conv(3, 2), conv(1, 1)];
    let up = ConvTranspose3dConfig::new([5, 6], [2, 2, 2])
        .with_stride([2, 2, 2])
        .init(&ad);
    let mut norm = InstanceNormConfig::new(5).init(&ad);
    norm.gamma = Some(Param::from_tensor(Tensor::from_floats(
        [0.5, -1.5, 2.0, 1.0, 0.3],
        &ad,
    )));
    norm.beta = Some(Param::from_tensor(Tensor::from_floats(
        [0.1, 3.0, -2.0, 0.0, 1.0],
        &ad,
    )));
    // (name, the layer by mriloop's route or (false) the f32 reference, its two parameters'
    // gradients as f32 values, checking they are f32).
    type Run<'a> = Box<dyn Fn(Tensor<5>, bool) -> Tensor<5> + 'a>;
    type ParamGrads<'a> = Box<dyn Fn(&burn::tensor::Gradients) -> [Vec<f32>; 2] + 'a>;
    let mut layers: Vec<(String, Run, ParamGrads)> = Vec::new();
    for c in &convs {
        let name = format!("convolution {:?} stride {:?}", c.kernel_size, c.stride);
        let run: Run = Box::new(move |x, ours| match ours {
            true => conv3d_forward(c, x),
            false => c.forward(x),
        });
        let grads: ParamGrads = Box::new(move |g| {
            let b = c.bias.as_ref().expect("bias");
            [f32_grad(&c.weight, g), f32_grad(b, g)]
        });
        layers.push((name, run, grads));
    }
    let run: Run = Box::new(|x, ours| match ours {
        true => upconv_forward(&up, x),
        false => up.forward(x),
    });
    let grads: ParamGrads = Box::new(|g| {
        let b = up.bias.as_ref().expect("bias");
        [f32_grad(&up.weight, g), f32_grad(b, g)]
    });
    layers.push(("upsampling".into(), run, grads));
    // The reference is mriloop's f32 norm (burn's strays by ~2e-4 on its own: see
    // `compare_instance_norms`).
    let run: Run = Box::new(|x, _| instance_norm_forward(&norm, x));
    let grads: ParamGrads = Box::new(|g| {
        let [gamma, beta] = [&norm.gamma, &norm.beta].map(|p| p.as_ref().expect("affine"));
        [f32_grad(gamma, g), f32_grad(beta, g)]
    });
    layers.push(("instance norm".into(), run, grads));
    let before = layer_kernel_launches();
    for (dtype, tolerance) in &halves {
        let exact = |t: Tensor<5>| t.cast(*dtype).cast(FloatDType::F32);
        let x = exact(Tensor::random(
            [2, 5, 7, 6, 9],
            Distribution::Normal(0.0, 1.0),
            &ad,
        ));
        for (name, layer, param_grads) in &layers {
            let run = |half: bool| {
                let x = match half {
                    true => x.clone().cast(*dtype).require_grad(),
                    false => x.clone().require_grad(),
                };
                let y = layer(x.clone(), half);
                assert_eq!(y.dtype(), x.dtype(), "{name}: y in x's type");
                let y = y.cast(FloatDType::F32);
                // Multiples of 1/32 (exact in f16 and bf16), the same on both sides.
                let dims = y.dims();
                let values: Vec<f32> = (0..dims.iter().product::<usize>())
                    .map(|i| ((i * 7919) % 61) as f32 / 32.0 - 0.9375)
                    .collect();
                let target = Tensor::<5>::from_data(TensorData::new(values, dims), &ad);
                let grads = (y.clone() * target).sum().backward();
                let f32s = |t: Tensor<5>| {
                    let data = t.cast(FloatDType::F32).into_data();
                    data.try_into_vec::<f32>().expect("f32")
                };
                let [dw, db] = param_grads(&grads);
                [
                    f32s(y.inner()),
                    f32s(x.grad(&grads).expect("x grad")),
                    dw,
                    db,
                ]
            };
            let (half, full) = (run(true), run(false));
            let case = format!("{name} in {dtype:?}");
            assert_close(&half[0], &full[0], *tolerance, &format!("output, {case}"));
            assert_close(
                &half[1],
                &full[1],
                *tolerance,
                &format!("input gradient, {case}"),
            );
            assert_close(
                &half[2],
                &full[2],
                1e-5,
                &format!("weight gradient, {case}"),
            );
            assert_close(&half[3], &full[3], 1e-5, &format!("bias gradient, {case}"));
        }
    }
    // Each half-precision case by mriloop's kernels: per 3×3×3 convolution one weight gradient
    // and two direct kernels, per 1×1×1 convolution and upsampling three kernels, per norm two.
    // (The f32 norms run the norm kernels too: two more a case.)
    let launched: Vec<usize> = layer_kernel_launches()
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect();
    let n = halves.len();
    assert_eq!(
        launched,
        vec![2 * n, 4 * n, 3 * n, 3 * n, 4 * n],
        "launches by kernel"
    );
}

/// The gradient of `param` in `grads`, which must be f32, as values.
fn f32_grad<const D: usize>(
    param: &burn::module::Param<Tensor<D>>,
    grads: &burn::tensor::Gradients,
) -> Vec<f32> {
    let g = param.grad(grads).expect("parameter gradient");
    assert_eq!(
        g.dtype(),
        burn::tensor::DType::F32,
        "a parameter's gradient"
    );
    g.into_data().try_into_vec::<f32>().expect("f32")
}

/// [`the_cpu_block_convolution_matches_burns_convolution_and_its_gradients`] on `ad` (an
/// autodiff device), by the route this thread takes.
fn compare_block_convolutions(
    ad: &Device,
    shapes: &[(usize, usize, [usize; 3])],
    kernels: &[(usize, usize, usize)],
) {
    use burn::nn::conv::Conv3dConfig;
    use burn::nn::PaddingConfig3d;
    use mriloop::model::conv::conv3d_forward;
    let cases = shapes
        .iter()
        .flat_map(|s| kernels.iter().map(move |k| (*s, *k)));
    for ((c_in, c_out, size), (kd, k, s)) in cases {
        let [d, h, w] = size;
        if kd == 1 && k == 3 && s == 2 && d != 1 {
            continue;
        }
        let conv = Conv3dConfig::new([c_in, c_out], [kd, k, k])
            .with_stride([if kd == 1 { 1 } else { s }, s, s])
            .with_padding(PaddingConfig3d::Explicit(kd / 2, k / 2, k / 2))
            .init(ad);
        let x = Tensor::<5>::random([2, c_in, d, h, w], Distribution::Normal(0.0, 1.0), ad);
        let out = [
            if kd == 1 { d } else { (d - 1) / s + 1 },
            (h - 1) / s + 1,
            (w - 1) / s + 1,
        ];
        let target = Tensor::<5>::random(
            [2, c_out, out[0], out[1], out[2]],
            Distribution::Normal(0.0, 1.0),
            ad,
        );
        let run = |fast: bool| {
            let x = x.clone().require_grad();
            let y = match fast {
                true => conv3d_forward(&conv, x.clone()),
                false => conv.forward(x.clone()),
            };
            let grads = (y.clone() * target.clone()).sum().backward();
            let bias = conv
                .bias
                .as_ref()
                .map(|b| b.grad(&grads).map(|g| g.into_data()));
            let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
            (
                values(y.inner()),
                values(x.grad(&grads).expect("x grad")),
                values(conv.weight.grad(&grads).expect("weight grad")),
                bias.flatten()
                    .map(|d| d.try_into_vec::<f32>().expect("f32")),
            )
        };
        let (fast, slow) = (run(true), run(false));
        let case = format!("{c_in}->{c_out} {kd}×{k}×{k} stride {s} {size:?}");
        assert_close(&fast.0, &slow.0, 1e-5, &format!("output {case}"));
        assert_close(&fast.1, &slow.1, 1e-5, &format!("input gradient {case}"));
        assert_close(&fast.2, &slow.2, 1e-5, &format!("weight gradient {case}"));
        let (fast_bias, bias) = (fast.3.expect("fast bias"), slow.3.expect("bias"));
        assert_close(&fast_bias, &bias, 1e-5, &format!("bias gradient {case}"));
    }
}

/// The network's upsampling on the CPU (`model::upconv`: a 2×2×2, stride-2 transposed
/// convolution — and the single-slice form's 1×2×2 — as matrix products, with its own backward
/// pass) against burn's `ConvTranspose3d::forward`: the output and the gradients of input,
/// weight and bias, on odd, unequal sizes (one a single voxel thick) and a batch of two, the
/// output going into a concatenation; with and without the direct kernels (the weight
/// gradient's sums over voxels), in any build.
#[test]
fn the_cpu_upsampling_matches_burns_transposed_convolution_and_its_gradients() {
    for direct in [false, true] {
        mriloop::model::conv::with_direct_kernels(direct, || {
            compare_upsamplings(&cpu().autodiff(), &UPSAMPLING_SHAPES)
        });
    }
}

/// Upsamplings compared: `(C_in, C_out, [D, H, W])`.
const UPSAMPLING_SHAPES: [(usize, usize, [usize; 3]); 4] = [
    (3, 5, [3, 5, 7]),
    (16, 8, [1, 4, 6]),
    (2, 1, [5, 1, 3]),
    (4, 3, [4, 4, 8]),
];

/// On burn's GPU backend (wgpu, here on lavapipe) the upsampling takes `model::upconv_gpu`'s
/// kernels (one forward, two backward) and equals burn's transposed convolution, as on the CPU.
#[test]
fn the_gpu_upsampling_matches_burns_transposed_convolution_and_its_gradients() {
    let _gpu = gpu_alone();
    let before = mriloop::model::upconv_gpu::kernel_launches();
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    // Fewer cases than on the CPU: each new shape compiles burn's kernels on lavapipe.
    compare_upsamplings(&gpu, &UPSAMPLING_SHAPES[..2]);
    let launched = mriloop::model::upconv_gpu::kernel_launches() - before;
    assert_eq!(
        launched,
        3 * 2 * 2,
        "upconv_gpu's kernels: two kernel depths, two shapes"
    );
}

/// [`the_cpu_upsampling_matches_burns_transposed_convolution_and_its_gradients`] on `ad` (an
/// autodiff device), by the route this thread takes.
fn compare_upsamplings(ad: &Device, shapes: &[(usize, usize, [usize; 3])]) {
    use burn::nn::conv::ConvTranspose3dConfig;
    use mriloop::model::upconv::upconv_forward;
    let ad = ad.clone();
    for ((c_in, c_out, [d, h, w]), kd) in shapes.iter().flat_map(|s| [(*s, 2), (*s, 1)]) {
        let up = ConvTranspose3dConfig::new([c_in, c_out], [kd, 2, 2])
            .with_stride([kd, 2, 2])
            .init(&ad);
        let x = Tensor::<5>::random([2, c_in, d, h, w], Distribution::Normal(0.0, 1.0), &ad);
        // The output goes into a concatenation, as in the decoder: its gradient arrives as a
        // part of the concatenation's (narrowed along the channels, not contiguous).
        let side = Tensor::<5>::random([2, 2, kd * d, 2 * h, 2 * w], Distribution::Default, &ad);
        let out = [2, c_out + 2, kd * d, 2 * h, 2 * w];
        let target = Tensor::<5>::random(out, Distribution::Normal(0.0, 1.0), &ad);
        let run = |fast: bool| {
            let x = x.clone().require_grad();
            let y = match fast {
                true => upconv_forward(&up, x.clone()),
                false => up.forward(x.clone()),
            };
            let joined = Tensor::cat(vec![side.clone(), y.clone()], 1);
            let grads = (joined * target.clone()).sum().backward();
            let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
            let bias = up
                .bias
                .as_ref()
                .and_then(|b| b.grad(&grads))
                .expect("bias grad");
            [
                values(y.inner()),
                values(x.grad(&grads).expect("x grad")),
                values(up.weight.grad(&grads).expect("weight grad")),
                bias.into_data().try_into_vec::<f32>().expect("f32"),
            ]
        };
        let (fast, slow) = (run(true), run(false));
        let case = format!("{c_in}->{c_out} {kd}×2×2 [{d}, {h}, {w}]");
        for (i, what) in [
            "output",
            "input gradient",
            "weight gradient",
            "bias gradient",
        ]
        .iter()
        .enumerate()
        {
            assert_close(&fast[i], &slow[i], 1e-5, &format!("{what} {case}"));
        }
    }
}

/// The convolutions' bias on the CPU (`model::bias`, added in place with its own backward pass)
/// against burn's broadcast add: output and the gradients of input and bias, on a 5D and a 3D
/// tensor; an input still held elsewhere is left as it was (the in-place add copies it first).
#[test]
fn the_cpu_channel_bias_matches_burns_broadcast_add_and_leaves_a_shared_input_alone() {
    use mriloop::model::bias::add_channel_bias;
    let ad = cpu().autodiff();
    let bias = Tensor::<1>::from_floats([0.5, -1.5, 2.0], &ad).require_grad();
    let values = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().expect("f32");
    for shape in [vec![2, 3, 5, 4, 7], vec![2, 3, 35]] {
        let n: usize = shape.iter().product();
        let x = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &ad);
        let target = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &ad);
        let before = values(x.clone().inner());
        let run = |fast: bool| {
            let x = x.clone().require_grad();
            let y =
                match (fast, shape.len()) {
                    (true, 5) => add_channel_bias(x.clone().reshape([2, 3, 5, 4, 7]), bias.clone())
                        .reshape([n]),
                    (true, _) => {
                        add_channel_bias(x.clone().reshape([2, 3, 35]), bias.clone()).reshape([n])
                    }
                    (false, 5) => (x.clone().reshape([2, 3, 5, 4, 7])
                        + bias.clone().reshape([1, 3, 1, 1, 1]))
                    .reshape([n]),
                    (false, _) => (x.clone().reshape([2, 3, 35]) + bias.clone().reshape([1, 3, 1]))
                        .reshape([n]),
                };
            let grads = (y.clone() * target.clone()).sum().backward();
            [
                values(y.inner()),
                values(x.grad(&grads).expect("x grad")),
                values(bias.grad(&grads).expect("bias grad")),
            ]
        };
        let (fast, slow) = (run(true), run(false));
        for (i, what) in ["output", "input gradient", "bias gradient"]
            .iter()
            .enumerate()
        {
            assert_close(&fast[i], &slow[i], 1e-5, &format!("{what} {shape:?}"));
        }
        assert_eq!(values(x.inner()), before, "the input was changed in place");
    }
}

/// The network's ReLUs on the CPU (`model::relu`: `relu(x)` and `relu(a + b)` as operations of
/// their own, in parallel) against burn's: outputs and gradients on values with zeros, negatives
/// and a NaN (which burn's lets through, forward and back), over more than one parallel chunk;
/// with inputs held elsewhere too (their values must not change) and fresh ones (written in
/// place).
#[test]
fn the_cpu_relus_match_burns_and_their_gradients() {
    use mriloop::model::relu::{add_relu, relu};
    let ad = cpu().autodiff();
    let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
    let shape = [2, 3, 9, 40, 50];
    let len: usize = shape.iter().product();
    let with_nan = |seed: usize| {
        let v: Vec<f32> = (0..len)
            .map(|i| match (i * 7 + seed) % 11 {
                _ if i == 1234 => f32::NAN,
                0 => 0.0,
                r => r as f32 - 5.5,
            })
            .collect();
        Tensor::<5>::from_data(TensorData::new(v, shape), &ad)
    };
    let (a, b) = (with_nan(0), with_nan(3));
    let target = Tensor::<5>::random(shape, Distribution::Normal(0.0, 1.0), &ad);
    let run = |own: bool, fresh: bool| {
        let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
        // A fresh input (the product's output, no other handle) or a shared one.
        let (x, y) = match fresh {
            true => (a.clone().mul_scalar(1.0), b.clone().mul_scalar(1.0)),
            false => (a.clone(), b.clone()),
        };
        let (one, sum) = match own {
            true => (relu(x.clone()), add_relu(x.clone(), y.clone())),
            false => (
                burn::tensor::activation::relu(x.clone()),
                burn::tensor::activation::relu(x.clone() + y.clone()),
            ),
        };
        let loss = (one.clone() * target.clone()).sum() + (sum.clone() * target.clone()).sum();
        let grads = loss.backward();
        let grad = |t: &Tensor<5>| values(t.grad(&grads).expect("grad"));
        [values(one.inner()), values(sum.inner()), grad(&a), grad(&b)]
    };
    for fresh in [false, true] {
        let (own, burns) = (run(true, fresh), run(false, fresh));
        for (i, what) in ["relu", "relu(a + b)", "gradient of a", "gradient of b"]
            .iter()
            .enumerate()
        {
            let same = own[i]
                .iter()
                .zip(&burns[i])
                .all(|(p, q)| (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-6);
            assert!(same, "{what} (fresh input {fresh})");
        }
        assert!(own[0].iter().any(|v| v.is_nan()), "NaN goes through");
    }
    let before: Vec<f32> = values(a.clone());
    let _ = relu(a.clone());
    let _ = add_relu(a.clone(), b.clone());
    let after = values(a);
    let kept = before
        .iter()
        .zip(&after)
        .all(|(p, q)| p == q || (p.is_nan() && q.is_nan()));
    assert!(kept, "a shared input was changed in place");
}

/// The segmentation losses on the CPU (`model::loss`, one fused operation with its own backward
/// pass) against the composed soft Dice and cross-entropy: both values and the logits' gradient
/// of a weighted sum of them, without and with voxel weights, with a foreground label absent
/// from the reference, and with no foreground at all (Dice loss 0).
#[test]
fn the_cpu_fused_segmentation_losses_match_the_composed_ones_and_their_gradients() {
    compare_segmentation_losses(&cpu().autodiff());
}

/// On burn's GPU backend (wgpu, here on lavapipe) the losses take `model::loss_gpu`'s kernels
/// (two forward, one backward) and equal the composed ones on the same device, as on the CPU.
#[test]
fn the_gpu_fused_segmentation_losses_match_the_composed_ones_and_their_gradients() {
    let _gpu = gpu_alone();
    let before = mriloop::model::loss_gpu::kernel_launches();
    compare_segmentation_losses(&Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff());
    let launched = mriloop::model::loss_gpu::kernel_launches() - before;
    assert_eq!(launched, 4 * 3, "loss_gpu's kernels, for four cases");
}

/// The fused losses against the composed ones on `ad` (an autodiff device): the Dice loss, the
/// cross-entropy and the logits' gradient, with and without weights, with labels present and
/// absent and with background alone.
fn compare_segmentation_losses(ad: &Device) {
    use mriloop::model::{segmentation_losses, soft_dice_loss, voxel_cross_entropy};
    let ad = ad.clone();
    let values = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().expect("f32");
    let [n, k, d, h, w] = [2, 4, 3, 5, 6];
    let logits = Tensor::<5>::random([n, k, d, h, w], Distribution::Normal(0.0, 2.0), &ad);
    // Labels 0, 1 and 3 (2 absent), or background only.
    let labels: Vec<i64> = (0..n * d * h * w).map(|i| [0, 1, 3, 0, 0][i % 5]).collect();
    let background = vec![0i64; labels.len()];
    let weights = Tensor::<4>::random([n, d, h, w], Distribution::Uniform(0.1, 3.0), &ad);
    for (case, labels) in [("labels", &labels), ("background", &background)] {
        let masks = Tensor::<4, Int>::from_data(TensorData::new(labels.clone(), [n, d, h, w]), &ad);
        for weights in [None, Some(weights.clone())] {
            let what = format!("{case}, weighted {}", weights.is_some());
            let run = |fused: bool| {
                let z = logits.clone().require_grad();
                let (dice, ce) = match fused {
                    true => segmentation_losses(z.clone(), masks.clone(), weights.clone()),
                    false => (
                        soft_dice_loss(z.clone(), masks.clone()),
                        voxel_cross_entropy(z.clone(), masks.clone(), weights.clone()),
                    ),
                };
                let grads = (dice.clone().mul_scalar(0.7) + ce.clone().mul_scalar(1.3)).backward();
                let grad = z
                    .grad(&grads)
                    .expect("logits grad")
                    .reshape([n * k * d * h * w]);
                [values(dice.inner()), values(ce.inner()), values(grad)]
            };
            let (fused, composed) = (run(true), run(false));
            for (i, term) in ["Dice loss", "cross-entropy", "logits gradient"]
                .iter()
                .enumerate()
            {
                assert_close(&fused[i], &composed[i], 1e-5, &format!("{term} ({what})"));
            }
            if case == "background" {
                assert_eq!(fused[0], [0.0], "no foreground: no Dice loss");
            }
            assert!(fused[0][0] >= 0.0 && fused[1][0] > 0.0, "{what}: {fused:?}");
        }
    }
}

/// The blocks' instance norm on the CPU (`model::norm`, one fused operation with its own backward
/// pass) against burn's `InstanceNorm::forward`: output and the gradients of input, γ and β, with
/// γ and β away from their initial 1 and 0, on channels of very different means and spreads.
#[test]
fn the_cpu_instance_norm_and_burns_match_the_exact_norm_and_its_gradients() {
    compare_instance_norms(&cpu().autodiff(), [5, 4, 7]);
}

/// A residual block's convolutions go into their norms without their biases
/// (`conv3d_forward_before_norm`): with biases far from zero the normalised output and the
/// weight's gradient are the biased convolution's, and the bias gets no gradient (its exact
/// one is zero: here burn's is ~1e-6 of the weight's).
#[test]
fn a_bias_before_an_instance_norm_changes_nothing_and_gets_no_gradient() {
    use burn::module::Param;
    use burn::nn::conv::Conv3dConfig;
    use burn::nn::{InstanceNormConfig, PaddingConfig3d};
    use mriloop::model::conv::{conv3d_forward, conv3d_forward_before_norm};
    use mriloop::model::norm::instance_norm_forward;
    let ad = cpu().autodiff();
    let mut conv = Conv3dConfig::new([3, 4], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .init(&ad);
    conv.bias = Some(Param::from_tensor(Tensor::from_floats(
        [3.0, -2.0, 0.5, 7.0],
        &ad,
    )));
    let norm = InstanceNormConfig::new(4).init(&ad);
    let x = Tensor::<5>::random([2, 3, 5, 6, 7], Distribution::Normal(0.0, 1.0), &ad);
    let target = Tensor::<5>::random([2, 4, 5, 6, 7], Distribution::Normal(0.0, 1.0), &ad);
    let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
    let run = |before_norm: bool| {
        let h = match before_norm {
            true => conv3d_forward_before_norm(&conv, x.clone()),
            false => conv3d_forward(&conv, x.clone()),
        };
        let y = instance_norm_forward(&norm, h);
        let grads = (y.clone() * target.clone()).sum().backward();
        let weight = conv.weight.grad(&grads).expect("weight gradient");
        let bias = conv.bias.as_ref().and_then(|b| b.grad(&grads));
        let bias = bias.map(|g| g.into_data().try_into_vec::<f32>().expect("f32"));
        (values(y.inner()), values(weight), bias)
    };
    let ((y, weight, bias), (y_biased, weight_biased, bias_biased)) = (run(true), run(false));
    assert_close(&y, &y_biased, 1e-5, "output");
    assert_close(&weight, &weight_biased, 1e-5, "weight gradient");
    assert_eq!(bias, None, "the left-out bias has a gradient");
    let largest = weight_biased.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bias_biased = bias_biased.expect("the biased convolution's bias gradient");
    assert!(
        bias_biased.iter().all(|g| g.abs() <= 1e-4 * largest),
        "a bias before a norm has a gradient: {bias_biased:?} (weight's up to {largest})"
    );
}

/// On burn's GPU backend (wgpu, here on lavapipe) the norm takes `model::norm_gpu`'s kernels:
/// output and gradients equal the exact (f64) norm's, as on the CPU (to 1e-4 of the largest).
#[test]
fn the_gpu_instance_norm_matches_the_exact_norm_and_its_gradients() {
    let _gpu = gpu_alone();
    let before = mriloop::model::norm_gpu::kernel_launches();
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    // Planes smaller and larger than a workgroup (256 threads), neither a multiple of it.
    compare_instance_norms(&gpu, [5, 4, 7]);
    compare_instance_norms(&gpu, [9, 10, 11]);
    let launched = mriloop::model::norm_gpu::kernel_launches() - before;
    assert_eq!(launched, 4, "norm_gpu's forward and backward kernels");
}

/// [`the_cpu_instance_norm_and_burns_match_the_exact_norm_and_its_gradients`] on `ad` (an
/// autodiff device), on two items × three channels of `size` voxels.
fn compare_instance_norms(ad: &Device, size: [usize; 3]) {
    use burn::module::Param;
    use burn::nn::InstanceNormConfig;
    use mriloop::model::norm::instance_norm_forward;
    let channels = 3;
    let mut norm = InstanceNormConfig::new(channels).init(ad);
    norm.gamma = Some(Param::from_tensor(Tensor::from_floats(
        [0.5, -1.5, 2.0],
        ad,
    )));
    norm.beta = Some(Param::from_tensor(Tensor::from_floats(
        [0.1, 3.0, -2.0],
        ad,
    )));
    let spread = Tensor::<1>::from_floats([0.01, 1.0, 40.0], ad).reshape([1, channels, 1, 1, 1]);
    let offset = Tensor::<1>::from_floats([5.0, -1.0, 100.0], ad).reshape([1, channels, 1, 1, 1]);
    // Fixed values (a random draw would depend on what the binary's other tests drew before:
    // one draw in a full run put burn's own norm past its tolerance below).
    let dims = [2, channels, size[0], size[1], size[2]];
    let fixed = |salt: f32| {
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|i| ((i as f32 * 12.9898 + salt).sin() * 43_758.547).fract() * 3.4 - 1.7)
            .collect();
        Tensor::<5>::from_data(TensorData::new(values, dims), ad)
    };
    let x = fixed(0.0) * spread + offset;
    let target = fixed(78.233);
    let run = |fast: bool| {
        let x = x.clone().require_grad();
        let y = match fast {
            true => instance_norm_forward(&norm, x.clone()),
            false => norm.forward(x.clone()),
        };
        let grads = (y.clone() * target.clone()).sum().backward();
        let param = |p: &Option<Param<Tensor<1>>>| {
            let g = p
                .as_ref()
                .and_then(|p| p.grad(&grads))
                .expect("parameter gradient");
            g.into_data().try_into_vec::<f32>().expect("f32")
        };
        let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
        let grad_x = values(x.grad(&grads).expect("x grad"));
        (
            values(y.inner()),
            grad_x,
            param(&norm.gamma),
            param(&norm.beta),
        )
    };
    let (fast, slow) = (run(true), run(false));
    // Both against the same norm in f64 (the channel of spread 0.01 about 5 is ill-conditioned
    // in f32: burn's own gradients stray there by ~2e-4 of the largest, so each side is held to
    // the exact values, ours tightly).
    let host = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
    let exact = instance_norm_f64(
        &host(x.clone().inner()),
        &host(target.clone().inner()),
        ([0.5, -1.5, 2.0], [0.1, 3.0, -2.0]),
        (2 * channels, size.iter().product()),
    );
    for (got, tolerance) in [(&fast, 1e-4), (&slow, 5e-4)] {
        assert_close(&got.0, &exact.0, tolerance, "output");
        assert_close(&got.1, &exact.1, tolerance, "input gradient");
        assert_close(&got.2, &exact.2, tolerance, "gamma gradient");
        assert_close(&got.3, &exact.3, tolerance, "beta gradient");
    }
}

/// Instance norm (epsilon 1e-5) of `x` over `(items × channels, voxels)` with per-channel
/// `(gamma, beta)`, and the gradients of `Σ y · target`: output, input, gamma and beta
/// gradients, computed in f64.
#[allow(clippy::type_complexity)]
fn instance_norm_f64(
    x: &[f32],
    target: &[f32],
    (gamma, beta): ([f64; 3], [f64; 3]),
    (rows, voxels): (usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut y, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    let (mut dgamma, mut dbeta) = (vec![0f64; 3], vec![0f64; 3]);
    for r in 0..rows {
        let c = r % 3;
        let xs: Vec<f64> = x[r * voxels..(r + 1) * voxels]
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        let ts: Vec<f64> = target[r * voxels..(r + 1) * voxels]
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        let n = voxels as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        let xhat: Vec<f64> = xs.iter().map(|v| (v - mean) * inv).collect();
        let t_mean = ts.iter().sum::<f64>() / n;
        let tx_mean = ts.iter().zip(&xhat).map(|(t, h)| t * h).sum::<f64>() / n;
        for i in 0..voxels {
            y[r * voxels + i] = (gamma[c] * xhat[i] + beta[c]) as f32;
            dx[r * voxels + i] = (gamma[c] * inv * (ts[i] - t_mean - xhat[i] * tx_mean)) as f32;
        }
        dgamma[c] += tx_mean * n;
        dbeta[c] += t_mean * n;
    }
    let f = |v: Vec<f64>| v.into_iter().map(|g| g as f32).collect();
    (y, dx, f(dgamma), f(dbeta))
}

/// `a` equals `b` to `tolerance` of `b`'s largest magnitude (at least 1).
fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(worst <= tolerance * scale, "{what}: {worst} of {scale}");
}

/// The dtypes of a model's float parameters.
fn parameter_dtypes(model: &mriloop::model::MultiTaskUNet) -> Vec<burn::tensor::DType> {
    struct Dtypes(Vec<burn::tensor::DType>);
    impl burn::module::ModuleVisitor for Dtypes {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.push(param.val().dtype());
        }
    }
    let mut v = Dtypes(Vec::new());
    burn::module::Module::visit(model, &mut v);
    v.0
}

#[test]
fn mixed_precision_learns_the_tiny_task_as_f32_does_and_keeps_f32_weights() {
    use burn::optim::AdamConfig;
    use mriloop::model::train_step;
    let ad = cpu().autodiff();
    // One start for every precision (no dropout: nothing else draws).
    ad.seed(5);
    let start = config(1).model.init(&ad);
    let losses = |precision: Precision| {
        let cfg = config(40).with_precision(precision);
        let (mut model, mut optim) = (start.clone(), AdamConfig::new().init());
        let mut loss_scale = precision.initial_loss_scale();
        let mut losses = Vec::new();
        for step in 1..=40 {
            let optimiser = (&mut optim, &mut loss_scale);
            let (m, loss) = train_step(model, optimiser, &batch(step, &ad), &cfg);
            model = m;
            losses.push(loss.total);
        }
        let dtypes = parameter_dtypes(&model);
        assert!(!dtypes.is_empty());
        assert!(
            dtypes.iter().all(|t| *t == burn::tensor::DType::F32),
            "{precision:?}: {dtypes:?}"
        );
        losses
    };
    let full = losses(Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let mixed = losses(precision);
        // The same weights and batch: the first loss as f32's to half precision's rounding.
        let gap = (mixed[0] - full[0]).abs();
        assert!(gap > 0.0, "{precision:?}: computed in half precision");
        assert!(
            gap < 0.02 * full[0],
            "{precision:?}: first loss {} vs {}",
            mixed[0],
            full[0]
        );
        let first = mixed[..3].iter().sum::<f64>() / 3.0;
        let last = mixed[37..].iter().sum::<f64>() / 3.0;
        // Halved at least (usually cut by more than 2.5×; the seeded start still varies when
        // another test draws from the CPU's one random stream meanwhile: bf16 once fell from
        // 2.389 to 0.970).
        assert!(
            last < first / 2.0,
            "{precision:?}: loss fell from {first:.3} to {last:.3}"
        );
        let full_last = full[37..].iter().sum::<f64>() / 3.0;
        assert!(
            last < 1.5 * full_last + 0.05,
            "{precision:?}: ends at {last:.3}, f32 at {full_last:.3}"
        );
    }
}

#[test]
fn an_f16_step_whose_gradients_overflow_is_skipped_and_halves_the_scale() {
    use burn::optim::AdamConfig;
    use mriloop::model::{train_step, LossScale};
    let ad = cpu().autodiff();
    let cfg = config(1).with_precision(Precision::F16);
    let start = cfg.model.init(&ad);
    let b = batch(0, &ad);
    let probe = batch(999, &cpu()).images;
    let predict = |m: &mriloop::model::MultiTaskUNet| m.valid().forward(probe.clone()).0;
    // A scale that makes the scaled loss infinite: every gradient overflows.
    let mut optim = AdamConfig::new().init();
    let mut scale = Some(LossScale {
        scale: 3.0e38,
        good_steps: 7,
    });
    let (skipped, terms) = train_step(start.clone(), (&mut optim, &mut scale), &b, &cfg);
    assert!(terms.total.is_finite(), "the loss itself is reported");
    assert_eq!(
        scale,
        Some(LossScale {
            scale: 1.5e38,
            good_steps: 0
        })
    );
    let moved: f32 = (predict(&skipped) - predict(&start))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(moved, 0.0, "a skipped step leaves the weights");
    // The optimiser was untouched too: its next step is a fresh optimiser's first.
    let mut scale = Some(LossScale::default());
    let (after_skip, _) = train_step(skipped, (&mut optim, &mut scale), &b, &cfg);
    assert_eq!(scale.map(|s| s.good_steps), Some(1));
    let mut fresh = AdamConfig::new().init();
    let mut fresh_scale = Some(LossScale::default());
    let (direct, _) = train_step(start.clone(), (&mut fresh, &mut fresh_scale), &b, &cfg);
    let gap: f32 = (predict(&after_skip) - predict(&direct))
        .abs()
        .max()
        .into_scalar();
    let moved: f32 = (predict(&after_skip) - predict(&start))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(gap, 0.0);
    assert!(moved > 0.0, "a finite step trains");
}

/// On a GPU a convolution over more voxels than one dispatch may hold runs in pieces
/// (`model::pieces`). Through wgpu on lavapipe (planes 8 lanes wide: at most 524 280 voxels a
/// call), a 3×3×3 convolution of two 128³ items — 4.2 M voxels, the nnU-Net-sized step that
/// failed on an H200 — and its backward pass panicked on burn's device thread ("Cube count too
/// big (524288, 4, 1)"); in pieces no device thread fails and the output and input gradient
/// equal the CPU's.
#[test]
fn a_convolution_too_large_for_one_gpu_dispatch_runs_in_pieces() {
    let _gpu = gpu_alone();
    use burn::nn::conv::Conv3dConfig;
    use burn::nn::PaddingConfig3d;
    use mriloop::model::conv::conv3d_forward;
    use mriloop::model::device_failure::{failures, install, OnFailure};
    install(OnFailure::Record);
    let before = failures();
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let budget = mriloop::model::pieces::gpu_voxel_budget(&gpu).expect("a GPU's budget");
    // One item over the budget (cut in depth slabs, at strides 1 and 2), and two items that
    // fit one at a time (cut in item groups).
    for (dims, stride) in [
        ([2, 1, 128, 128, 128], 1),
        ([1, 1, 128, 128, 128], 2),
        ([2, 4, 64, 64, 64], 1),
    ] {
        let [n, c, d, h, w] = dims;
        assert!(
            n * d * h * w > budget,
            "budget {budget}: {dims:?} would not be cut"
        );
        let conv = Conv3dConfig::new([c, 4], [3, 3, 3])
            .with_stride([stride; 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init(&cpu().autodiff());
        let x = Tensor::<5>::random(dims, Distribution::Normal(0.0, 1.0), &cpu().autodiff());
        let layer = |device: &Device, x| {
            let conv = burn::module::Module::fork(conv.clone(), device);
            (conv3d_forward(&conv, x), conv.weight.val())
        };
        let what = format!("{dims:?} stride {stride}");
        assert_layer_on_gpu_is_the_cpus(&x, &gpu, layer, &what);
        assert_eq!(failures(), before, "a device thread failed");
    }
}

/// An upsampling too large for one GPU dispatch runs in pieces (an item alone in depth slabs,
/// and items one at a time) through mriloop's own kernels: its output and its input and weight
/// gradients are the CPU's.
#[test]
fn an_upsampling_too_large_for_one_gpu_dispatch_runs_in_pieces() {
    let _gpu = gpu_alone();
    use burn::nn::conv::ConvTranspose3dConfig;
    use mriloop::model::upconv::upconv_forward;
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let budget = mriloop::model::pieces::gpu_voxel_budget(&gpu).expect("a GPU's budget");
    for dims in [[1, 4, 48, 48, 48], [2, 4, 40, 40, 40]] {
        let [n, c, d, h, w] = dims;
        assert!(
            8 * n * d * h * w > budget,
            "budget {budget}: {dims:?} would not be cut"
        );
        let up = ConvTranspose3dConfig::new([c, 4], [2, 2, 2])
            .with_stride([2, 2, 2])
            .init(&cpu().autodiff());
        let x = Tensor::<5>::random(dims, Distribution::Normal(0.0, 1.0), &cpu().autodiff());
        let layer = |device: &Device, x| {
            let up = burn::module::Module::fork(up.clone(), device);
            (upconv_forward(&up, x), up.weight.val())
        };
        assert_layer_on_gpu_is_the_cpus(&x, &gpu, layer, &format!("{dims:?}"));
    }
}

/// A layer run on the GPU and on the CPU over `x` under the loss ½·Σy²: output, input gradient
/// and weight gradient the same to 1e-4 of their largest values. `layer(device, x)` forks the
/// layer to `device` and gives its output and its weight there.
fn assert_layer_on_gpu_is_the_cpus(
    x: &Tensor<5>,
    gpu: &Device,
    layer: impl Fn(&Device, Tensor<5>) -> (Tensor<5>, Tensor<5>),
    what: &str,
) {
    let run = |device: &Device| {
        let x = x.clone().to_device(device).require_grad();
        let (y, weight) = layer(device, x.clone());
        let grads = (y.clone() * y.clone()).sum().div_scalar(2.0).backward();
        let values = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().expect("f32");
        let x_grad = values(x.grad(&grads).expect("x grad"));
        let w_grad = values(weight.grad(&grads).expect("weight grad"));
        (values(y.inner()), x_grad, w_grad)
    };
    let (on_gpu, on_cpu) = (run(gpu), run(&cpu().autodiff()));
    let part = |name: &str| format!("{what}: {name}");
    assert_close(&on_gpu.0, &on_cpu.0, 1e-4, &part("output"));
    assert_close(&on_gpu.1, &on_cpu.1, 1e-4, &part("input gradient"));
    assert_close(&on_gpu.2, &on_cpu.2, 1e-4, &part("weight gradient"));
}

/// Every float parameter's sizes and gradient (flattened; `None` if it has none), in visiting
/// order, under `grads`.
struct ParamGrads<'a> {
    grads: &'a burn::optim::GradientsParams,
    values: Vec<Option<(Vec<usize>, Vec<f32>)>>,
}

impl burn::module::ModuleVisitor for ParamGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let values = self.grads.get::<D>(param.id).map(|grad| {
            let values = grad.into_data().try_into_vec::<f32>().expect("f32");
            (param.dims().to_vec(), values)
        });
        self.values.push(values);
    }
}

/// A whole training step of the network on burn's GPU backend (wgpu, here on lavapipe) — its
/// convolutions, upsamplings, norms and heads through `model::conv_gpu`, `conv_gpu_direct` and
/// `norm_gpu` together with burn's own kernels — gives the CPU's loss, outputs and the gradient
/// of every parameter (to 1e-3 of each one's largest), for the 3D and the single-slice forms.
#[test]
fn a_training_step_on_the_gpu_gives_the_cpus_loss_and_gradients() {
    let _gpu = gpu_alone();
    use burn::module::Module;
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    // The tiny task's 12³ batch, whole (3D) and its first slice (the single-slice form).
    let whole = batch(0, &cpu());
    let [n, _, s, _, _] = whole.images.dims();
    let slice = Batch {
        images: whole.images.clone().slice([0..n, 0..1, 0..1, 0..s, 0..s]),
        masks: whole.masks.clone().slice([0..n, 0..1, 0..s, 0..s]),
        classes: whole.classes.clone(),
        weights: None,
    };
    let cases = [
        (config(1).model, whole),
        (config(1).model.with_spatial_dims(2), slice),
    ];
    for (cfg, cpu_batch) in cases {
        let model = cfg.init(&cpu().autodiff());
        let step = |device: &Device| {
            let model = model.clone().fork(device);
            let b = Batch {
                images: cpu_batch.images.clone().to_device(device),
                masks: cpu_batch.masks.clone().to_device(device),
                classes: cpu_batch.classes.clone().to_device(device),
                weights: None,
            };
            let (loss, _) = batch_loss(&model, &b, (TaskMode::Joint, 0.5), Precision::F32);
            let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
            let mut visitor = ParamGrads {
                grads: &grads,
                values: Vec::new(),
            };
            model.visit(&mut visitor);
            (loss.into_scalar::<f32>(), visitor.values)
        };
        let (on_gpu, on_cpu) = (step(&gpu), step(&cpu().autodiff()));
        let dims = cpu_batch.images.dims();
        let loss_gap = (on_gpu.0 - on_cpu.0).abs();
        assert!(
            loss_gap <= 1e-4 * on_cpu.0.abs().max(1.0),
            "loss {} vs {} ({dims:?})",
            on_gpu.0,
            on_cpu.0
        );
        assert_eq!(on_gpu.1.len(), on_cpu.1.len());
        let with_grads = on_cpu.1.iter().filter(|g| g.is_some()).count();
        assert!(with_grads >= 20, "{with_grads} parameters with gradients");
        for (i, (g, c)) in on_gpu.1.iter().zip(&on_cpu.1).enumerate() {
            let what = format!("parameter {i} of {dims:?}: {:?}", c.as_ref().map(|c| &c.0));
            match (g, c) {
                (Some(g), Some(c)) => assert_close(&g.1, &c.1, 1e-3, &what),
                _ => assert_eq!(
                    g.is_some(),
                    c.is_some(),
                    "{what}: a gradient on one side only"
                ),
            }
        }
    }
}

/// A 16³ case: noise about 1, a bright 5³ cube (label 1) at `at`.
fn cube_sample(id: &str, at: usize) -> mriloop::model::Sample {
    use mriloop::volume::{Affine, Volume};
    let s = 16;
    let (mut image, mut mask) = (vec![0f32; s * s * s], vec![0u8; s * s * s]);
    for (i, (v, m)) in image.iter_mut().zip(&mut mask).enumerate() {
        let [x, y, z] = [i % s, (i / s) % s, i / (s * s)];
        let inside = [x, y, z].iter().all(|c| (at..at + 5).contains(c));
        *v = 1.0 + 0.2 * ((i * 7919) % 13) as f32 / 13.0 + if inside { 2.0 } else { 0.0 };
        *m = u8::from(inside);
    }
    let affine = Affine::from_spacing([1.0; 3]);
    let image = Volume::new([s, s, s, 1], affine, image).unwrap();
    let mask = Volume::new([s, s, s, 1], affine, mask).unwrap();
    mriloop::model::Sample::new(id, &[image], &mask, 0).unwrap()
}

/// `fit` on the GPU reads each step's loss while the next step is queued (the host records a
/// step while the device runs the one before); it still reports every step once, in order,
/// with that step's own loss: the CPU's fit from the same weights on the same patches reports
/// the same losses, step by step (to the GPU's rounding, far below a step's change).
#[test]
fn fit_on_the_gpu_reports_each_steps_own_loss_read_behind_the_next_step() {
    let _gpu = gpu_alone();
    use mriloop::model::fit::{fit, FitConfig, FitControl, FitEvent};
    use mriloop::model::TrainEvent;
    let start = tempfile::tempdir().unwrap();
    let training = config(1).with_learning_rate(3e-2);
    let weights = training.model.init(&cpu());
    mriloop::model::save_checkpoint(start.path(), &training, &weights).unwrap();
    let fit_config = FitConfig::new(training)
        .with_epochs(1)
        .with_steps_per_epoch(5)
        .with_patch([8, 8, 8])
        .with_resume_from(Some(start.path().display().to_string()));
    let losses = |device: Device| {
        let out = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let train = vec![cube_sample("a", 3), cube_sample("b", 8)];
        let val = vec![cube_sample("v", 5)];
        let control = FitControl::default();
        fit(&fit_config, train, &val, &device, out.path(), &tx, &control).unwrap();
        drop(tx);
        let steps: Vec<(usize, f64)> = rx
            .iter()
            .filter_map(|e| match e {
                FitEvent::Train(TrainEvent::Step { step, loss }) => Some((step, loss.total)),
                _ => None,
            })
            .collect();
        steps
    };
    let on_cpu = losses(cpu());
    let on_gpu = losses(Device::wgpu(burn::prelude::DeviceKind::DefaultDevice));
    let numbers: Vec<usize> = on_gpu.iter().map(|(step, _)| *step).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "every step once, in order");
    for (k, ((_, gpu), (_, cpu))) in on_gpu.iter().zip(&on_cpu).enumerate() {
        assert!(
            (gpu - cpu).abs() <= 2e-3 * cpu.abs(),
            "step {}: {gpu} vs {cpu}",
            k + 1
        );
    }
    // A loss read a step late would be its neighbour's, which differs by far more (the class
    // step, the third, trains another loss).
    let apart = |pair: &[(usize, f64)]| (pair[0].1 - pair[1].1).abs() > 2e-2 * pair[0].1.abs();
    assert!(on_cpu.windows(2).any(apart), "{on_cpu:?}");
}

/// A mixed-precision (f16) training step on the GPU runs every convolution, upsampling and norm
/// on mriloop's kernels, as the f32 step does (each kernel as often: none falls back to burn's
/// route, whose convolutions take ~30 launches each), gives the f32 step's loss to f16's
/// rounding, and every parameter's gradient in f32 (the f32 weights are never copied to half
/// precision), near the f32 step's.
#[test]
fn a_mixed_precision_step_on_the_gpu_takes_the_f32_steps_kernels() {
    let _gpu = gpu_alone();
    use burn::module::Module;
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let cpu_batch = batch(0, &cpu());
    // Drawn on the GPU: the CPU's random numbers are one stream for all the binary's tests, and
    // a draw here would move another test's seeded start.
    let model = config(1).model.init(&gpu);
    let step = |precision: Precision| {
        let model = model.clone().fork(&gpu);
        let b = Batch {
            images: cpu_batch.images.clone().to_device(&gpu),
            masks: cpu_batch.masks.clone().to_device(&gpu),
            classes: cpu_batch.classes.clone().to_device(&gpu),
            weights: None,
        };
        let before = layer_kernel_launches();
        let (loss, _) = batch_loss(&model, &b, (TaskMode::Joint, 0.5), precision);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        let mut visitor = ParamGrads {
            grads: &grads,
            values: Vec::new(),
        };
        model.visit(&mut visitor);
        let loss = loss.into_scalar::<f32>();
        // Counted once the values are read: burn's fusion runs the kernels lazily.
        let launched: Vec<usize> = layer_kernel_launches()
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .collect();
        (loss, visitor.values, launched)
    };
    let (full, half) = (step(Precision::F32), step(Precision::F16));
    assert!(full.2.iter().all(|n| *n > 0), "{:?}", full.2);
    assert_eq!(half.2, full.2, "launches of each kernel, f16 against f32");
    let gap = (half.0 - full.0).abs();
    assert!(gap > 0.0, "computed in half precision");
    assert!(gap <= 1e-2 * full.0.abs(), "loss {} vs {}", half.0, full.0);
    // Every gradient in f32 (`ParamGrads` reads them as f32) and non-zero where f32's is; all of
    // them together pointing where f32's point (one by one, f16's rounding moves a gradient that
    // nearly cancels, a γ or a bias summed over a plane, by tens of percent, and ReLUs near zero
    // flip: all together 0.4–13 % apart in relative L2 over random starts; burn's own f16 route
    // on the CPU as much).
    assert_eq!(half.1.len(), full.1.len());
    let (mut dot, mut half_norm, mut full_norm) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (h, f)) in half.1.iter().zip(&full.1).enumerate() {
        let what = format!("parameter {i}: {:?}", f.as_ref().map(|f| &f.0));
        let (Some(h), Some(f)) = (h, f) else {
            assert_eq!(h.is_some(), f.is_some(), "{what}: one side only");
            continue;
        };
        let nonzero = |g: &[f32]| g.iter().any(|v| *v != 0.0);
        assert_eq!(nonzero(&h.1), nonzero(&f.1), "{what}");
        for (a, b) in h.1.iter().zip(&f.1) {
            dot += f64::from(*a) * f64::from(*b);
            half_norm += f64::from(*a).powi(2);
            full_norm += f64::from(*b).powi(2);
        }
    }
    let cosine = dot / (half_norm * full_norm).sqrt();
    assert!(
        cosine >= 0.98,
        "the gradients' cosine similarity {cosine:.4}"
    );
    let norms = (half_norm / full_norm).sqrt();
    assert!(
        (norms - 1.0).abs() <= 0.1,
        "the gradients' norms {norms:.4} apart"
    );
}

/// The f16 gradient scaler's unscaling on the GPU (`model::unscale_gpu`): one kernel a gradient
/// divides it by the scale, as burn's multiplication does (to f32 rounding: the scale is a power
/// of two), and its sums find an overflow; the gradients of a loss scaled by 1024 come back as
/// the unscaled loss's.
#[test]
fn unscaling_on_the_gpu_is_one_kernel_a_gradient_and_finds_an_overflow() {
    let _gpu = gpu_alone();
    use mriloop::model::precision::unscale_gradients;
    use mriloop::model::unscale_gpu::{kernel_launches, unscale_and_sum};
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let model = config(1).model.init(&gpu);
    let b = batch(0, &cpu());
    let x = b.images.to_device(&gpu);
    let grads_of = |factor: f32| {
        let (seg, cls) = model.forward(x.clone());
        let loss = (seg.sum() + cls.sum()).mul_scalar(factor);
        burn::optim::GradientsParams::from_grads(loss.backward(), &model)
    };
    let values = |grads: &burn::optim::GradientsParams| {
        let mut visitor = ParamGrads {
            grads,
            values: Vec::new(),
        };
        burn::module::Module::visit(&model, &mut visitor);
        visitor.values
    };
    let plain = values(&grads_of(1.0));
    let mut scaled = grads_of(1024.0);
    let before = kernel_launches();
    assert!(unscale_gradients(&mut scaled, &model, 1024.0));
    let gradients = plain.iter().flatten().count();
    assert!(gradients > 10, "{gradients} gradients");
    assert_eq!(
        kernel_launches() - before,
        gradients,
        "one launch a gradient"
    );
    let unscaled = values(&scaled);
    assert_eq!(unscaled.len(), plain.len());
    for (i, (u, p)) in unscaled.iter().zip(&plain).enumerate() {
        let (Some(u), Some(p)) = (u, p) else {
            assert_eq!(u.is_some(), p.is_some(), "parameter {i}: one side only");
            continue;
        };
        let largest = p.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        let gap =
            u.1.iter()
                .zip(&p.1)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            gap <= 1e-5 * largest.max(1e-6),
            "parameter {i}: {gap} of {largest}"
        );
    }
    let mut overflowed = grads_of(f32::INFINITY);
    assert!(!unscale_gradients(&mut overflowed, &model, 1.0));
    // One value anywhere (here ones no thread reads first, past a whole round of the
    // workgroups) makes the sum non-finite; the partial sums add up to the sum.
    let inner = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let values: Vec<f32> = (0..40_000).map(|i| (i % 7) as f32 - 3.0).collect();
    let sum_of = |values: &[f32]| {
        let t = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), &inner);
        let (unscaled, sums) = unscale_and_sum(t, 0.5);
        assert_eq!(sums.dims(), [mriloop::model::unscale_gpu::PARTS]);
        let unscaled = unscaled.into_data().try_into_vec::<f32>().expect("f32");
        (unscaled, sums.sum().into_scalar::<f32>())
    };
    let (halves, sum) = sum_of(&values);
    let expected: Vec<f32> = values.iter().map(|v| v * 0.5).collect();
    assert_eq!(halves, expected);
    assert_eq!(sum, expected.iter().sum::<f32>());
    for (bad, at) in [
        (f32::INFINITY, 777),
        (f32::NAN, 33_333),
        (f32::NEG_INFINITY, 39_999),
    ] {
        let mut values = values.clone();
        values[at] = bad;
        assert!(!sum_of(&values).1.is_finite(), "{bad} at {at}");
    }
}

/// The class cross-entropy on the GPU (`model::class_loss_gpu`: one kernel forward, one
/// backward) equals burn's `CrossEntropyLoss` and its gradient on the same device, for a batch
/// of one and of five items (more than one item per class, logits far apart), and takes the
/// kernels' route.
#[test]
fn the_gpu_class_loss_matches_burns_cross_entropy_and_its_gradient() {
    use burn::nn::loss::CrossEntropyLossConfig;
    use mriloop::model::class_loss_gpu::{class_cross_entropy, kernel_launches};
    let _gpu = gpu_alone();
    let ad = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let before = kernel_launches();
    let cases: [(Vec<f32>, Vec<i64>); 2] = [
        (vec![0.3, -1.2, 2.0], vec![2]),
        (
            vec![
                1.0, 2.0, -3.0, 0.5, 0.5, 0.5, 8.0, -8.0, 0.0, -1.0, 4.0, 2.0, 0.2, 0.1, -0.4,
            ],
            vec![0, 2, 1, 1, 0],
        ),
    ];
    for (values, classes) in cases {
        let n = classes.len();
        let logits = Tensor::<2>::from_data(TensorData::new(values, [n, 3]), &ad);
        let classes = Tensor::<1, Int>::from_data(TensorData::new(classes, [n]), &ad);
        let run = |ours: bool| {
            let x = logits.clone().require_grad();
            let loss = match ours {
                true => class_cross_entropy(x.clone(), classes.clone()),
                false => CrossEntropyLossConfig::new()
                    .init(&ad)
                    .forward(x.clone(), classes.clone()),
            };
            // A gradient of the loss other than 1, as the joint loss weights it.
            let grads = loss.clone().mul_scalar(0.7).backward();
            let dx = x.grad(&grads).expect("logits gradient");
            let values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32");
            (loss.into_scalar::<f32>(), values(dx.inner()))
        };
        let (ours, burns) = (run(true), run(false));
        let gap = (ours.0 - burns.0).abs();
        assert!(
            gap <= 1e-5 * burns.0.abs().max(1.0),
            "{} vs {}",
            ours.0,
            burns.0
        );
        assert_close(&ours.1, &burns.1, 1e-5, &format!("gradient, {n} items"));
    }
    assert_eq!(
        kernel_launches() - before,
        4,
        "forward and backward, two cases"
    );
}

/// Deterministic values about 0 (no draw from the test binary's shared CPU random stream).
fn wavy(n: usize, phase: f32, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| amplitude * ((i as f32 * 0.731 + phase).sin() + 0.3 * (i as f32 * 2.9).cos()))
        .collect()
}

#[test]
fn the_gpu_adam_update_is_burns_adam_and_adamw_in_one_launch_a_parameter() {
    use burn::optim::{AdamConfig, AdamWConfig, AdamWState, LearningRate, Optimizer};
    use mriloop::model::adam_gpu::{kernel_launches, FusedAdam};
    let _gpu = gpu_alone();
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice);
    let values = |t: &Tensor<2>| t.clone().into_data().try_to_vec::<f32>().expect("f32");
    // Steps of a schedule (the learning rate changes), gradients of mixed sizes and signs.
    let steps: Vec<(LearningRate, Vec<f32>)> = (0..4)
        .map(|k| {
            (
                1e-2 / (k + 1) as f64,
                wavy(6 * 37, k as f32, 10f32.powi(k - 2)),
            )
        })
        .collect();
    let run = |device: &Device, ours: bool, decay: Option<f32>| {
        let mut param =
            Tensor::<2>::from_data(TensorData::new(wavy(6 * 37, 9.0, 1.0), [6, 37]), device);
        let mut state: Option<AdamWState<2>> = None;
        let mut trace = vec![];
        for (lr, grad) in &steps {
            let grad = Tensor::<2>::from_data(TensorData::new(grad.clone(), [6, 37]), device);
            (param, state) = match (ours, decay) {
                (true, None) => FusedAdam::adam().step(*lr, param, grad, state),
                (true, Some(l)) => FusedAdam::adam_w(l).step(*lr, param, grad, state),
                (false, Some(l)) => AdamWConfig::new()
                    .with_weight_decay(l)
                    .build()
                    .step(*lr, param, grad, state),
                (false, None) => {
                    let old = state.map(|s| burn::optim::AdamState::new(s.momentum));
                    let (p, s) = AdamConfig::new().build().step(*lr, param, grad, old);
                    (p, s.map(|s| AdamWState::new(s.momentum)))
                }
            };
            let momentum = &state.as_ref().expect("a state after a step").momentum;
            let moments = [&momentum.moment_1, &momentum.moment_2].map(values);
            trace.push((values(&param), moments, momentum.time));
        }
        trace
    };
    for decay in [None, Some(0.05)] {
        let before = kernel_launches();
        let ours = run(&gpu, true, decay);
        assert_eq!(kernel_launches() - before, steps.len(), "one launch a step");
        let burns = run(&gpu, false, decay);
        assert_eq!(
            kernel_launches() - before,
            steps.len(),
            "burn's took no kernel of ours"
        );
        for (k, (o, b)) in ours.iter().zip(&burns).enumerate() {
            let what = format!("{decay:?}, step {}", k + 1);
            assert_close(&o.0, &b.0, 1e-6, &format!("parameter, {what}"));
            // The moments relative to their own largest (v is ~1e-7 on the first step).
            for (i, name) in ["first moment", "second moment"].iter().enumerate() {
                let largest = b.1[i].iter().fold(0f32, |m, v| m.max(v.abs()));
                let gaps = o.1[i].iter().zip(&b.1[i]).map(|(p, q)| (p - q).abs());
                let worst = gaps.fold(0f32, f32::max);
                assert!(
                    largest > 0.0 && worst <= 1e-5 * largest,
                    "{name}, {what}: {worst} of {largest}"
                );
            }
            assert_eq!(o.2, b.2, "step count, {what}");
        }
        // The parameter moved on every step (a wrong update would not match burn's anyway).
        assert!(ours.windows(2).all(|w| w[0].0 != w[1].0));
        // On the CPU it is burn's optimiser itself: the same bits, no kernel.
        let (cpu_ours, cpu_burns) = (run(&cpu(), true, decay), run(&cpu(), false, decay));
        assert_eq!(kernel_launches() - before, steps.len());
        assert!(
            cpu_ours == cpu_burns,
            "{decay:?}: the CPU takes burn's optimiser"
        );
    }
    // A half-precision parameter on the GPU takes burn's optimiser too (the kernel reads f32).
    let half = |values: Vec<f32>| {
        let t = Tensor::<2>::from_data(TensorData::new(values, [6, 37]), &gpu);
        t.cast(burn::tensor::FloatDType::F16)
    };
    let (param, grad) = (half(wavy(6 * 37, 9.0, 1.0)), half(steps[1].1.clone()));
    let before = kernel_launches();
    let ours = FusedAdam::adam_w(0.05).step(1e-2, param.clone(), grad.clone(), None);
    let burns =
        AdamWConfig::new()
            .with_weight_decay(0.05)
            .build()
            .step(1e-2, param.clone(), grad, None);
    assert_eq!(kernel_launches(), before, "f16 took the kernel");
    let f32_values = |t: Tensor<2>| {
        let t = t.cast(burn::tensor::FloatDType::F32);
        t.into_data().try_to_vec::<f32>().expect("f32")
    };
    assert_eq!(f32_values(ours.0.clone()), f32_values(burns.0));
    assert_ne!(f32_values(ours.0), f32_values(param), "the step moved it");
}

/// Every float parameter's values, in visiting order.
fn parameter_values(model: &mriloop::model::MultiTaskUNet) -> Vec<Vec<f32>> {
    use burn::module::Module;
    struct Values(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let data = param.val().into_data().try_into_vec::<f32>();
            self.0.push(data.expect("f32"));
        }
    }
    let mut values = Values(vec![]);
    model.visit(&mut values);
    values.0
}

/// Training steps on the GPU with mriloop's Adam (`model::adam_gpu`, what `fit`, `train` and
/// `bench train` step with) reach burn's Adam's parameters, one update kernel per parameter and
/// step; a state burn's AdamW saved continues under mriloop's AdamW as under burn's (so a run
/// saved before continues).
#[test]
fn gpu_training_steps_with_the_fused_adam_reach_burns_adams_parameters() {
    use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer};
    use mriloop::model::{adam_gpu, train_step, MultiTaskUNet};
    let _gpu = gpu_alone();
    let gpu = Device::wgpu(burn::prelude::DeviceKind::DefaultDevice).autodiff();
    let cfg = config(2);
    let start = cfg.model.init(&gpu);
    let b = batch(0, &cpu());
    let b = Batch {
        images: b.images.to_device(&gpu),
        masks: b.masks.to_device(&gpu),
        classes: b.classes.to_device(&gpu),
        weights: None,
    };
    let run = |mut model: MultiTaskUNet, mut optim: ModuleOptimizer, steps: usize| {
        let mut scale = None;
        for _ in 0..steps {
            (model, _) = train_step(model, (&mut optim, &mut scale), &b, &cfg);
        }
        (model, optim)
    };
    // Compares the parameters; how many moved (those with a gradient: the convolution biases
    // before a norm have none).
    let compare = |ours: &MultiTaskUNet, burns: &MultiTaskUNet, what: &str| {
        let (ours, burns) = (parameter_values(ours), parameter_values(burns));
        let initial = parameter_values(&start);
        let mut moved = 0;
        for (k, ((o, b), s)) in ours.iter().zip(&burns).zip(&initial).enumerate() {
            assert_close(o, b, 1e-5, &format!("{what}: parameter {k}"));
            assert_eq!(o != s, b != s, "{what}: parameter {k} moved in one only");
            moved += usize::from(o != s);
        }
        moved
    };
    let before = adam_gpu::kernel_launches();
    let (ours, _) = run(start.clone(), adam_gpu::adam(), 2);
    let launches = adam_gpu::kernel_launches() - before;
    let (burns, _) = run(start.clone(), AdamConfig::new().init(), 2);
    let moved = compare(&ours, &burns, "Adam, two steps");
    assert!(moved >= 40, "{moved} parameters moved");
    assert_eq!(launches, 2 * moved, "one launch a parameter and step");
    // AdamW: two steps of burn's, saved; a third by each from the saved state.
    let (model, saved) = run(start.clone(), AdamWConfig::new().init(), 2);
    let bytes = saved.into_bytes().expect("saved state");
    let (burns, _) = run(model.clone(), saved, 1);
    let loaded = adam_gpu::adam_w(1e-4)
        .from_bytes(bytes)
        .expect("burn's state loads");
    let before = adam_gpu::kernel_launches();
    let (ours, _) = run(model, loaded, 1);
    let launches = adam_gpu::kernel_launches() - before;
    assert_eq!(
        launches,
        compare(&ours, &burns, "AdamW, the third step from a saved state")
    );
}

/// `bench train` on a GPU (lavapipe here) also reports the host's time to record a step,
/// within the step's time; the CPU, which runs each operation as it comes, has no such figure.
#[test]
fn bench_train_reports_the_hosts_recording_time_of_a_gpu_step() {
    use mriloop::bench::{train, Backends, TrainBench, TrainShape};
    let _gpu = gpu_alone();
    let tiny = TrainShape {
        name: "tiny",
        base: 4,
        depth: 2,
        patch: 8,
        batch: 2,
    };
    let bench = TrainBench {
        steps: 3,
        software_gpu: true,
        peak_tflops: None,
        precisions: vec![Precision::F32],
        rounds: 1,
        backends: Backends::parse("cpu,wgpu").expect("backends"),
    };
    let (figures, notes) = train(&[tiny], &bench);
    let value = |name: &str| figures.iter().find(|f| f.name == name).map(|f| f.value);
    let steps_per_s = value("train_steps_per_s_wgpu_software_tiny").expect("wgpu steps");
    let recorded_ms = value("train_record_ms_wgpu_software_tiny").expect("recording time");
    assert!(
        recorded_ms > 0.0 && recorded_ms <= 1e3 / steps_per_s * 1.5,
        "{recorded_ms} ms to record, {steps_per_s} steps/s; {notes:?}"
    );
    assert!(value("train_steps_per_s_cpu_tiny").is_some());
    assert!(value("train_record_ms_cpu_tiny").is_none());
}
