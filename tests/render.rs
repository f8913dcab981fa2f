//! The render layer on a real wgpu device (Mesa's lavapipe where there is no GPU): every shader
//! validates with naga; slices land where the affine says; overlays follow the label colours;
//! window/level maps intensities; sub-box mask updates change only their region; a sphere's
//! surface renders as a disc of its radius in the label's colour from three directions.

use glam::{DMat3, DQuat, DVec3};
use mriloop::render::{
    Colormap, GpuContext, ImageTexture, LabelLut, LabelTexture, Orientation, SliceBindings,
    SlicePipeline, SlicePlane, SliceSources, SliceStyle, OFFSCREEN_FORMAT,
};
use mriloop::volume::{Affine, Volume};
use std::path::Path;

#[test]
fn every_shader_validates_with_naga() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        n += 1;
    }
    assert!(n >= 1, "no shaders found in {}", dir.display());
}

const SIZE: [u32; 2] = [96, 96];

/// Pixel (x right, y down) of a world point in a view of `SIZE`.
fn pixel_of(plane: &SlicePlane, pos_mm: DVec3) -> (usize, usize) {
    let n = plane.mm_to_ndc(pos_mm);
    let x = ((n[0] + 1.0) * 0.5 * SIZE[0] as f64).floor() as usize;
    let y = ((1.0 - n[1]) * 0.5 * SIZE[1] as f64).floor() as usize;
    (x, y)
}

fn rgb(pixels: &[u8], (x, y): (usize, usize)) -> [u8; 3] {
    let i = (y * SIZE[0] as usize + x) * 4;
    [pixels[i], pixels[i + 1], pixels[i + 2]]
}

struct Scene {
    gpu: GpuContext,
    pipeline: SlicePipeline,
    image: ImageTexture,
    labels: LabelTexture,
    empty: LabelTexture,
    lut: LabelLut,
    affine: Affine,
    mask: Volume<u8>,
}

/// A 40×30×20 volume (voxel spacing `spacing`, pose `affine`) that is dark with one bright
/// 3×3×3 block at voxels 10..13 × 12..15 × 8..11 (value 1000; background 100), and a mask with
/// label 2 on the same block.
fn scene(affine: Affine) -> Scene {
    let gpu = GpuContext::headless().expect("a wgpu device (install mesa-vulkan-drivers)");
    let dims = [40, 30, 20, 1];
    let mut vol = Volume::filled(dims, affine, 100.0f32).unwrap();
    let mut mask = Volume::filled(dims, affine, 0u8).unwrap();
    for k in 8..11 {
        for j in 12..15 {
            for i in 10..13 {
                let at = vol.linear_index(i, j, k, 0);
                vol.data_mut()[at] = 1000.0;
                mask.data_mut()[at] = 2;
            }
        }
    }
    let pipeline = SlicePipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let image = ImageTexture::upload(&gpu.device, &gpu.queue, &vol, 0).unwrap();
    let labels = LabelTexture::upload(&gpu.device, &gpu.queue, &mask).unwrap();
    let empty = LabelTexture::upload(
        &gpu.device,
        &gpu.queue,
        &Volume::filled([1, 1, 1, 1], affine, 0u8).unwrap(),
    )
    .unwrap();
    let lut = LabelLut::new(&gpu.device);
    let mut colours = [[0u8; 4]; 256];
    colours[2] = [255, 0, 0, 255];
    lut.update(&gpu.queue, &colours);
    Scene {
        gpu,
        pipeline,
        image,
        labels,
        empty,
        lut,
        affine,
        mask,
    }
}

impl Scene {
    fn render(&self, plane: &SlicePlane, style: &SliceStyle, with_mask: bool) -> Vec<u8> {
        self.render_with(plane, style, with_mask, false)
    }

    /// Render with the mask as reference (and, if `as_predicted`, also as the prediction) and
    /// the image blended over itself when the style asks for a blend.
    fn render_with(
        &self,
        plane: &SlicePlane,
        style: &SliceStyle,
        with_mask: bool,
        as_predicted: bool,
    ) -> Vec<u8> {
        let b = SliceBindings::new(
            &self.gpu.device,
            &self.pipeline,
            SliceSources {
                image: &self.image,
                image_affine: self.affine,
                blend: style.blend.map(|_| (&self.image, self.affine)),
                reference: with_mask.then_some(&self.labels),
                predicted: as_predicted.then_some(&self.labels),
                empty_labels: &self.empty,
                labels_affine: self.affine,
                lut: &self.lut,
                linear: style.linear,
            },
        );
        let u = b
            .uniform(plane, style, [SIZE[0] as f32, SIZE[1] as f32])
            .unwrap();
        b.render_offscreen(&self.gpu.device, &self.gpu.queue, &self.pipeline, &u, SIZE)
            .unwrap()
    }

