//! Resampling through world coordinates: identity at the same spacing, exact label round trips,
//! the field of view kept, linear ramps reproduced; labels by their largest trilinear weight
//! follow the shape the source was drawn from more closely than the nearest voxel does, and an
//! object that rule would erase whole is kept by its nearest voxels.

use glam::{DMat3, DQuat, DVec3};
use mriloop::volume::{
    grid_with_spacing, resample_labels_keeping_objects, resample_labels_smooth,
    resample_labels_to_grid, resample_to_grid, Affine, Interpolation, Volume,
};

fn oblique(spacing: [f64; 3]) -> Affine {
    Affine::from_linear_translation(
        DMat3::from_quat(DQuat::from_rotation_y(0.4))
            * DMat3::from_diagonal(DVec3::from_array(spacing)),
        DVec3::new(-7.0, 3.0, 11.0),
    )
}

#[test]
fn same_spacing_is_the_identity() {
    let a = oblique([0.9, 1.1, 2.0]);
    let v = Volume::new([6, 5, 4, 1], a, (0..120).map(|i| i as f32).collect()).unwrap();
    let (dims, b) = grid_with_spacing([6, 5, 4], &a, [0.9, 1.1, 2.0]);
    assert_eq!(dims, [6, 5, 4]);
    assert!(b.max_abs_diff(&a) < 1e-12);
    let r = resample_to_grid(&v, dims, b, Interpolation::Linear).unwrap();
    for (x, y) in r.data().iter().zip(v.data()) {
        assert!((x - y).abs() < 1e-4);
    }
}

#[test]
fn labels_survive_a_round_trip_through_half_the_spacing_and_the_field_of_view_is_kept() {
    let a = oblique([1.0, 1.0, 1.0]);
    let mut m = Volume::filled([8, 7, 6, 1], a, 0u8).unwrap();
    for (n, v) in m.data_mut().iter_mut().enumerate() {
        *v = (n % 5) as u8;
    }
    let (fine_dims, fine) = grid_with_spacing([8, 7, 6], &a, [0.5, 0.5, 0.5]);
    assert_eq!(fine_dims, [16, 14, 12]);
    // The outer face of voxel 0 is at the same world position on both grids.
    let corner_old = a.vox_to_mm(DVec3::splat(-0.5));
    let corner_new = fine.vox_to_mm(DVec3::splat(-0.5));
    assert!((corner_old - corner_new).length() < 1e-9);
    let up = resample_labels_to_grid(&m, fine_dims, fine).unwrap();
    let back = resample_labels_to_grid(&up, [8, 7, 6], a).unwrap();
    // Each coarse voxel centre lies between fine centres: nearest picks one inside the voxel.
    assert_eq!(back.data(), m.data());
}

#[test]
fn a_linear_ramp_is_reproduced_by_trilinear_resampling() {
    let a = Affine::from_spacing([1.0, 1.0, 1.0]);
    let v = Volume::new(
        [10, 4, 4, 1],
        a,
        (0..160).map(|n| (n % 10) as f32 * 2.0).collect(),
    )
    .unwrap();
    let (dims, b) = grid_with_spacing([10, 4, 4], &a, [0.5, 1.0, 1.0]);
    let r = resample_to_grid(&v, dims, b, Interpolation::Linear).unwrap();
    // Fine voxel i sits at coarse x = (i + 0.5)/2 − 0.5; inside, the value is 2x.
    for i in 1..dims[0] - 1 {
        let x = (i as f64 + 0.5) / 2.0 - 0.5;
        let got = r.get([i, 1, 1]).unwrap();
        assert!((f64::from(got) - 2.0 * x).abs() < 1e-4, "{i}: {got}");
    }
}

/// A ball of `radius_mm` about `centre_mm` drawn on `(dims, affine)`: label 3 where a voxel's
/// centre lies inside.
fn ball(dims: [usize; 3], affine: Affine, centre_mm: DVec3, radius_mm: f64) -> Volume<u8> {
    let n = dims[0] * dims[1] * dims[2];
    let data = (0..n)
        .map(|idx| {
            let v = [
                idx % dims[0],
                (idx / dims[0]) % dims[1],
                idx / (dims[0] * dims[1]),
            ];
            let p = affine.vox_to_mm(DVec3::new(v[0] as f64, v[1] as f64, v[2] as f64));
            if (p - centre_mm).length() <= radius_mm {
                3
            } else {
                0
            }
        })
        .collect();
    Volume::new([dims[0], dims[1], dims[2], 1], affine, data).unwrap()
}

