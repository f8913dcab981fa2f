//! The promptable network's parts on small grids built here: prompts drawn into guidance
//! channels (ball, box, scribble; clipped at the grid), the robot user's clicks at the centre
//! of the largest error, a promptable fit from simulated clicks (guidance channels, two
//! outputs, validation after robot clicks), and prompted prediction on a local window that
//! changes nothing outside it.

use burn::prelude::*;
use mriloop::model::fit::{fit, FitConfig, FitControl};
use mriloop::model::prompt::{
    box_around, corrective_click, deepest_voxel, refine_start, scribble_through, Guidance, Prompt,
    PromptConfig,
};
use mriloop::model::prompt_infer::{
    evaluate_prompted, interactions_to_reach, predict_prompted, robot_figures, Start,
};
use mriloop::model::prompt_train::{promptable, simulate_corrections};
use mriloop::model::{load_checkpoint, MultiTaskUNetConfig, Sample, TrainingConfig};
use mriloop::volume::{Affine, Volume};

fn count(v: &[f32]) -> usize {
    v.iter().filter(|x| **x > 0.5).count()
}

/// A cube of `edge` voxels at `lo` set in a `dims` grid of flags.
fn cube(mask: &mut [bool], dims: [usize; 3], lo: [usize; 3], edge: usize) {
    for k in lo[2]..lo[2] + edge {
        for j in lo[1]..lo[1] + edge {
            for i in lo[0]..lo[0] + edge {
                mask[i + dims[0] * (j + dims[1] * k)] = true;
            }
        }
    }
}

#[test]
fn prompts_draw_balls_boxes_and_scribbles_into_guidance_clipped_at_the_grid() {
    let dims = [8, 8, 8];
    let mut g = Guidance::empty(dims);
    let point = |idx_vox, include| Prompt::Point { idx_vox, include };
    // A ball of radius 1.5 voxels holds the offsets with d² ∈ {0, 1, 2}: 1 + 6 + 12 voxels.
    g.draw(&point([4, 4, 4], true), [0; 3], 1.5);
    assert_eq!((count(&g.include), count(&g.exclude)), (19, 0));
    // In a corner only the octant inside the grid: (0,0,0), three (1,0,0)s, three (1,1,0)s.
    g.draw(&point([0, 0, 0], false), [0; 3], 1.5);
    assert_eq!(count(&g.exclude), 7);
    // A box on one slice, given on a grid whose voxel [1, 1, 1] is the guidance's first:
    // 4 × 4 voxels on local slice k = 4.
    let mut b = Guidance::empty(dims);
    b.draw(
        &Prompt::Box {
            lo_vox: [2, 3, 5],
            hi_vox: [5, 6, 5],
        },
        [1, 1, 1],
        1.5,
    );
    assert_eq!(count(&b.include), 16);
    assert_eq!(b.include[1 + 8 * (2 + 8 * 4)], 1.0);
    // A scribble's voxels, the one outside the grid dropped.
    b.draw(
        &Prompt::Scribble {
            idx_vox: vec![[1, 1, 1], [2, 1, 1], [0, 0, 0]],
            include: false,
        },
        [1, 1, 1],
        1.5,
    );
    assert_eq!(count(&b.exclude), 2);
    let mut prior = vec![false; 512];
    prior[7] = true;
    b.set_prior(&prior);
    let [inc, exc, pri] = b.into_channels();
    assert_eq!((count(&inc), count(&exc), count(&pri)), (16, 2, 1));
}

