//! Mask editing tools and undo on small synthetic volumes, with exact expected voxel counts.

use glam::DVec3;
use mriloop::edit::tools::{
    accept_prediction, brush_dab, flood_fill, interpolate_slices, morphology, polygon_fill,
    replace_label, Brush, BrushShape, BrushSpace, EditPlane, ImageRef, Morphology, PaintRules,
};
use mriloop::edit::{Edit, MaskDelta, UndoStack, VoxelBox, MIN_UNDO_STEPS};
use mriloop::volume::{Affine, Volume};
use rand::{RngExt, SeedableRng};

fn mask(dims: [usize; 3], spacing: [f64; 3]) -> Volume<u8> {
    Volume::filled(
        [dims[0], dims[1], dims[2], 1],
        Affine::from_spacing(spacing),
        0u8,
    )
    .unwrap()
}

fn count(m: &Volume<u8>, label: u8) -> usize {
    m.data().iter().filter(|v| **v == label).count()
}

fn axial(origin_mm: DVec3, thickness_mm: f64) -> EditPlane {
    EditPlane {
        origin_mm,
        right: DVec3::NEG_X,
        up: DVec3::Y,
        thickness_mm,
    }
}

fn ball(radius_mm: f64, value: u8) -> Brush {
    Brush {
        shape: BrushShape::Round,
        radius_mm,
        space: BrushSpace::Volume {
            axes: [DVec3::X, DVec3::Y, DVec3::Z],
        },
        value,
    }
}

fn set(m: &mut Volume<u8>, v: [usize; 3], value: u8) {
    let at = m.linear_index(v[0], v[1], v[2], 0);
    m.data_mut()[at] = value;
}

#[test]
fn a_3d_brush_sets_exactly_the_voxels_within_its_radius() {
    let mut m = mask([20, 20, 20], [1.0; 3]);
    let rules = PaintRules::default();
    let d = brush_dab(&mut m, &ball(2.0, 1), DVec3::splat(10.0), &rules, None).unwrap();
    // Lattice points with x² + y² + z² ≤ 4: 1 + 6 + 12 + 8 + 6 = 33.
    assert_eq!(count(&m, 1), 33);
    assert_eq!(
        d.region.size(),
        [5, 5, 5],
        "the delta covers only the ball's box"
    );
    let mut cube = ball(1.0, 2);
    cube.shape = BrushShape::Square;
    brush_dab(&mut m, &cube, DVec3::new(3.0, 3.0, 3.0), &rules, None).unwrap();
    assert_eq!(count(&m, 2), 27);
    // Anisotropic 0.5 × 0.5 × 2 mm: radius 2 mm reaches 4 voxels in-plane, 1 slice up/down only
    // at the centre: 49 (i² + j² ≤ 16) + 1 + 1.
    let mut a = mask([20, 20, 8], [0.5, 0.5, 2.0]);
    brush_dab(
        &mut a,
        &ball(2.0, 1),
        DVec3::new(5.0, 5.0, 8.0),
        &rules,
        None,
    )
    .unwrap();
    assert_eq!(count(&a, 1), 51);
}

#[test]
fn a_2d_brush_stays_in_its_slice_and_the_eraser_clears() {
    let mut m = mask([20, 20, 20], [1.0; 3]);
    let rules = PaintRules::default();
    let centre = DVec3::splat(10.0);
    let brush = Brush {
        shape: BrushShape::Round,
        radius_mm: 2.0,
        space: BrushSpace::Plane(axial(centre, 1.0)),
        value: 3,
    };
    brush_dab(&mut m, &brush, centre, &rules, None).unwrap();
    assert_eq!(count(&m, 3), 13, "i² + j² ≤ 4 in one slice");
    assert!(m
        .data()
        .iter()
        .enumerate()
        .all(|(n, v)| *v == 0 || n / 400 == 10));
    let eraser = Brush {
        radius_mm: 1.0,
        value: 0,
        ..brush
    };
    brush_dab(&mut m, &eraser, centre, &rules, None).unwrap();
    assert_eq!(count(&m, 3), 13 - 5);
    assert!(
        brush_dab(&mut m, &eraser, centre, &rules, None).is_none(),
        "nothing left to erase there"
    );
}

