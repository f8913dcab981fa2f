//! Training curves are drawn on the CPU (plotters' bitmap backend, no GPU) to a PNG of the asked
//! size with both plots drawn.

use mriloop::plot::{write_training_png, Curves};

#[test]
fn curves_render_to_a_png_with_both_plots() {
    let mut c = Curves::default();
    for s in 1..=200 {
        c.loss.push((s, 2.0 / (1.0 + s as f64 * 0.05)));
    }
    for e in 1..=4 {
        c.validation
            .push((e * 50, "Dice habenula_L".into(), 0.2 * e as f64));
        c.validation
            .push((e * 50, "class AUC".into(), 0.5 + 0.1 * e as f64));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    write_training_png(&c, [800, 300], &path).unwrap();
    let img = image::open(&path).unwrap().to_rgba8();
    assert_eq!(img.dimensions(), (800, 300));
    // The loss line (dark blue) in the left half, the Dice line (red) in the right half.
    let has = |x0: u32, x1: u32, f: &dyn Fn([u8; 4]) -> bool| {
        (x0..x1).any(|x| (0..300).any(|y| f(img.get_pixel(x, y).0)))
    };
    assert!(has(0, 400, &|p| p[2] > 120 && p[0] < 80 && p[1] < 100));
    assert!(has(400, 800, &|p| p[0] > 180 && p[1] < 90 && p[2] < 90));
}