#[test]
fn the_robot_clicks_at_the_centre_of_the_largest_error() {
    let dims = [16, 16, 16];
    let n = 16 * 16 * 16;
    let mut target = vec![false; n];
    cube(&mut target, dims, [2, 2, 2], 5);
    cube(&mut target, dims, [10, 10, 10], 3);
    let mut predicted = vec![false; n];
    cube(&mut predicted, dims, [2, 2, 2], 5);
    // Missed: the small cube; its centre is the voxel farthest from its outside.
    assert_eq!(
        corrective_click(&target, &predicted, dims),
        Some(Prompt::Point {
            idx_vox: [11, 11, 11],
            include: true
        })
    );
    // A larger wrongly added block wins, and is excluded at its centre.
    cube(&mut predicted, dims, [9, 0, 0], 7);
    assert_eq!(
        corrective_click(&target, &predicted, dims),
        Some(Prompt::Point {
            idx_vox: [12, 3, 3],
            include: false
        })
    );
    assert_eq!(corrective_click(&target, &target, dims), None);
    assert_eq!(deepest_voxel(&[5], dims), Some([5, 0, 0]));
    // The first box: on the axial slice through the largest region's centre, its rectangle.
    assert_eq!(
        box_around(&target, dims, 2),
        Some(Prompt::Box {
            lo_vox: [2, 2, 4],
            hi_vox: [6, 6, 4]
        })
    );
    // A stroke across the largest region along x: its five voxels through the centre.
    let Some(Prompt::Scribble { idx_vox, include }) = scribble_through(&target, dims, 0) else {
        panic!("no scribble");
    };
    assert!(include);
    let mut xs: Vec<usize> = idx_vox.iter().map(|v| v[0]).collect();
    xs.sort_unstable();
    assert_eq!(xs, vec![2, 3, 4, 5, 6]);
    assert!(idx_vox.iter().all(|v| v[1] == 4 && v[2] == 4));
    assert_eq!(interactions_to_reach(&[0.5, 0.92, 0.95], 0.9, 3), 2);
    assert_eq!(interactions_to_reach(&[0.5, 0.6], 0.9, 10), 10);
}

#[test]
fn a_refining_start_is_an_imperfect_mask_of_every_object_with_a_click_on_its_error() {
    use rand::SeedableRng;
    let dims = [16, 16, 16];
    let n = 16 * 16 * 16;
    let mut truth = vec![false; n];
    cube(&mut truth, dims, [2, 2, 2], 6);
    cube(&mut truth, dims, [10, 10, 10], 4);
    let dice = |a: &[bool], b: &[bool]| {
        let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
        let sum = a.iter().filter(|x| **x).count() + b.iter().filter(|x| **x).count();
        2.0 * both as f64 / sum as f64
    };
    let (mut wrong, mut both, mut dices) = (0, 0, Vec::new());
    for seed in 0..40 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (prompts, prior) = refine_start(&truth, &vec![false; n], dims, &mut rng);
        let again = refine_start(
            &truth,
            &vec![false; n],
            dims,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        );
        assert_eq!(
            (prompts.clone(), prior.clone()),
            again,
            "deterministic per seed"
        );
        // The stand-in holds the second object too, as an automatic mask of the label would
        // (unless its part missed was that object).
        let small =
            (10..14).flat_map(|k| (10..14).flat_map(move |j| (10..14).map(move |i| (i, j, k))));
        if small
            .into_iter()
            .any(|(i, j, k)| prior[i + 16 * (j + 16 * k)])
        {
            both += 1;
        }
        dices.push(dice(&truth, &prior));
        // The click is on an error, on the side that fixes it.
        if let Some(Prompt::Point { idx_vox, include }) = prompts.first() {
            let at = idx_vox[0] + 16 * (idx_vox[1] + 16 * idx_vox[2]);
            assert_eq!((truth[at], prior[at]), (*include, !*include), "seed {seed}");
            wrong += 1;
        }
    }
    // Imperfect, of several kinds: most are wrong somewhere, none is far off.
    assert!(wrong >= 35, "{wrong} of 40 starts had an error to click");
    assert!(both >= 30, "{both} of 40 stand-ins held the second object");
    let (lo, hi) = dices
        .iter()
        .fold((1.0f64, 0.0f64), |(l, h), d| (l.min(*d), h.max(*d)));
    assert!(
        lo > 0.3 && lo < 0.8 && hi > 0.9,
        "Dice of the stand-ins {lo:.2}..{hi:.2}"
    );
}