#[test]
fn paint_over_rules_limit_the_brush() {
    let mut m = mask([20, 20, 20], [1.0; 3]);
    for i in 0..20 {
        for j in 0..20 {
            for k in 0..10 {
                set(&mut m, [i, j, k], 4);
            }
        }
    }
    // Only over label 4: the half of the ball in k < 10.
    let rules = PaintRules {
        only_over: Some(4),
        ..Default::default()
    };
    brush_dab(
        &mut m,
        &ball(2.0, 1),
        DVec3::new(10.0, 10.0, 10.0),
        &rules,
        None,
    )
    .unwrap();
    // The ball's points with z < 0: 9 at z = -1 (x² + y² ≤ 3) and 1 at z = -2.
    assert_eq!(count(&m, 1), 10);
    // Locked label 4: nothing of it changes.
    let mut locked = PaintRules::default();
    locked.locked[4] = true;
    let before = m.clone();
    assert!(brush_dab(
        &mut m,
        &ball(1.0, 2),
        DVec3::new(5.0, 5.0, 5.0),
        &locked,
        None
    )
    .is_none());
    assert_eq!(m, before);
    // Intensity range: the image is the voxel's i index; paint only where 9 ≤ i ≤ 10.
    let image = Volume::new(
        [20, 20, 20, 1],
        *m.affine(),
        (0..8000).map(|n| (n % 20) as f32).collect(),
    )
    .unwrap();
    let mut m2 = mask([20, 20, 20], [1.0; 3]);
    let rules = PaintRules {
        intensity: Some((9.0, 10.0)),
        ..Default::default()
    };
    let im = ImageRef::new(&image, m2.affine());
    brush_dab(&mut m2, &ball(2.0, 1), DVec3::splat(10.0), &rules, Some(im)).unwrap();
    // Points of the radius-2 ball with x ∈ {-1, 0}: x=0 has 13, x=-1 has 9.
    assert_eq!(count(&m2, 1), 22);
}

#[test]
fn flood_fill_stops_at_the_tolerance_boundary() {
    let dims = [30, 10, 6];
    let mut m = mask(dims, [1.0; 3]);
    // Image value = i: a ramp along x.
    let image = Volume::new(
        [30, 10, 6, 1],
        *m.affine(),
        (0..1800).map(|n| (n % 30) as f32).collect(),
    )
    .unwrap();
    let im = ImageRef::new(&image, m.affine());
    let rules = PaintRules::default();
    flood_fill(&mut m, im, [10, 5, 3], 3.0, None, 1, &rules).unwrap();
    assert_eq!(count(&m, 1), 7 * 10 * 6, "i in 7..=13, every j and k");
    assert_eq!(m.get([6, 5, 3]), Some(0));
    assert_eq!(m.get([14, 5, 3]), Some(0));
    let mut m2 = mask(dims, [1.0; 3]);
    let plane = axial(DVec3::new(10.0, 5.0, 3.0), 1.0);
    flood_fill(&mut m2, im, [10, 5, 3], 3.0, Some(&plane), 2, &rules).unwrap();
    assert_eq!(count(&m2, 2), 7 * 10, "2D: only slice k = 3");
}

#[test]
fn polygon_fill_fills_the_centres_inside() {
    let mut m = mask([20, 20, 20], [1.0; 3]);
    let z = 7.0;
    let square = [
        DVec3::new(2.5, 2.5, z),
        DVec3::new(6.5, 2.5, z),
        DVec3::new(6.5, 5.5, z),
        DVec3::new(2.5, 5.5, z),
    ];
    polygon_fill(
        &mut m,
        &axial(DVec3::new(0.0, 0.0, z), 1.0),
        &square,
        1,
        &PaintRules::default(),
        None,
    )
    .unwrap();
    assert_eq!(count(&m, 1), 4 * 3, "i ∈ 3..=6, j ∈ 3..=5, one slice");
    assert_eq!(m.get([3, 3, 7]), Some(1));
    assert_eq!(m.get([3, 3, 6]), Some(0));
}