    fn block_centre_mm(&self) -> DVec3 {
        self.affine.vox_to_mm(DVec3::new(11.0, 13.0, 9.0))
    }
}

fn style() -> SliceStyle {
    SliceStyle {
        window_low: 0.0,
        window_high: 1000.0,
        colormap: Colormap::Grey,
        linear: false,
        reference_opacity: 0.0,
        reference_outline: false,
        predicted_opacity: 0.0,
        crosshair_mm: None,
        blend: None,
    }
}

#[test]
fn block_appears_where_the_affine_puts_it_in_all_three_views() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let block = s.block_centre_mm();
    for o in Orientation::ALL {
        // The view is centred away from the block, so a wrong axis or sign moves it off its pixel.
        let (right, up, _) = o.axes();
        let view_centre = block + right * 3.0 - up * 2.0;
        let plane = SlicePlane::new(o, view_centre, [24.0, 24.0]);
        let px = s.render(&plane, &style(), false);
        let on = rgb(&px, pixel_of(&plane, block));
        assert!(
            on[0] > 240,
            "{o:?}: block is white at its pixel, got {on:?}"
        );
        let mirrored = view_centre * 2.0 - block;
        for p in [
            mirrored,
            block + right * 4.0,
            block - right * 4.0,
            block + up * 4.0,
            block - up * 4.0,
        ] {
            let off = rgb(&px, pixel_of(&plane, p));
            assert!(
                (20..40).contains(&off[0]),
                "{o:?}: background 100/1000 → ~25 at {p}, got {off:?}"
            );
        }
    }
}