#[test]
fn a_refining_start_sometimes_calls_another_labels_object_the_target() {
    use rand::SeedableRng;
    let dims = [16, 16, 16];
    let n = 16 * 16 * 16;
    let mut truth = vec![false; n];
    cube(&mut truth, dims, [2, 2, 2], 5);
    // Another label's two objects: a neighbour and one across the patch.
    let mut others = vec![false; n];
    cube(&mut others, dims, [8, 2, 2], 3);
    cube(&mut others, dims, [11, 11, 11], 4);
    // Whether `prior` holds every voxel of the cube of `size` at `at`.
    let holds = |prior: &[bool], at: [usize; 3], size: usize| {
        (0..size.pow(3)).all(|v| {
            let [i, j, k] = [v % size, v / size % size, v / (size * size)];
            prior[at[0] + i + 16 * (at[1] + j + 16 * (at[2] + k))]
        })
    };
    let (mut neighbour, mut far, mut whole) = (0, 0, true);
    for seed in 0..60 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (_, prior) = refine_start(&truth, &others, dims, &mut rng);
        // A confused object is taken whole (not a ball of it); a ball-shaped false region
        // may touch a part of one.
        let [a, b] = [holds(&prior, [8, 2, 2], 3), holds(&prior, [11, 11, 11], 4)];
        neighbour += usize::from(a);
        far += usize::from(b);
        whole &= !(a && b);
    }
    // About half of the starts confuse one of the two objects (each about half the time by
    // the voxel chosen), never both at once.
    assert!(
        (5..=25).contains(&neighbour),
        "{neighbour} of 60 held the neighbour"
    );
    assert!((8..=30).contains(&far), "{far} of 60 held the far object");
    assert!(whole, "one confused object per start");
}

/// A 24³ sample: a bright cube (label 1) and a dark one (label 2) on a textured background.
fn sample(id: &str, shift: usize) -> Sample {
    let dims = [24usize; 3];
    let n = 24 * 24 * 24;
    let mut one = vec![false; n];
    let mut two = vec![false; n];
    cube(&mut one, dims, [4 + shift, 5, 6], 6);
    cube(&mut two, dims, [14, 12 + shift, 10], 5);
    let image: Vec<f32> = (0..n)
        .map(|i| {
            let base = 1.0 + 0.2 * ((i * 7919) % 13) as f32 / 13.0;
            base + if one[i] {
                2.0
            } else if two[i] {
                -0.8
            } else {
                0.0
            }
        })
        .collect();
    let mask: Vec<u8> = (0..n)
        .map(|i| u8::from(one[i]) + 2 * u8::from(two[i]))
        .collect();
    let affine = Affine::from_spacing([1.0; 3]);
    let img = Volume::new([24, 24, 24, 1], affine, image).unwrap();
    let m = Volume::new([24, 24, 24, 1], affine, mask).unwrap();
    Sample::new(id, &[img], &m, 0).unwrap()
}

/// A promptable configuration of a small network on 16³ patches.
fn small_promptable() -> FitConfig {
    let net = MultiTaskUNetConfig::new(1, 3, 2)
        .with_base_channels(4)
        .with_depth(2);
    let training = TrainingConfig::new(net)
        .with_window([16, 16, 16])
        .with_label_names(vec!["background".into(), "bright".into(), "dark".into()]);
    let config = FitConfig::new(training)
        .with_epochs(1)
        .with_steps_per_epoch(3)
        .with_patch([16, 16, 16]);
    promptable(config, PromptConfig::default())
}

