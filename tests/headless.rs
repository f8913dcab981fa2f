//! The headless commands on a machine with no graphics adapter at all (wgpu's Vulkan backend
//! pointed at a driver list that does not exist): `mriloop gpu` finds none, and `train --plot`
//! and `experiment` still write their PNG plots (drawn on the CPU), with the curves drawn.

use std::path::Path;
use std::process::{Command, Output};

/// Run the built `mriloop` with no graphics adapter reachable.
fn mriloop_without_gpu(args: &[&str], runtime: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mriloop"))
        .args(args)
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("mriloop runs")
}

fn assert_ok(out: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A 3D phantom project of `cases` cases on a 24 mm grid.
fn phantom(dir: &Path, cases: &str, runtime: &Path) {
    let out = mriloop_without_gpu(
        &[
            "phantom",
            "--out",
            dir.to_str().unwrap(),
            "--cases",
            cases,
            "--grid",
            "24",
        ],
        runtime,
    );
    assert_ok(&out, "phantom");
}

/// Pixels of `png` within `tolerance` of `colour` in columns `x0..x1`.
fn pixels_of(png: &Path, colour: [u8; 3], (x0, x1): (u32, u32), tolerance: i32) -> usize {
    let img = image::open(png)
        .unwrap_or_else(|e| panic!("{}: not a readable PNG: {e}", png.display()))
        .to_rgb8();
    let near =
        |p: &image::Rgb<u8>| (0..3).all(|c| (p.0[c] as i32 - colour[c] as i32).abs() <= tolerance);
    (x0..x1.min(img.width()))
        .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
        .filter(|(x, y)| near(img.get_pixel(*x, *y)))
        .count()
}

#[test]
fn gpu_lists_no_adapter_when_none_is_reachable() {
    let runtime = tempfile::tempdir().unwrap();
    let out = mriloop_without_gpu(&["gpu"], runtime.path());
    let text = assert_ok(&out, "gpu");
    assert!(text.starts_with("adapters: 0\n"), "{text}");
    assert!(text.contains("training with --backend auto: CPU"), "{text}");
    let out = mriloop_without_gpu(&["gpu", "--json"], runtime.path());
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out, "gpu --json")).unwrap();
    assert_eq!(v["adapters"], serde_json::json!([]));
}

#[test]
fn train_plot_writes_curves_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    phantom(&p, "4", dir.path());
    let ps = p.to_str().unwrap();
    let out = mriloop_without_gpu(
        &[
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
            "--plot",
        ],
        dir.path(),
    );
    let text = assert_ok(&out, "train --plot");
    let png = p.join("model/curves.png");
    assert!(
        text.contains(&format!("curves: {}", png.display())),
        "{text}"
    );
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1400, 500));
    // The loss's moving mean, in its colour, in the left chart; text and axes in the right one.
    let mean = mriloop::plot::LOSS_MEAN;
    assert!(pixels_of(&png, mean, (0, 700), 10) > 100, "no loss curve");
    assert!(
        pixels_of(&png, [0, 0, 0], (700, 1400), 90) > 200,
        "no validation chart"
    );
}

#[test]
fn experiment_report_plots_are_written_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    phantom(&p, "8", dir.path());
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"name": "tiny", "seeds": [1], "test_fraction": 0.25, "backend": "auto",
            "base": {"epochs": 1, "steps_per_epoch": 2, "patch": 8, "batch": 1,
                     "class_window": 16, "base_channels": 2},
            "arms": [{"name": "joint"}]}"#,
    )
    .unwrap();
    let report = dir.path().join("report");
    let args = [
        "experiment",
        p.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ];
    let text = assert_ok(&mriloop_without_gpu(&args, dir.path()), "experiment");
    assert!(text.contains("report: "), "{text}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for png in ["curves.png", "dice_boxes.png", "roc.png"] {
        assert!(md.contains(png), "{png} not linked in\n{md}");
        let img = image::open(report.join(png)).unwrap();
        assert!(img.width() >= 700, "{png}");
    }
    // The arm's colour: its loss curve (left chart) and its Dice box.
    let arm = mriloop::plot::PALETTE[0];
    let curves = report.join("curves.png");
    assert!(pixels_of(&curves, arm, (0, 700), 10) > 100, "no loss curve");
    assert!(
        pixels_of(&report.join("dice_boxes.png"), arm, (0, 1200), 10) > 50,
        "no box"
    );
}