#[test]
fn interpolation_fills_the_slices_between_annotated_ones() {
    let mut m = mask([24, 24, 30], [1.0; 3]);
    let disk = |i: usize, j: usize| {
        let (x, y) = (i as f64 - 12.0, j as f64 - 12.0);
        x * x + y * y <= 25.0
    };
    for k in [10, 20] {
        for j in 0..24 {
            for i in 0..24 {
                if disk(i, j) {
                    set(&mut m, [i, j, k], 2);
                }
            }
        }
    }
    let per_slice = count(&m, 2) / 2;
    interpolate_slices(&mut m, 2, 2, &PaintRules::default()).unwrap();
    for k in 0..30 {
        let n = (0..576).filter(|n| m.data()[k * 576 + n] == 2).count();
        let expect = if (10..=20).contains(&k) { per_slice } else { 0 };
        assert_eq!(n, expect, "slice {k}");
    }
}

#[test]
fn morphology_dilate_erode_fill_holes_and_components() {
    let rules = PaintRules::default();
    let mut m = mask([12, 12, 12], [1.0; 3]);
    set(&mut m, [5, 5, 5], 1);
    morphology(&mut m, 1, Morphology::Dilate, &rules).unwrap();
    assert_eq!(count(&m, 1), 7);
    morphology(&mut m, 1, Morphology::Erode, &rules).unwrap();
    assert_eq!(count(&m, 1), 1);
    // A hollow 5³ cube (3³ hole) fills to 125.
    let mut h = mask([12, 12, 12], [1.0; 3]);
    let shell = VoxelBox {
        min: [2, 2, 2],
        max: [7, 7, 7],
    };
    for v in shell.iter() {
        let inner = (0..3).all(|a| (3..6).contains(&v[a]));
        if !inner {
            set(&mut h, v, 1);
        }
    }
    assert_eq!(count(&h, 1), 125 - 27);
    morphology(&mut h, 1, Morphology::FillHoles, &rules).unwrap();
    assert_eq!(count(&h, 1), 125);
    // Two blobs of 27 and 1 voxels (1 mm³ each voxel): keep the largest / remove small.
    let mut c = mask([12, 12, 12], [1.0; 3]);
    for v in (VoxelBox {
        min: [1, 1, 1],
        max: [4, 4, 4],
    })
    .iter()
    {
        set(&mut c, v, 3);
    }
    set(&mut c, [9, 9, 9], 3);
    let mut d = c.clone();
    morphology(&mut c, 3, Morphology::KeepLargest, &rules).unwrap();
    assert_eq!(count(&c, 3), 27);
    assert!(morphology(&mut d, 3, Morphology::RemoveSmallerThan(1.0), &rules).is_none());
    morphology(&mut d, 3, Morphology::RemoveSmallerThan(2.0), &rules).unwrap();
    assert_eq!(count(&d, 3), 27);
}

#[test]
fn replace_clear_and_accept_prediction() {
    let rules = PaintRules::default();
    let mut reference = mask([8, 8, 8], [1.0; 3]);
    let mut predicted = reference.clone();
    for n in 0..100 {
        reference.data_mut()[n] = 1;
    }
    for n in 50..200 {
        predicted.data_mut()[n] = 1;
    }
    for n in 300..310 {
        predicted.data_mut()[n] = 2;
    }
    let mut one = reference.clone();
    let d = accept_prediction(&mut one, &predicted, Some(1), &rules).unwrap();
    assert_eq!(count(&one, 1), 150);
    assert_eq!(count(&one, 2), 0, "other labels untouched");
    assert!(
        d.region.len() < 512,
        "the delta covers only the changed box"
    );
    let mut all = reference.clone();
    accept_prediction(&mut all, &predicted, None, &rules).unwrap();
    assert_eq!(all, predicted);
    replace_label(&mut all, 1, 4, &rules).unwrap();
    assert_eq!((count(&all, 1), count(&all, 4)), (0, 150));
    replace_label(&mut all, 4, 0, &rules).unwrap();
    assert_eq!(count(&all, 0), 512 - 10);
}