#[test]
fn a_promptable_fit_learns_from_simulated_clicks_and_is_measured_by_the_robot() {
    let config = small_promptable();
    let t = &config.training;
    assert_eq!((t.model.in_channels, t.model.num_labels), (1 + 3, 2));
    assert_eq!(config.class_every, 0);
    let device = Device::flex();
    let out = tempfile::tempdir().unwrap();
    let (tx, _rx) = std::sync::mpsc::channel();
    let train = vec![sample("a", 0), sample("b", 2)];
    let val = vec![sample("v", 1)];
    let result = fit(
        &config,
        train,
        &val,
        &device,
        out.path(),
        &tx,
        &FitControl::default(),
    )
    .unwrap();
    // Validation: per label, Dice after the robot's clicks.
    let dice = &result.epochs[0].validation.dice;
    assert_eq!(dice.len(), 2);
    assert!(dice
        .iter()
        .all(|d| d.is_some_and(|d| (0.0..=1.0).contains(&d))));
    let (cfg, net) = load_checkpoint(&result.best, &device).unwrap();
    assert!(cfg.prompt.is_some());
    assert_eq!(cfg.model.in_channels, 4);
    // Robot sessions: both labels, from a point and from a box, three interactions each.
    let records = evaluate_prompted(&net, &val, &cfg, 3, None, &device, None, |_, _| {}).unwrap();
    assert_eq!(records.len(), 2 * 2);
    for r in &records {
        assert_eq!(r.dice.len(), 3);
        assert!(r.dice.iter().all(|d| (0.0..=1.0).contains(d)));
        assert!(r.window_vox.iter().all(|w| *w >= 16 * 16 * 16 || *w == 0));
    }
    let (after, noc) = robot_figures(&records, 1, Start::Box, &[1, 3]).unwrap();
    assert_eq!(after.len(), 2);
    assert!((1.0..=3.0).contains(&noc));
}

#[test]
fn a_prompt_changes_the_mask_only_inside_its_window_and_corrections_feed_back() {
    let config = small_promptable().training;
    let device = Device::flex();
    let net = config.model.init(&device);
    // A 40³ case: the window (16³, grown to at most 32³) cannot cover it.
    let dims = [40usize; 3];
    let n = 40 * 40 * 40;
    let channels = vec![(0..n).map(|i| (i % 11) as f32 / 11.0).collect::<Vec<f32>>()];
    let prompts = [Prompt::Point {
        idx_vox: [20, 20, 20],
        include: true,
    }];
    let current = vec![true; n];
    let w = predict_prompted(&net, &channels, dims, &prompts, &current, &config, &device).unwrap();
    assert!(w.dims.iter().all(|d| (16..=32).contains(d)), "{:?}", w.dims);
    assert!((0..3).all(|a| w.origin_vox[a] <= 20 && 20 < w.origin_vox[a] + w.dims[a]));
    let mut merged = current.clone();
    w.merge_into(&mut merged, dims);
    for (idx, m) in merged.iter().enumerate() {
        let v = [idx % 40, (idx / 40) % 40, idx / 1600];
        let inside = (0..3).all(|a| v[a] >= w.origin_vox[a] && v[a] < w.origin_vox[a] + w.dims[a]);
        if !inside {
            assert!(*m, "voxel {v:?} outside the window changed");
        }
    }
    let outside = [Prompt::Point {
        idx_vox: [40, 0, 0],
        include: true,
    }];
    assert!(predict_prompted(&net, &channels, dims, &outside, &current, &config, &device).is_err());
    // One simulated round: the prior channel becomes the prediction, and unless the network
    // was right everywhere, a click lands in include or exclude.
    let p = 16 * 16 * 16;
    let mut images = vec![0.0f32; 4 * p];
    images[..p]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i % 5) as f32);
    let mut masks = vec![0i32; p];
    masks[..p / 2].iter_mut().for_each(|m| *m = 1);
    simulate_corrections(&net, &mut images, &masks, 1, 4, [16; 3], 1, 1.5, &device);
    let prior: Vec<bool> = images[3 * p..].iter().map(|v| *v > 0.5).collect();
    let truth: Vec<bool> = masks.iter().map(|m| *m == 1).collect();
    let clicks = count(&images[p..3 * p]);
    assert!(images[3 * p..].iter().all(|v| *v == 0.0 || *v == 1.0));
    assert!(clicks > 0 || prior == truth);
}

