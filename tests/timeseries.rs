//! 4D cases: the time-series computations on the phantom's BOLD run (time course, temporal
//! summaries, seed map against the generator's networks) and the window showing one (time
//! panel, stepping through time points, the time course at the cursor, the seed map overlay).

mod window;

use egui::Pos2;
use egui_kittest::kittest::Queryable;
use glam::DVec3;
use mriloop::app::timeseries::{TimeCommand, TimeShown};
use mriloop::app::{Command, ViewCommand};
use mriloop::phantom::{generate_case, generate_project, PhantomConfig};
use mriloop::project::InputForm;
use mriloop::volume::timeseries::{
    region_mean_course, seed_correlation, temporal_summary, time_course,
};
use mriloop::volume::Volume;
use std::sync::atomic::AtomicBool;

fn config() -> PhantomConfig {
    PhantomConfig {
        cases: 2,
        seed: 5,
        form: InputForm::TimeSeries4d,
        grid: 28,
        frames: 60,
        ..Default::default()
    }
}

/// The voxel of network node `label` nearest the node's centre of mass.
fn node_voxel(networks: &Volume<u8>, label: u8) -> [usize; 3] {
    let [nx, ny, _] = networks.dims3();
    let voxels: Vec<[usize; 3]> = networks
        .data()
        .iter()
        .enumerate()
        .filter(|(_, v)| **v == label)
        .map(|(i, _)| [i % nx, (i / nx) % ny, i / (nx * ny)])
        .collect();
    assert!(!voxels.is_empty(), "node {label} has no voxel");
    let c = voxels.iter().fold([0.0; 3], |a, v| {
        [a[0] + v[0] as f64, a[1] + v[1] as f64, a[2] + v[2] as f64]
    });
    let c = c.map(|x| x / voxels.len() as f64);
    *voxels
        .iter()
        .min_by(|a, b| {
            let d = |v: &[usize; 3]| (0..3).map(|k| (v[k] as f64 - c[k]).powi(2)).sum::<f64>();
            d(a).total_cmp(&d(b))
        })
        .unwrap()
}

