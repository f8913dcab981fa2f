//! Viewer state without a GPU: views fit the case's world box and pass through the cursor,
//! slice steps follow the voxel size and stay in the box, window presets follow percentiles,
//! side-by-side keeps 1–4 sequences, and the loader reads masks and statistics correctly.

use glam::{DMat3, DQuat, DVec3};
use mriloop::app::{
    foreground_dice, labelled_volume_mm3, read_mask, CaseSource, IntensitySample, SequenceDisplay,
    ViewerState, WindowPreset, WorldBox, MAX_SIDE_BY_SIDE,
};
use mriloop::render::{Colormap, Orientation};
use mriloop::volume::{write_volume, Affine, Volume};

fn oblique() -> Affine {
    let rot = DMat3::from_quat(DQuat::from_axis_angle(
        DVec3::new(0.2, 0.9, 0.1).normalize(),
        0.3,
    ));
    Affine::from_linear_translation(
        rot * DMat3::from_diagonal(DVec3::new(0.7, 0.7, 3.0)),
        DVec3::new(-20.0, 10.0, 5.0),
    )
}

fn state(affine: Affine, dims: [usize; 3]) -> ViewerState {
    ViewerState::new(&affine, dims, 5)
}

#[test]
fn every_view_fits_the_world_box_and_passes_through_the_cursor() {
    let affine = oblique();
    let dims = [40, 50, 12];
    let mut s = state(affine, dims);
    let b = WorldBox::of_grid(&affine, dims);
    // Every voxel corner is in the box.
    for c in [[0.0, 0.0, 0.0], [39.0, 49.0, 11.0], [0.0, 49.0, 11.0]] {
        assert!(b.contains(affine.vox_to_mm(DVec3::from_array(c))));
    }
    s.set_cursor(b.centre_mm() + DVec3::new(3.0, -2.0, 1.0));
    for o in Orientation::ALL {
        for aspect in [0.5, 1.0, 2.0] {
            let p = s.plane(o, aspect);
            let (_, _, n) = o.axes();
            assert!(
                ((p.centre_mm - s.cursor_mm).dot(n)).abs() < 1e-9,
                "{o:?} through cursor"
            );
            // Square pixels: half extents in the aspect's ratio.
            assert!((p.half_extent_mm[0] / p.half_extent_mm[1] - aspect).abs() < 1e-9);
            // The whole box fits in the view at zoom 1.
            for corner in 0..8 {
                let q = DVec3::new(
                    if corner & 1 == 0 {
                        b.min_mm.x
                    } else {
                        b.max_mm.x
                    },
                    if corner & 2 == 0 {
                        b.min_mm.y
                    } else {
                        b.max_mm.y
                    },
                    if corner & 4 == 0 {
                        b.min_mm.z
                    } else {
                        b.max_mm.z
                    },
                );
                let ndc = p.mm_to_ndc(q);
                assert!(
                    ndc[0].abs() <= 1.0 && ndc[1].abs() <= 1.0,
                    "{o:?} {aspect}: {ndc:?}"
                );
            }
        }
    }
    s.zoom_by(Orientation::Axial, 2.0);
    let z1 = state(affine, dims).plane(Orientation::Axial, 1.0);
    let z2 = s.plane(Orientation::Axial, 1.0);
    assert!((z1.half_extent_mm[1] / z2.half_extent_mm[1] - 2.0).abs() < 1e-9);
}

#[test]
fn zooming_about_a_point_keeps_that_point_under_the_pointer() {
    let mut s = state(oblique(), [40, 50, 12]);
    let o = Orientation::Coronal;
    for (factor, ndc) in [(1.5, [0.6, -0.3]), (0.5, [-0.9, 0.8]), (1e6, [0.2, 0.4])] {
        let before = s.plane(o, 1.6);
        let at_mm = before.ndc_to_mm(ndc);
        let off = at_mm - before.centre_mm;
        let about_mm = [off.dot(before.right), off.dot(before.up)];
        let zoom_before = s.view_zoom(o).zoom;
        s.apply(mriloop::app::ViewCommand::Zoom(o, factor, about_mm));
        let after = s.plane(o, 1.6);
        let ndc_after = after.mm_to_ndc(at_mm);
        assert!(
            (0..2).all(|a| (ndc_after[a] - ndc[a]).abs() < 1e-9),
            "x{factor}: {ndc:?} moved to {ndc_after:?}"
        );
        assert_ne!(s.view_zoom(o).zoom, zoom_before, "x{factor} zoomed");
    }
    // The last factor was held at the limit; the point stayed all the same (above).
    assert_eq!(s.view_zoom(o).zoom, 64.0);
}