#[test]
fn a_grown_window_only_extends_the_object_found_near_the_prompt() {
    use mriloop::model::prompt_infer::{only_grow_the_core, PromptedWindow};
    // An 8³ window on an 8³ case; the prompt's first window was its lower half in x.
    let dims = [8usize; 3];
    let at = |i: usize, j: usize, k: usize| i + 8 * (j + 8 * k);
    let mut target = vec![false; 512];
    // An object crossing from the first window into the grown part, and a separate blob there.
    for i in 2..7 {
        target[at(i, 3, 3)] = true;
    }
    target[at(7, 7, 7)] = true;
    // The case's current mask holds a voxel in the grown part the answer calls background.
    let mut current = vec![false; 512];
    current[at(6, 0, 0)] = true;
    let mut window = PromptedWindow {
        origin_vox: [0; 3],
        dims,
        target,
    };
    only_grow_the_core(&mut window, ([0; 3], [4, 8, 8]), &current, dims);
    let t = &window.target;
    assert!(
        (2..7).all(|i| t[at(i, 3, 3)]),
        "the object grows out of the core"
    );
    assert!(!t[at(7, 7, 7)], "no new object far from the prompt");
    assert!(t[at(6, 0, 0)], "the current mask is not erased there");
    assert_eq!(t.iter().filter(|v| **v).count(), 5 + 1);
}

#[test]
fn an_answer_keeps_only_prompted_objects_and_the_clicked_voxels_follow_the_clicks() {
    use mriloop::model::prompt_infer::follow_prompts;
    let size = [8usize; 3];
    let at = |i: usize, j: usize, k: usize| i + 8 * (j + 8 * k);
    let mut target = vec![false; 512];
    // The prompted object, a blob away from every prompt, and a blob the current mask holds.
    for i in 1..4 {
        target[at(i, 1, 1)] = true;
    }
    target[at(6, 6, 6)] = true;
    target[at(6, 1, 6)] = true;
    let mut included = vec![0.0f32; 512];
    included[at(2, 1, 1)] = 1.0;
    let mut prior = vec![false; 512];
    prior[at(6, 1, 6)] = true;
    // The window sits at (10, 0, 0) of the case's grid: prompts are in case voxels.
    let origin = [10, 0, 0];
    let prompts = [
        Prompt::Point {
            idx_vox: [12, 1, 1],
            include: true,
        },
        // An exclude click the network ignored, and one outside the window.
        Prompt::Point {
            idx_vox: [13, 1, 1],
            include: false,
        },
        Prompt::Point {
            idx_vox: [30, 1, 1],
            include: false,
        },
        Prompt::Scribble {
            idx_vox: vec![[10, 5, 5], [11, 5, 5]],
            include: true,
        },
    ];
    follow_prompts(&mut target, (origin, size), &included, &prior, &prompts);
    assert!(
        target[at(1, 1, 1)] && target[at(2, 1, 1)],
        "the prompted object stays"
    );
    assert!(!target[at(3, 1, 1)], "the excluded voxel is left out");
    assert!(!target[at(6, 6, 6)], "no object away from every prompt");
    assert!(target[at(6, 1, 6)], "the current mask's object stays");
    assert!(
        target[at(0, 5, 5)] && target[at(1, 5, 5)],
        "painted voxels are in"
    );
    assert_eq!(target.iter().filter(|t| **t).count(), 5);
}