#[test]
fn oblique_anisotropic_volume_lands_on_the_computed_pixel() {
    let rot = DMat3::from_quat(DQuat::from_axis_angle(
        DVec3::new(0.3, -0.5, 0.8).normalize(),
        0.4,
    ));
    let linear = rot * DMat3::from_diagonal(DVec3::new(0.7, 0.7, 3.0));
    let affine = Affine::from_linear_translation(linear, DVec3::new(-12.0, 5.0, 30.0));
    let s = scene(affine);
    // Look at each corner voxel centre of the bright block: inside-corner voxels are bright.
    for o in Orientation::ALL {
        for corner in [
            DVec3::new(10.0, 12.0, 9.0),
            DVec3::new(12.0, 14.0, 9.0),
            DVec3::new(11.0, 13.0, 9.0),
        ] {
            let world = affine.vox_to_mm(corner);
            let (right, up, _) = o.axes();
            let plane = SlicePlane::new(o, world + right * 5.0 + up * 3.0, [12.0, 12.0]);
            let px = s.render(&plane, &style(), false);
            let v = rgb(&px, pixel_of(&plane, world));
            assert!(
                v[0] > 240,
                "{o:?} voxel {corner}: expected bright, got {v:?}"
            );
            // Five voxels further along each voxel axis is background.
            for step in [DVec3::X, DVec3::Y] {
                let away = affine.vox_to_mm(corner + step * 5.0);
                let q = plane.mm_to_ndc(away);
                if q[0].abs() < 0.95
                    && q[1].abs() < 0.95
                    && (away - world).dot(plane.right.cross(plane.up)).abs() < 0.3
                {
                    let b = rgb(&px, pixel_of(&plane, away));
                    assert!(
                        b[0] < 60,
                        "{o:?} voxel {corner} + 5·{step}: expected background, got {b:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn overlay_uses_the_label_colour_and_opacity_zero_hides_it() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let centre = s.block_centre_mm();
    let plane = SlicePlane::new(Orientation::Axial, centre, [24.0, 24.0]);
    let mut st = style();
    st.reference_opacity = 1.0;
    let red = rgb(&s.render(&plane, &st, true), pixel_of(&plane, centre));
    assert_eq!(red, [255, 0, 0], "label 2 is red in the table");
    st.reference_opacity = 0.5;
    let half = rgb(&s.render(&plane, &st, true), pixel_of(&plane, centre));
    assert!(
        (250..=255).contains(&half[0]) && (120..=135).contains(&half[1]),
        "{half:?}"
    );
    st.reference_opacity = 0.0;
    let hidden = rgb(&s.render(&plane, &st, true), pixel_of(&plane, centre));
    assert!(
        hidden[0] > 240 && hidden[1] > 240,
        "opacity 0 shows the image: {hidden:?}"
    );
}

#[test]
fn window_level_maps_intensities_linearly() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let centre = s.block_centre_mm();
    let plane = SlicePlane::new(Orientation::Axial, centre, [24.0, 24.0]);
    let bg = pixel_of(&plane, centre + plane.right * 6.0);
    let mut st = style();
    for (lo, hi, expect) in [
        (0.0, 200.0, 127.5),
        (100.0, 1000.0, 0.0),
        (0.0, 100.0, 255.0),
        (-100.0, 300.0, 127.5),
    ] {
        st.window_low = lo;
        st.window_high = hi;
        let v = rgb(&s.render(&plane, &st, false), bg)[0] as f64;
        assert!(
            (v - expect).abs() <= 2.0,
            "window {lo}..{hi}: background 100 → {v}, expected {expect}"
        );
    }
}

#[test]
fn sub_box_update_changes_only_that_region() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let centre = s.block_centre_mm();
    let plane = SlicePlane::new(Orientation::Axial, centre, [24.0, 24.0]);
    let mut st = style();
    st.reference_opacity = 1.0;
    let mut mask = s.mask.clone();
    // Paint label 2 into a new 2×2×2 box elsewhere, and change the CPU mask outside the box
    // too: only the box may reach the GPU.
    for k in 8..10 {
        for j in 2..4 {
            for i in 30..32 {
                let at = mask.linear_index(i, j, k, 0);
                mask.data_mut()[at] = 2;
            }
        }
    }
    let outside = mask.linear_index(11, 13, 9, 0);
    mask.data_mut()[outside] = 0;
    s.labels
        .update_sub_box(&s.gpu.queue, &mask, [30, 2, 8], [32, 4, 10])
        .unwrap();
    let px = s.render(&plane, &st, true);
    let painted = DVec3::new(30.5, 2.5, 9.0);
    assert_eq!(
        rgb(&px, pixel_of(&plane, painted)),
        [255, 0, 0],
        "the box was uploaded"
    );
    assert_eq!(
        rgb(&px, pixel_of(&plane, centre)),
        [255, 0, 0],
        "outside the box, the GPU keeps the old mask"
    );
    assert!(s
        .labels
        .update_sub_box(&s.gpu.queue, &mask, [39, 0, 0], [41, 1, 1])
        .is_err());
}

#[test]
fn outlines_colour_only_the_edge_and_the_prediction_is_outlined() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let centre = s.block_centre_mm();
    // 12 mm across 96 px: 8 px per voxel, the 3-voxel block is 24 px wide.
    let plane = SlicePlane::new(Orientation::Axial, centre, [6.0, 6.0]);
    let mut st = style();
    st.reference_opacity = 1.0;
    st.reference_outline = true;
    let px = s.render(&plane, &st, true);
    let inside = rgb(&px, pixel_of(&plane, centre));
    assert!(
        inside[0] > 240 && inside[1] > 240,
        "the block's inside is not painted: {inside:?}"
    );
    let edge = pixel_of(&plane, centre + plane.right * 1.5 - plane.right * 0.06);
    assert_eq!(rgb(&px, edge), [255, 0, 0], "its edge is");
    // The prediction alone (reference hidden) is drawn as an outline too.
    st.reference_opacity = 0.0;
    st.reference_outline = false;
    st.predicted_opacity = 1.0;
    let px = s.render_with(&plane, &st, false, true);
    assert_eq!(rgb(&px, edge), [255, 0, 0]);
    let inside = rgb(&px, pixel_of(&plane, centre));
    assert!(inside[0] > 240 && inside[1] > 240);
}

#[test]
fn a_blended_image_mixes_with_its_own_window_and_colour_map() {
    let s = scene(Affine::from_spacing([1.0, 1.0, 1.0]));
    let centre = s.block_centre_mm();
    let plane = SlicePlane::new(Orientation::Axial, centre, [24.0, 24.0]);
    let bg = pixel_of(&plane, centre + plane.right * 6.0);
    let mut st = style();
    st.window_low = 0.0;
    st.window_high = 200.0;
    // The same image over itself, windowed 0..100 (background 100 → 1.0) in the hot map
    // (1.0 → white), at half opacity: grey 127.5 mixed with white.
    st.blend = Some(mriloop::render::BlendStyle {
        window_low: 0.0,
        window_high: 100.0,
        colormap: Colormap::Hot,
        opacity: 0.5,
        clip_below: false,
    });
    let v = rgb(&s.render(&plane, &st, false), bg);
    for c in v {
        assert!((f64::from(c) - 191.25).abs() <= 2.0, "{v:?}");
    }
}

#[test]
fn a_sphere_surface_renders_as_a_disc_of_its_radius_from_three_directions() {
    use mriloop::render::{OrbitCamera, SurfaceMesh, SurfacePipeline, SurfaceTarget};
    use mriloop::volume::surface::LabelSurfaces;
    // A ball of radius 9 voxels (0.8 mm each) about the grid's centre, label 2.
    let n = 40usize;
    let affine = Affine::from_spacing([0.8; 3]);
    let centre_vox = DVec3::splat(19.5);
    let mask: Vec<u8> = (0..n * n * n)
        .map(|i| {
            let p = DVec3::new((i % n) as f64, ((i / n) % n) as f64, (i / (n * n)) as f64);
            2 * u8::from((p - centre_vox).length() <= 9.0)
        })
        .collect();
    let mesh = LabelSurfaces::new(&mask, [n; 3], affine).mesh(2);
    let (lo, hi) = mesh.bounds_mm().unwrap();
    let radius_mm = (0..3).map(|a| (hi[a] - lo[a]) / 2.0).sum::<f32>() / 3.0;
    let centre_mm = affine.vox_to_mm(centre_vox).as_vec3().to_array();
    let gpu = GpuContext::headless().expect("a wgpu device (install mesa-vulkan-drivers)");
    let pipeline = SurfacePipeline::new(&gpu.device, OFFSCREEN_FORMAT);
    let colour = [255u8, 220, 0];
    let rgba = [1.0, 220.0 / 255.0, 0.0, 1.0];
    let surface = SurfaceMesh::upload(&gpu.device, &pipeline, &mesh, rgba).unwrap();
    let size = 128u32;
    let target = SurfaceTarget::new(&gpu.device, [size, size]);
    // 16 mm of world a half view: 4 px a mm.
    let half_height_mm = 16.0f32;
    let px_per_mm = size as f32 / 2.0 / half_height_mm;
    for (yaw, pitch) in [(0.0, 0.0), (90.0, 0.0), (0.0, 89.0)] {
        let camera = OrbitCamera::new(centre_mm, yaw, pitch, half_height_mm);
        let background = wgpu::Color::BLACK;
        target.render(
            &gpu.device,
            &gpu.queue,
            &pipeline,
            &[&surface],
            (&camera, background),
        );
        let pixels = target.read_pixels(&gpu.device, &gpu.queue).unwrap();
        let lit: Vec<(usize, usize)> = (0..(size * size) as usize)
            .filter(|p| pixels[4 * p..4 * p + 3].iter().any(|c| *c > 0))
            .map(|p| (p % size as usize, p / size as usize))
            .collect();
        let area_radius_px = (lit.len() as f32 / std::f32::consts::PI).sqrt();
        let want_px = radius_mm * px_per_mm;
        assert!(
            (area_radius_px - want_px).abs() <= 2.0,
            "yaw {yaw} pitch {pitch}: disc radius {area_radius_px} px, expected {want_px}"
        );
        // Centred, and the pixel facing the light in the label's colour.
        let mean = |f: fn(&(usize, usize)) -> usize| {
            lit.iter().map(f).sum::<usize>() as f32 / lit.len() as f32
        };
        let middle = size as f32 / 2.0 - 0.5;
        assert!((mean(|p| p.0) - middle).abs() < 1.0 && (mean(|p| p.1) - middle).abs() < 1.0);
        let c = 4 * ((size / 2) * size + size / 2) as usize;
        for k in 0..3 {
            assert!(
                pixels[c + k].abs_diff(colour[k]) <= 8,
                "{:?}",
                &pixels[c..c + 4]
            );
        }
    }
}