/// Mean of `r` where `networks` equals `label`.
fn mean_where(r: &Volume<f32>, networks: &Volume<u8>, keep: impl Fn(u8) -> bool) -> f64 {
    let v: Vec<f64> = r
        .data()
        .iter()
        .zip(networks.data())
        .filter(|(_, n)| keep(**n))
        .map(|(x, _)| f64::from(*x))
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn time_course_summaries_and_seed_map_follow_the_phantom() {
    let case = generate_case(&config(), 0).unwrap();
    let bold = case.images[0].1.map(f32::from);
    let networks = case.networks.clone().unwrap();
    let [nx, ny, nz, nt] = bold.dims();
    assert_eq!(nt, 60);
    // The time course at a voxel is its values over time.
    let vox = node_voxel(&networks, 3);
    let course = time_course(&bold, vox).unwrap();
    for (t, v) in course.iter().enumerate() {
        assert_eq!(
            *v,
            bold.data()[vox[0] + nx * (vox[1] + ny * (vox[2] + nz * t))]
        );
    }
    assert!(time_course(&bold, [nx, 0, 0]).is_none());
    // Temporal mean and SD against a direct computation at that voxel.
    let s = temporal_summary(&bold).unwrap();
    let mean = course.iter().map(|v| f64::from(*v)).sum::<f64>() / nt as f64;
    let sd = (course
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        / nt as f64)
        .sqrt();
    let at = vox[0] + nx * (vox[1] + ny * vox[2]);
    assert!((f64::from(s.mean.data()[at]) - mean).abs() < 1e-3 * mean);
    assert!((f64::from(s.sd.data()[at]) - sd).abs() < 1e-3 * sd.max(1.0));
    // The region mean course of one voxel is that voxel's course.
    let mut one = vec![0u8; nx * ny * nz];
    one[at] = 1;
    let one = Volume::new_like(&networks, one).unwrap();
    assert_eq!(region_mean_course(&bold, &one).unwrap(), course);
    // Seed in the motor network's left node: high in both of its nodes, low outside networks.
    let r = seed_correlation(&bold, vox, &AtomicBool::new(false)).unwrap();
    assert!(
        (r.data()[at] - 1.0).abs() < 1e-5,
        "r at the seed {}",
        r.data()[at]
    );
    let own = mean_where(&r, &networks, |n| n == 3);
    let partner = mean_where(&r, &networks, |n| n == 4);
    let outside = mean_where(&r.map(f32::abs), &networks, |n| n == 0);
    let other_network = mean_where(&r, &networks, |n| n == 5 || n == 6);
    println!(
        "metric: seed_r_own_node = {own:.3}\nmetric: seed_r_partner_node = {partner:.3}\n\
         metric: seed_abs_r_outside = {outside:.3}\nmetric: seed_r_visual = {other_network:.3}"
    );
    assert!(own > 0.6, "own node {own}");
    assert!(partner > 0.4, "partner node {partner}");
    assert!(outside < 0.15, "outside {outside}");
    assert!(other_network.abs() < 0.2, "visual network {other_network}");
    // A cancelled map stops; a seed outside the grid is refused.
    assert!(seed_correlation(&bold, vox, &AtomicBool::new(true)).is_err());
    assert!(seed_correlation(&bold, [0, ny, 0], &AtomicBool::new(false)).is_err());
}

#[test]
fn colin27_4d_subjects_carry_their_networks_in_grey_matter_at_anatomical_places() {
    use mriloop::phantom::generate_case_with;
    use mriloop::phantom::template::{TemplateSource, DEFAULT_TEMPLATE_DIR};
    let template = TemplateSource::colin27(DEFAULT_TEMPLATE_DIR.into())
        .load()
        .unwrap();
    let cfg = PhantomConfig {
        grid: 56,
        ..config()
    };
    let case = generate_case_with(&cfg, Some(&template), 0).unwrap();
    assert!(case.id.starts_with("colin27_"));
    let bold = case.images[0].1.map(f32::from);
    let networks = case.networks.clone().unwrap();
    assert_eq!(bold.dims(), [56, 56, 56, 60]);
    // Every node has grey-matter voxels; the two default-mode nodes lie on the midline, one
    // in front of the other; the motor nodes high up, left and right.
    let centre_mm = |label: u8| {
        let [nx, ny, _] = networks.dims3();
        let (sum, n) = networks
            .data()
            .iter()
            .enumerate()
            .filter(|(_, v)| **v == label)
            .map(|(i, _)| {
                DVec3::new(
                    (i % nx) as f64,
                    ((i / nx) % ny) as f64,
                    (i / (nx * ny)) as f64,
                )
            })
            .fold((DVec3::ZERO, 0.0), |(s, n), v| {
                (s + networks.affine().vox_to_mm(v), n + 1.0)
            });
        assert!(n > 3.0, "node {label}: {n} voxels");
        sum / n
    };
    let [pfc, pcc, motor_l, motor_r] = [1, 2, 3, 4].map(centre_mm);
    assert!(pfc.y - pcc.y > 70.0, "default mode {pfc} {pcc}");
    assert!(pfc.x.abs() < 12.0 && pcc.x.abs() < 12.0);
    assert!(
        motor_r.x - motor_l.x > 50.0 && motor_l.z > 30.0,
        "motor {motor_l} {motor_r}"
    );
    // Seeded in the left motor node: high in the right one, low outside every network.
    let seed = node_voxel(&networks, 3);
    let r = seed_correlation(&bold, seed, &AtomicBool::new(false)).unwrap();
    let partner = mean_where(&r, &networks, |n| n == 4);
    let outside = mean_where(&r.map(f32::abs), &networks, |n| n == 0);
    assert!(partner > 0.4, "partner node {partner}");
    assert!(outside < 0.15, "outside {outside}");
}

fn pixel(img: &image::RgbaImage, p: Pos2) -> [u8; 3] {
    let px = img.get_pixel(p.x as u32, p.y as u32).0;
    [px[0], px[1], px[2]]
}

/// Pixels of the axial view: (count of hot-coloured pixels, mean level of the grey ones).
fn axial_colours(h: &mut egui_kittest::Harness<'_, mriloop::app::MriloopApp>) -> (usize, f64) {
    let c = window::axial(h);
    let img = h.render().unwrap();
    let (mut hot, mut grey, mut grey_sum) = (0usize, 0usize, 0f64);
    let mut y = c.rect.top() + 3.0;
    while y < c.rect.bottom() - 3.0 {
        let mut x = c.rect.left() + 3.0;
        while x < c.rect.right() - 3.0 {
            let [r, g, b] = pixel(&img, Pos2::new(x, y));
            if r > 120 && i32::from(r) > i32::from(b) + 60 {
                hot += 1;
            } else if r.abs_diff(g) < 4 && g.abs_diff(b) < 4 && r > 10 {
                grey += 1;
                grey_sum += f64::from(r);
            }
            x += 3.0;
        }
        y += 3.0;
    }
    (hot, grey_sum / grey.max(1) as f64)
}

#[test]
fn a_4d_case_opens_with_its_time_series() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let p = generate_project(&dir.path().join("p4d"), &cfg, |_, _| {}).unwrap();
    let first = &p.manifest.cases[0].id;
    let case = (0..cfg.cases)
        .map(|i| generate_case(&cfg, i).unwrap())
        .find(|c| &c.id == first)
        .unwrap();
    let bold = case.images[0].1.map(f32::from);
    let networks = case.networks.clone().unwrap();
    let mut h = window::open_project(p.root(), [1280.0, 900.0]);
    // The time panel is there, on time point 0 of 60.
    h.get_by_label("Time series");
    {
        let tv = h.state().time_view().expect("a 4D case has a time view");
        assert_eq!(tv.frames(), 60);
        assert_eq!(tv.shown, TimeShown::Frame(0));
    }
    // Hide the masks so only the image and the seed map colour the view.
    let push = |h: &mut egui_kittest::Harness<'_, mriloop::app::MriloopApp>, c: Command| {
        h.state_mut().push(c);
        h.step();
        h.step();
    };
    push(&mut h, Command::View(ViewCommand::SetReferenceOpacity(0.0)));
    push(&mut h, Command::View(ViewCommand::SetPredictedOpacity(0.0)));
    // The cursor on the motor network's left node: the time course there is the voxel's values.
    let vox = node_voxel(&networks, 3);
    let pos = bold
        .affine()
        .vox_to_mm(DVec3::new(vox[0] as f64, vox[1] as f64, vox[2] as f64));
    push(&mut h, Command::View(ViewCommand::SetCursor(pos)));
    let (at, course) = h.state().time_course_at_cursor().unwrap();
    assert_eq!(at, vox);
    assert_eq!(course, time_course(&bold, vox).unwrap());
    // Step to time point 5: the image's values (under the cursor, for the tools) are frame 5's.
    push(&mut h, Command::Time(TimeCommand::Step(5)));
    {
        let open = h.state().open_case().unwrap();
        assert_eq!(open.time.as_ref().unwrap().shown, TimeShown::Frame(5));
        let frame5 = bold.frame(5).unwrap();
        assert_eq!(open.layers[0].volume.data(), frame5.data());
    }
    // Play advances through the time points on its own; pause stops it.
    push(&mut h, Command::Time(TimeCommand::SetFramesPerSecond(30.0)));
    push(&mut h, Command::Time(TimeCommand::Play(true)));
    let advanced = window::step_until(&mut h, |a| {
        a.time_view()
            .is_some_and(|t| matches!(t.shown, TimeShown::Frame(f) if f > 6))
    });
    assert!(advanced, "{:?}", h.state().time_view().map(|t| t.shown));
    push(&mut h, Command::Time(TimeCommand::Play(false)));
    let paused = h.state().time_view().unwrap().shown;
    for _ in 0..20 {
        h.step();
    }
    assert_eq!(h.state().time_view().unwrap().shown, paused);
    // The temporal SD replaces the shown values; back to the mean.
    push(
        &mut h,
        Command::Time(TimeCommand::Show(TimeShown::TemporalSd)),
    );
    let sd = temporal_summary(&bold).unwrap();
    assert_eq!(
        h.state().open_case().unwrap().layers[0].volume.data(),
        sd.sd.data()
    );
    push(&mut h, Command::Time(TimeCommand::Show(TimeShown::Mean)));
    let (hot_before, grey_before) = axial_colours(&mut h);
    assert_eq!(hot_before, 0, "no colour before the seed map");
    // The seed map, from the panel's button, computed in the background and blended in.
    h.get_by_label("Seed map at cursor").click();
    let shown = window::step_until(&mut h, |a| {
        a.time_view()
            .is_some_and(|t| t.seed.is_some() && !t.seed_busy())
    });
    assert!(shown, "{:?}", h.state().time_view().map(|t| &t.seed_status));
    h.step();
    let (r, slot) = {
        let tv = h.state().time_view().unwrap();
        let s = tv.seed.as_ref().unwrap();
        assert_eq!(s.seed_vox, vox);
        (s.r.clone(), s.image)
    };
    assert_eq!(h.state().open_case().unwrap().viewer.blend.unwrap().0, slot);
    assert!(mean_where(&r, &networks, |n| n == 3) > 0.6);
    assert!(mean_where(&r.map(f32::abs), &networks, |n| n == 0) < 0.15);
    // On screen: hot colours where r passes the threshold, the rest of the image unchanged
    // (the map is transparent below its threshold, not a dark veil).
    let (hot, grey) = axial_colours(&mut h);
    assert!(hot > 0, "the seed map shows in the axial view");
    assert!(
        grey > 0.8 * grey_before,
        "grey pixels kept their level: {grey} vs {grey_before}"
    );
    // Hiding it removes the colour again; showing it brings it back without recomputing.
    h.get_by_label("Hide seed map").click();
    h.step();
    h.step();
    assert_eq!(axial_colours(&mut h).0, 0);
    h.get_by_label("Show seed map").click();
    h.step();
    h.step();
    assert_eq!(axial_colours(&mut h).0, hot);
}