#[test]
fn slice_steps_follow_voxel_size_and_stay_in_the_box() {
    let s0 = state(Affine::from_spacing([0.7, 0.8, 3.0]), [10, 10, 10]);
    let mut s = s0.clone();
    s.step_slice(Orientation::Axial, 1);
    assert!((s.cursor_mm.z - s0.cursor_mm.z - 3.0).abs() < 1e-9);
    s.step_slice(Orientation::Sagittal, -2);
    assert!((s.cursor_mm.x - s0.cursor_mm.x + 1.4).abs() < 1e-9);
    s.step_slice(Orientation::Coronal, 1000);
    assert_eq!(s.cursor_mm.y, s.world_box.max_mm.y);
    s.set_cursor(DVec3::splat(-1e6));
    assert_eq!(s.cursor_mm, s.world_box.min_mm);
}

#[test]
fn window_presets_follow_percentiles() {
    let values: Vec<f32> = (0..=10_000).map(|i| i as f32).collect();
    let sample = IntensitySample::new(&values, 1_000_000);
    assert_eq!(sample.percentile(0.5), 5000.0);
    let mut d = SequenceDisplay::new(&values, Colormap::Grey);
    assert_eq!(
        (d.window_low, d.window_high),
        (100.0, 9900.0),
        "robust 1–99 %"
    );
    d.apply_preset(WindowPreset::Full);
    assert_eq!((d.window_low, d.window_high), (0.0, 10000.0));
    d.set_level_width(500.0, 200.0);
    assert_eq!((d.window_low, d.window_high), (400.0, 600.0));
    assert_eq!(d.level_width(), (500.0, 200.0));
}

#[test]
fn side_by_side_keeps_one_to_four_sequences() {
    let mut s = state(Affine::identity(), [4, 4, 4]);
    s.toggle_side_by_side(0);
    assert_eq!(s.shown, vec![0], "the last shown sequence stays");
    for k in 1..5 {
        s.toggle_side_by_side(k);
    }
    assert_eq!(s.shown.len(), MAX_SIDE_BY_SIDE);
    s.toggle_side_by_side(1);
    assert_eq!(s.shown, vec![0, 2, 3]);
    s.toggle_side_by_side(99);
    assert_eq!(s.shown, vec![0, 2, 3], "no such sequence");
}

#[test]
fn masks_in_other_integer_types_load_and_statistics_are_right() {
    let dir = tempfile::tempdir().unwrap();
    let affine = Affine::from_spacing([1.0, 2.0, 0.5]);
    let mut a = Volume::filled([8, 8, 8, 1], affine, 0u8).unwrap();
    let mut b = a.clone();
    for i in 0..40 {
        a.data_mut()[i] = 1;
    }
    for i in 20..80 {
        b.data_mut()[i] = 3;
    }
    assert!((foreground_dice(&a, &b).unwrap() - 2.0 * 20.0 / 100.0).abs() < 1e-12);
    assert!((labelled_volume_mm3(&a) - 40.0).abs() < 1e-9);
    // A label file saved as int16 (as some tools do) reads as labels.
    let as_i16 = a.map(|v| v as i16);
    let path = dir.path().join("seg_i16.nii.gz");
    write_volume(&path, &as_i16).unwrap();
    assert_eq!(read_mask(&path).unwrap().data(), a.data());
    // Fractional values are not labels: the error names the file.
    let frac = a.map(|v| v as f32 * 0.5);
    let path = dir.path().join("prob.nii.gz");
    write_volume(&path, &frac).unwrap();
    let e = read_mask(&path).unwrap_err();
    assert!(
        e.contains("prob.nii.gz") && e.contains("whole numbers"),
        "{e}"
    );
    let src = CaseSource::from_files(&[dir.path().join("T1w.nii.gz")], Some(path));
    assert_eq!(src.case_id, "T1w");
    assert_eq!(src.file_count(), 2);
    // Every format's extension goes from the case and sequence names.
    for (file, stem) in [
        ("ch2.hdr", "ch2"),
        ("ch2.IMG.gz", "ch2"),
        ("orig.mgz", "orig"),
        ("Seg.seg.nrrd", "Seg"),
        ("dwi.nhdr", "dwi"),
        ("notes.txt", "notes.txt"),
    ] {
        let src = CaseSource::from_files(&[dir.path().join(file)], None);
        assert_eq!(src.case_id, stem, "{file}");
    }
}