#[test]
fn world_prompts_land_on_any_grid_and_back() {
    use mriloop::model::prompt::{prompt_on_grid, prompt_to_mm};
    use mriloop::project::prompt_log::PromptMm;
    // A 2 mm grid shifted by 10 mm.
    let affine = Affine::from_rows3([
        [2.0, 0.0, 0.0, 10.0],
        [0.0, 2.0, 0.0, 10.0],
        [0.0, 0.0, 2.0, 10.0],
    ]);
    let dims = [8, 8, 8];
    let point = PromptMm::Point {
        pos_mm: [14.2, 15.9, 10.0],
        include: false,
    };
    assert_eq!(
        prompt_on_grid(&point, &affine, dims),
        Some(Prompt::Point {
            idx_vox: [2, 3, 0],
            include: false
        })
    );
    // Outside the grid: no prompt.
    let far = PromptMm::Point {
        pos_mm: [0.0, 0.0, 0.0],
        include: true,
    };
    assert_eq!(prompt_on_grid(&far, &affine, dims), None);
    // A box reaching past the grid is clipped to it, corners in any order.
    let b = PromptMm::Box {
        a_mm: [30.0, 12.0, 14.0],
        b_mm: [14.0, 100.0, 14.0],
    };
    assert_eq!(
        prompt_on_grid(&b, &affine, dims),
        Some(Prompt::Box {
            lo_vox: [2, 1, 2],
            hi_vox: [7, 7, 2]
        })
    );
    // A scribble of two far-apart points is filled in between (half-voxel steps).
    let s = PromptMm::Scribble {
        path_mm: vec![[10.0, 10.0, 12.0], [20.0, 10.0, 12.0]],
        include: true,
    };
    let Some(Prompt::Scribble { idx_vox, include }) = prompt_on_grid(&s, &affine, dims) else {
        panic!("a scribble");
    };
    assert!(include);
    assert_eq!(idx_vox, (0..=5).map(|i| [i, 0, 1]).collect::<Vec<_>>());
    // And back: voxel centres in mm, which land on the same voxels.
    let p = Prompt::Box {
        lo_vox: [1, 2, 3],
        hi_vox: [4, 5, 3],
    };
    let mm = prompt_to_mm(&p, &affine);
    assert_eq!(
        mm,
        PromptMm::Box {
            a_mm: [12.0, 14.0, 16.0],
            b_mm: [18.0, 20.0, 16.0]
        }
    );
    assert_eq!(prompt_on_grid(&mm, &affine, dims), Some(p));
}

#[test]
fn a_recorded_prompt_replays_on_the_training_grid_with_the_users_fixes_marked() {
    use mriloop::model::data::PatchSampler;
    use mriloop::model::prompt_infer::{interaction_record, PromptedWindow};
    use mriloop::model::prompt_train::{replay_on_grid, replay_patch};
    use mriloop::project::prompt_log::PromptMm;
    let s = sample("a", 0);
    // A user's click in cube 1 (label 1: voxels 4..10, 5..11, 6..12); the answer, on an 8³
    // window at [3, 4, 5], misses the cube's last x layer and adds a voxel off it.
    let click = PromptMm::Point {
        pos_mm: [7.0, 8.0, 9.0],
        include: true,
    };
    let (origin, wd) = ([3usize, 4, 5], [8usize, 8, 8]);
    let target: Vec<bool> = (0..512)
        .map(|w| {
            let v = [
                w % 8 + origin[0],
                (w / 8) % 8 + origin[1],
                w / 64 + origin[2],
            ];
            let cube = (4..9).contains(&v[0]) && (5..11).contains(&v[1]) && (6..12).contains(&v[2]);
            cube || v == [3, 4, 5]
        })
        .collect();
    let window = PromptedWindow {
        origin_vox: origin,
        dims: wd,
        target,
    };
    let n = 24 * 24 * 24;
    let mut before = vec![false; n];
    before[4 + 24 * (5 + 24 * 6)] = true;
    let record = interaction_record("m", 1, vec![click], (&s.affine, s.dims), &before, &window);
    assert_eq!(record.problem(), None);
    let replay = replay_on_grid(&record, &s).expect("the record meets the grid");
    assert_eq!(
        replay.prompts,
        vec![Prompt::Point {
            idx_vox: [7, 8, 9],
            include: true
        }]
    );
    assert_eq!(replay.prior, vec![4 + 24 * (5 + 24 * 6)]);
    // Fixed: the cube's x = 9 layer (6 × 6 voxels) and the stray voxel.
    assert_eq!(replay.fixed.len(), 36 + 1);
    assert!(replay.fixed.contains(&(3 + 24 * (4 + 24 * 5))));
    // Its patch: the click drawn where it is, the fixed voxels marked (weight bit 256).
    let mut sampler =
        PatchSampler::new(1, [16, 16, 16], mriloop::model::data::AugmentConfig::new());
    let (channels, labels) =
        replay_patch(&mut sampler, &s, &replay, &PromptConfig::default()).expect("a patch");
    assert_eq!(channels.len(), 1 + 3);
    // Centred on [7, 8, 9]: the patch starts at [0, 0, 1].
    let local = |v: [usize; 3]| v[0] + 16 * (v[1] + 16 * (v[2] - 1));
    assert_eq!(channels[1][local([7, 8, 9])], 1.0, "include channel");
    assert_eq!(channels[3][local([4, 5, 6])], 1.0, "the starting object");
    assert_eq!(labels[local([9, 6, 7])], 1 | 256, "a fixed target voxel");
    assert_eq!(labels[local([3, 4, 5])], 256, "a fixed background voxel");
    assert_eq!(labels[local([5, 6, 7])], 1, "a target voxel the answer had");
    let fixed = labels.iter().filter(|l| **l & 256 != 0).count();
    assert_eq!(fixed, 37);
}