#[test]
fn a_thousand_random_edits_undo_to_the_original_and_redo_to_the_final_mask() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut m = mask([32, 32, 24], [0.9, 0.9, 1.3]);
    for n in 0..m.data().len() {
        if n % 97 == 0 {
            m.data_mut()[n] = 5;
        }
    }
    let original = m.clone();
    let mut undo = UndoStack::new(usize::MAX);
    let rules = PaintRules::default();
    let mut steps = 0;
    while steps < 1000 {
        // A "drag" of one to four dabs is one step.
        let mut deltas: Vec<MaskDelta> = Vec::new();
        for _ in 0..rng.random_range(1..=4) {
            let c = DVec3::new(
                rng.random_range(0.0..29.0),
                rng.random_range(0.0..29.0),
                rng.random_range(0.0..31.0),
            );
            let b = ball(rng.random_range(0.5..4.0), rng.random_range(0..4u8));
            deltas.extend(brush_dab(&mut m, &b, c, &rules, None));
        }
        if !deltas.is_empty() {
            undo.push(Edit::Mask(deltas));
            steps += 1;
        }
    }
    let last = m.clone();
    assert_eq!(undo.undo_depth(), 1000);
    while let Some(e) = undo.undo() {
        e.clone().apply_to_mask(&mut m, false);
    }
    assert_eq!(m, original, "undo all restores the original bit-for-bit");
    while let Some(e) = undo.redo() {
        e.clone().apply_to_mask(&mut m, true);
    }
    assert_eq!(m, last, "redo all gives the final mask");
}

#[test]
fn the_undo_memory_cap_is_respected_but_keeps_fifty_steps() {
    let mut m = mask([32, 32, 32], [1.0; 3]);
    let rules = PaintRules::default();
    let cap = 40_000;
    let mut undo = UndoStack::new(cap);
    for n in 0..400 {
        let c = DVec3::new((n % 28) as f64 + 2.0, ((n / 28) % 28) as f64 + 2.0, 16.0);
        let d = brush_dab(&mut m, &ball(2.5, 1 + (n % 3) as u8), c, &rules, None).unwrap();
        undo.push(Edit::Mask(vec![d]));
        assert!(undo.undo_depth() >= MIN_UNDO_STEPS.min(n + 1));
        if undo.undo_depth() > MIN_UNDO_STEPS {
            assert!(undo.bytes() <= cap, "{} bytes held", undo.bytes());
        }
    }
    assert!(undo.undo_depth() < 400, "old steps were dropped");
    // With a cap too small for 50 steps, 50 stay anyway.
    let mut tiny = UndoStack::new(1);
    for n in 0..60 {
        let d = brush_dab(
            &mut m,
            &ball(1.0, 10 + n as u8),
            DVec3::new(5.0, 5.0, 5.0),
            &rules,
            None,
        );
        if let Some(d) = d {
            tiny.push(Edit::Mask(vec![d]));
        }
    }
    assert_eq!(tiny.undo_depth(), MIN_UNDO_STEPS);
}

#[test]
fn live_agreement_follows_deltas_and_undo_exactly() {
    use mriloop::edit::Agreement;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let dims = [20, 18, 12];
    let mut reference = mask(dims, [1.0, 1.0, 1.0]);
    let mut predicted = mask(dims, [1.0, 1.0, 1.0]);
    for v in predicted.data_mut() {
        *v = [0, 0, 0, 1, 2][rng.random_range(0..5)];
    }
    accept_prediction(&mut reference, &predicted, None, &PaintRules::default());
    let recount = |r: &Volume<u8>| Agreement::of(r.data(), predicted.data()).unwrap();
    let mut live = recount(&reference);
    assert_eq!(live.dice(1), Some(1.0));
    assert_eq!(live.foreground_dice(), Some(1.0));
    let mut steps: Vec<MaskDelta> = Vec::new();
    for _ in 0..200 {
        let centre = DVec3::new(
            rng.random_range(0.0..20.0),
            rng.random_range(0.0..18.0),
            rng.random_range(0.0..12.0),
        );
        let value = rng.random_range(0..4u8);
        let brush = ball(rng.random_range(0.5..3.0), value);
        if let Some(d) = brush_dab(&mut reference, &brush, centre, &PaintRules::default(), None) {
            live.apply(&d, &predicted, true);
            steps.push(d);
        }
    }
    assert_eq!(live, recount(&reference));
    // A hand-checked figure: Dice of label 1 from the counts.
    let (r1, p1) = live.counts(1);
    let both = reference
        .data()
        .iter()
        .zip(predicted.data())
        .filter(|(r, p)| **r == 1 && **p == 1)
        .count() as f64;
    assert_eq!(live.dice(1), Some(2.0 * both / (r1 + p1) as f64));
    // Undo half of the steps: the live counts follow.
    for d in steps.iter().rev().take(100) {
        d.revert(&mut reference);
        live.apply(d, &predicted, false);
    }
    assert_eq!(live, recount(&reference));
}