#[test]
fn the_3d_camera_turns_zooms_pans_and_looks_from_the_standard_directions() {
    use mriloop::session::{Camera3d, Direction3d, ViewCommand};
    let affine = oblique();
    let dims = [40, 50, 12];
    let mut s = state(affine, dims);
    let b = WorldBox::of_grid(&affine, dims);
    // At zoom 1 the box's longest side fits the view's height; the camera looks at its centre.
    let cam = s.orbit_camera(1.0);
    let longest = (b.max_mm - b.min_mm).max_element();
    assert!((2.0 * cam.half_height_mm as f64 - 1.04 * longest).abs() < 1e-3);
    let target = DVec3::from_array(cam.target_mm.map(f64::from));
    assert!((target - b.centre_mm()).length() < 1e-3);
    // Turning wraps the yaw and holds the pitch inside ±89°; non-finite input is ignored.
    s.apply(ViewCommand::Look3d(Direction3d::Anterior));
    s.apply(ViewCommand::Orbit3d([-30.0, 120.0]));
    s.apply(ViewCommand::Orbit3d([f64::NAN, 1.0]));
    assert_eq!((s.camera3d.yaw_deg, s.camera3d.pitch_deg), (330.0, 89.0));
    // Zoom halves the half height; it stays within its limits.
    s.apply(ViewCommand::Zoom3d(2.0));
    let zoomed = s.orbit_camera(1.0).half_height_mm;
    assert!((zoomed - cam.half_height_mm / 2.0).abs() < 1e-3);
    s.apply(ViewCommand::Zoom3d(1e9));
    assert_eq!(s.camera3d.zoom, 40.0);
    // Panning moves the target along the view's right and up by the mm asked.
    s.apply(ViewCommand::Look3d(Direction3d::Left));
    s.apply(ViewCommand::Pan3d([5.0, -2.0]));
    let c = s.orbit_camera(1.0);
    let (right, up) = c.right_up();
    let moved = DVec3::from_array(c.target_mm.map(f64::from)) - b.centre_mm();
    let want = right.as_dvec3() * 5.0 - up.as_dvec3() * 2.0;
    assert!((moved - want).length() < 1e-3, "{moved} vs {want}");
    // Looking from a direction keeps the zoom and the view's place, resets turn and pan.
    s.apply(ViewCommand::Maximise3d(true));
    s.apply(ViewCommand::Look3d(Direction3d::Superior));
    let expected = Camera3d {
        zoom: 40.0,
        shown: true,
        maximised: true,
        ..Camera3d::from_direction(Direction3d::Superior)
    };
    assert_eq!(s.camera3d, expected);
    // Hiding it gives the slices their place back.
    s.apply(ViewCommand::Show3d(false));
    assert!(!s.camera3d.shown && !s.camera3d.maximised);
    // RAS: looking from the left puts the eye at −x.
    let eye = Camera3d::from_direction(Direction3d::Left)
        .orbit(&b, 1.0)
        .eye_dir();
    assert!(eye.x < -0.99, "{eye}");
}
