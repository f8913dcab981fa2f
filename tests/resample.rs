//! Resampling through world coordinates: identity at the same spacing, exact label round trips,
//! the field of view kept, linear ramps reproduced.

use glam::{DMat3, DQuat, DVec3};
use mriloop::volume::{
    grid_with_spacing, resample_labels_to_grid, resample_to_grid, Affine, Interpolation, Volume,
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