#[test]
fn an_automatic_model_is_carried_into_a_promptable_one_that_starts_where_it_was() {
    use burn::tensor::{Distribution, Tensor};
    use mriloop::model::fit::initial_model;
    use mriloop::model::save_checkpoint;
    let device = Device::flex();
    device.seed(3);
    // An automatic network of one sequence and three labels, saved as a checkpoint.
    let automatic = TrainingConfig::new(
        MultiTaskUNetConfig::new(1, 3, 2)
            .with_base_channels(8)
            .with_depth(2),
    )
    .with_window([16, 16, 16]);
    let net = automatic.model.init(&device);
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(dir.path(), &automatic, &net).unwrap();
    // A promptable run fine-tuning it: three more inputs, two labels.
    let config = promptable(
        FitConfig::new(automatic.clone()).with_resume_from(Some(dir.path().display().to_string())),
        PromptConfig::default(),
    );
    assert_eq!(config.training.model.in_channels, 4);
    let carried = initial_model(&config, &device).unwrap().valid();
    // With the new inputs' weights at zero, the encoder computes what it did: the class
    // logits agree whatever the guidance holds; the segmentation head is new (two labels).
    let x = Tensor::<5>::random([1, 1, 16, 16, 16], Distribution::Default, &device);
    let g = Tensor::<5>::random([1, 3, 16, 16, 16], Distribution::Default, &device);
    let (_, before) = net.forward(x.clone());
    let (seg, after) = carried.forward(Tensor::cat(vec![x, g], 1));
    assert_eq!(seg.dims(), [1, 2, 16, 16, 16]);
    let (b, a) = (
        before.into_data().try_to_vec::<f32>().unwrap(),
        after.into_data().try_to_vec::<f32>().unwrap(),
    );
    for (p, q) in b.iter().zip(&a) {
        assert!((p - q).abs() < 1e-4, "{b:?} vs {a:?}");
    }
    // A network of another width is refused, naming the checkpoint.
    let mut wider = config.clone();
    wider.training.model.base_channels = 16;
    let e = initial_model(&wider, &device).unwrap_err().to_string();
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}