fn dice(a: &Volume<u8>, b: &Volume<u8>) -> f64 {
    let both = a
        .data()
        .iter()
        .zip(b.data())
        .filter(|(x, y)| **x == 3 && **y == 3);
    let sizes = a.data().iter().chain(b.data()).filter(|x| **x == 3).count();
    2.0 * both.count() as f64 / sizes as f64
}

#[test]
fn labels_by_largest_weight_are_the_identity_on_the_same_grid() {
    let a = oblique([0.9, 1.1, 2.0]);
    let m = Volume::new([6, 5, 4, 1], a, (0..120).map(|i| (i % 7) as u8).collect()).unwrap();
    let r = resample_labels_smooth(&m, [6, 5, 4], a).unwrap();
    assert_eq!(r.data(), m.data());
}

#[test]
fn labels_by_largest_weight_follow_a_ball_better_than_the_nearest_voxel() {
    // Balls drawn on a 0.73 mm grid (the phantoms' finest spacing), brought to a 1.02 mm grid,
    // compared with the same balls drawn on that grid directly.
    let fine = oblique([0.73, 0.73, 0.73]);
    let (dims, coarse) = grid_with_spacing([40, 40, 40], &fine, [1.02, 1.02, 1.02]);
    let (mut smooth, mut nearest) = (0.0, 0.0);
    let cases = 12;
    for c in 0..cases {
        let radius = 1.6 + 0.35 * c as f64;
        let offset = DVec3::new(0.13 * c as f64, 0.29 * c as f64, 0.07 * c as f64);
        let centre = fine.vox_to_mm(DVec3::splat(19.5)) + offset;
        let drawn = ball([40, 40, 40], fine, centre, radius);
        let truth = ball(dims, coarse, centre, radius);
        smooth += dice(
            &resample_labels_smooth(&drawn, dims, coarse).unwrap(),
            &truth,
        );
        nearest += dice(
            &resample_labels_to_grid(&drawn, dims, coarse).unwrap(),
            &truth,
        );
    }
    let (smooth, nearest) = (smooth / cases as f64, nearest / cases as f64);
    assert!(
        smooth > nearest + 0.02,
        "mean Dice to the ball: largest weight {smooth:.3}, nearest {nearest:.3}"
    );
}

#[test]
fn an_object_the_largest_weight_would_erase_is_kept_at_its_nearest_voxels() {
    // A one-voxel lesion (label 5) beside a ball (label 3) on a 2 mm grid, read onto a 1 mm grid
    // shifted by half a millimetre: each output voxel near the lesion sees it with weight
    // 0.75³ ≈ 0.42 at most, so the largest weight erases it.
    let coarse = Affine::from_spacing([2.0; 3]);
    let mut src = ball([16, 16, 16], coarse, DVec3::splat(20.0), 6.0);
    let lesion = 4 + 16 * (4 + 16 * 4);
    src.data_mut()[lesion] = 5;
    let fine = Affine::from_linear_translation(DMat3::IDENTITY, DVec3::splat(0.5));
    let smooth = resample_labels_smooth(&src, [32; 3], fine).unwrap();
    let kept = resample_labels_keeping_objects(&src, [32; 3], fine).unwrap();
    let count = |v: &Volume<u8>, l: u8| v.data().iter().filter(|x| **x == l).count();
    assert_eq!(count(&smooth, 5), 0, "the largest weight erases the lesion");
    assert_eq!(
        count(&kept, 5),
        1,
        "kept at the voxel nearest its centre (8 mm → 8.5 mm)"
    );
    assert_eq!(kept.get([8, 8, 8]), Some(5));
    // Nothing else changes: the ball is what the largest weight gives.
    let others = (smooth.data().iter())
        .zip(kept.data())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(others, 1);
    assert!(count(&kept, 3) > 500);
}