#[test]
fn an_exclude_prompt_only_takes_voxels_away() {
    use mriloop::model::prompt_infer::follow_prompts;
    let size = [8usize; 3];
    let at = |i: usize, j: usize, k: usize| i + 8 * (j + 8 * k);
    // The current mask: a bar of 5 voxels; the network answers the exclude click with the bar
    // moved one voxel along and a stub of two voxels standing on it.
    let mut prior = vec![false; 512];
    (1..6).for_each(|i| prior[at(i, 2, 2)] = true);
    let mut target = vec![false; 512];
    (2..7).for_each(|i| target[at(i, 2, 2)] = true);
    target[at(2, 3, 2)] = true;
    target[at(2, 4, 2)] = true;
    let included = vec![0.0f32; 512];
    let exclude = Prompt::Point {
        idx_vox: [5, 2, 2],
        include: false,
    };
    let mut answer = target.clone();
    follow_prompts(&mut answer, ([0; 3], size), &included, &prior, &[exclude]);
    let kept: Vec<usize> = (0..512).filter(|i| answer[*i]).collect();
    assert_eq!(kept, vec![at(2, 2, 2), at(3, 2, 2), at(4, 2, 2)]);
    // After an include prompt the same answer may grow.
    let include = Prompt::Point {
        idx_vox: [3, 2, 2],
        include: true,
    };
    let mut answer = target.clone();
    follow_prompts(&mut answer, ([0; 3], size), &included, &prior, &[include]);
    assert_eq!(answer.iter().filter(|t| **t).count(), 7);
}

#[test]
fn an_exclude_click_on_an_objects_edge_trims_it_and_one_inside_takes_it_away() {
    use mriloop::model::prompt_infer::follow_prompts;
    let size = [9usize; 3];
    let at = |i: usize, j: usize, k: usize| i + 9 * (j + 9 * k);
    let mut prior = vec![false; 729];
    cube(&mut prior, size, [2, 2, 2], 5);
    let included = vec![0.0f32; 729];
    let exclude_at = |v: [usize; 3]| Prompt::Point {
        idx_vox: v,
        include: false,
    };
    // The network erases the whole object after a click on its face: only that voxel goes.
    let mut answer = vec![false; 729];
    let edge = exclude_at([2, 4, 4]);
    follow_prompts(
        &mut answer,
        ([0; 3], size),
        &included,
        &prior,
        std::slice::from_ref(&edge),
    );
    let mut expected = prior.clone();
    expected[at(2, 4, 4)] = false;
    assert_eq!(answer, expected);
    // A smaller trim on the edge is the network's to make.
    let mut answer = prior.clone();
    (2..7).for_each(|j| answer[at(2, j, 4)] = false);
    let trimmed = answer.clone();
    follow_prompts(&mut answer, ([0; 3], size), &included, &prior, &[edge]);
    assert_eq!(answer, trimmed);
    // A click inside the object takes all of it away when the network says so.
    let mut answer = vec![false; 729];
    follow_prompts(
        &mut answer,
        ([0; 3], size),
        &included,
        &prior,
        &[exclude_at([4, 4, 4])],
    );
    assert!(answer.iter().all(|t| !t));
}

#[test]
fn an_exclude_click_on_a_false_speck_erases_no_object_beside_it() {
    use mriloop::model::prompt_infer::follow_prompts;
    let size = [12usize; 3];
    let at = |i: usize, j: usize, k: usize| i + 12 * (j + 12 * k);
    let mut prior = vec![false; 1728];
    cube(&mut prior, size, [2, 2, 2], 4);
    let speck = [9, 9, 9];
    prior[at(9, 9, 9)] = true;
    prior[at(9, 9, 10)] = true;
    let click = [Prompt::Point {
        idx_vox: speck,
        include: false,
    }];
    let included = vec![0.0f32; 1728];
    // The network answers the click on the speck by erasing everything: the object stays.
    let mut answer = vec![false; 1728];
    follow_prompts(&mut answer, ([0; 3], size), &included, &prior, &click);
    let mut expected = prior.clone();
    expected[at(9, 9, 9)] = false;
    expected[at(9, 9, 10)] = false;
    assert_eq!(answer, expected);
    // Trimming the object's border by less than half of it is still the network's to make.
    let mut answer = prior.clone();
    answer[at(9, 9, 9)] = false;
    answer[at(9, 9, 10)] = false;
    (2..6).for_each(|j| answer[at(2, j, 2)] = false);
    let trimmed = answer.clone();
    follow_prompts(&mut answer, ([0; 3], size), &included, &prior, &click);
    assert_eq!(answer, trimmed);
}
