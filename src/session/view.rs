//! Viewer state with no GPU and no egui: the shared cursor in world millimetres, each view's
//! zoom and pan, the layout, which layers are shown and blended; and `SequenceDisplay`, the
//! display settings each layer of the open case carries (window, colour map). Every view's
//! `SlicePlane` is computed here from the grid of the case, so tests can predict where a world
//! point is drawn.
//!
//! Invariants: the cursor is in world mm (RAS+); every view's plane passes through the cursor
//! along its normal; the layer indices held (`shown`, `blend`) are below `layer_count`.

use crate::render::{Colormap, Orientation, SlicePlane};
use crate::volume::Affine;
use glam::DVec3;

/// The world-space box a grid covers: the corners of its outer voxel faces, mapped by its affine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorldBox {
    /// Lowest R, A, S of the box (mm).
    pub min_mm: DVec3,
    /// Highest R, A, S (mm).
    pub max_mm: DVec3,
}

impl WorldBox {
    /// The axis-aligned world box around a grid of `dims` voxels under `affine`.
    pub fn of_grid(affine: &Affine, dims: [usize; 3]) -> Self {
        let mut min_mm = DVec3::splat(f64::INFINITY);
        let mut max_mm = DVec3::splat(f64::NEG_INFINITY);
        for c in 0..8 {
            let corner = DVec3::new(
                if c & 1 == 0 {
                    -0.5
                } else {
                    dims[0] as f64 - 0.5
                },
                if c & 2 == 0 {
                    -0.5
                } else {
                    dims[1] as f64 - 0.5
                },
                if c & 4 == 0 {
                    -0.5
                } else {
                    dims[2] as f64 - 0.5
                },
            );
            let p = affine.vox_to_mm(corner);
            min_mm = min_mm.min(p);
            max_mm = max_mm.max(p);
        }
        Self { min_mm, max_mm }
    }

    /// Centre of the box (mm).
    pub fn centre_mm(&self) -> DVec3 {
        (self.min_mm + self.max_mm) * 0.5
    }

    /// Whether a world point lies in the box.
    pub fn contains(&self, pos_mm: DVec3) -> bool {
        pos_mm.cmpge(self.min_mm).all() && pos_mm.cmple(self.max_mm).all()
    }
}

/// How the central area is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Axial, coronal and sagittal side by side, one row per shown sequence.
    TriPlanar,
    /// One large view, one column per shown sequence.
    Single(Orientation),
}

/// Named window presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPreset {
    /// The full intensity range of the volume.
    Full,
    /// 1st to 99th percentile: ignores noise and a few hot voxels.
    Robust,
    /// 2nd to 60th percentile: brings out dark and mid-grey tissue.
    Soft,
}

impl WindowPreset {
    /// All presets, for menus.
    pub const ALL: [WindowPreset; 3] =
        [WindowPreset::Full, WindowPreset::Robust, WindowPreset::Soft];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            WindowPreset::Full => "full range",
            WindowPreset::Robust => "1–99 %",
            WindowPreset::Soft => "2–60 %",
        }
    }

    /// The percentiles (0..1) of the window's low and high ends.
    pub fn percentiles(self) -> (f64, f64) {
        match self {
            WindowPreset::Full => (0.0, 1.0),
            WindowPreset::Robust => (0.01, 0.99),
            WindowPreset::Soft => (0.02, 0.60),
        }
    }
}

/// Sorted intensities sampled from a volume, for percentile windows and histograms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IntensitySample {
    sorted: Vec<f32>,
}

impl IntensitySample {
    /// Sample at most `max_samples` finite values evenly from `values`, sorted.
    pub fn new(values: &[f32], max_samples: usize) -> Self {
        let stride = (values.len() / max_samples.max(1)).max(1);
        let mut sorted: Vec<f32> = values
            .iter()
            .step_by(stride)
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        sorted.sort_by(f32::total_cmp);
        Self { sorted }
    }

    /// The value at percentile `p` (0..1); 0 when empty.
    pub fn percentile(&self, p: f64) -> f32 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let i = (p.clamp(0.0, 1.0) * (self.sorted.len() - 1) as f64).round() as usize;
        self.sorted[i]
    }
}

/// Display settings of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceDisplay {
    /// Intensity shown black.
    pub window_low: f32,
    /// Intensity shown white.
    pub window_high: f32,
    /// Colour map.
    pub colormap: Colormap,
    /// Sampled intensities for presets.
    pub sample: IntensitySample,
    /// When blended over another image, transparent below `window_low` (statistic maps).
    pub transparent_below_window: bool,
}

impl SequenceDisplay {
    /// Settings for a volume's values: grey, robust window (diverging for ADC-like maps is the
    /// caller's choice).
    pub fn new(values: &[f32], colormap: Colormap) -> Self {
        let sample = IntensitySample::new(values, 200_000);
        let mut d = Self {
            window_low: 0.0,
            window_high: 1.0,
            colormap,
            sample,
            transparent_below_window: false,
        };
        d.apply_preset(WindowPreset::Robust);
        d
    }

    /// Apply a display command (window, preset, colour map) to this image's settings; other
    /// commands are the view's.
    pub fn apply(&mut self, cmd: &ViewCommand) {
        match *cmd {
            ViewCommand::SetWindow { low, high, .. } => {
                self.window_low = low;
                self.window_high = if high > low { high } else { low + 1e-3 };
            }
            ViewCommand::WindowPreset(_, p) => self.apply_preset(p),
            ViewCommand::SetColormap(_, c) => self.colormap = c,
            _ => {}
        }
    }

    /// Set the window from a preset.
    pub fn apply_preset(&mut self, preset: WindowPreset) {
        let (lo, hi) = preset.percentiles();
        self.window_low = self.sample.percentile(lo);
        self.window_high = self.sample.percentile(hi);
        if self.window_high <= self.window_low {
            self.window_high = self.window_low + 1.0;
        }
    }

    /// Window centre (level) and width.
    pub fn level_width(&self) -> (f32, f32) {
        (
            0.5 * (self.window_low + self.window_high),
            self.window_high - self.window_low,
        )
    }

    /// Set the window from level and width (width kept positive).
    pub fn set_level_width(&mut self, level: f32, width: f32) {
        let w = width.max(1e-6);
        self.window_low = level - 0.5 * w;
        self.window_high = level + 0.5 * w;
    }
}

/// Zoom and in-plane pan of one orientation's views (shared by every sequence shown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewZoom {
    /// 1 fits the case's world box; 2 shows half as many mm.
    pub zoom: f64,
    /// Offset of the view centre from the box centre, in mm along screen right and up.
    pub pan_mm: [f64; 2],
}

impl Default for ViewZoom {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            pan_mm: [0.0, 0.0],
        }
    }
}

/// Overlay settings for the two masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayStyle {
    /// Reference mask opacity (0 hides it).
    pub reference_opacity: f32,
    /// Draw the reference as outlines only.
    pub reference_outline: bool,
    /// Predicted mask opacity (always outlined, so both stay readable).
    pub predicted_opacity: f32,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self {
            reference_opacity: 0.5,
            reference_outline: false,
            predicted_opacity: 0.9,
        }
    }
}

/// What the viewer shows and where it looks, for one open case.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerState {
    /// The world box of the case (its first sequence's grid).
    pub world_box: WorldBox,
    /// Slice step along R, A, S (mm): the voxel size along each world axis.
    pub step_mm: DVec3,
    /// The shared cursor (world mm).
    pub cursor_mm: DVec3,
    /// Zoom and pan per orientation (axial, coronal, sagittal).
    pub zoom: [ViewZoom; 3],
    /// The layout.
    pub layout: Layout,
    /// Sequences shown side by side (indices into the case's sequences; 1 to 4, first is main).
    pub shown: Vec<usize>,
    /// A sequence blended over each shown one, with its opacity.
    pub blend: Option<(usize, f32)>,
    /// Number of the case's images (layers) the indices above may name.
    pub layer_count: usize,
    /// Trilinear (true) or nearest-voxel sampling.
    pub linear: bool,
    /// Mask overlays.
    pub overlay: OverlayStyle,
    /// The 3D view's camera.
    pub camera3d: Camera3d,
}

/// The 3D view's camera: it orbits the case's world box centre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera3d {
    /// Degrees about the superior axis (0: from anterior, looking at the face).
    pub yaw_deg: f64,
    /// Degrees above the axial plane (within ±89).
    pub pitch_deg: f64,
    /// 1 fits the world box; 2 shows half as many mm.
    pub zoom: f64,
    /// The orbit centre's offset from the box centre along the view's right and up (mm).
    pub pan_mm: [f64; 2],
    /// Whether the 3D view is shown beside the side-by-side layouts (off at first; the 2×2
    /// layout has it always).
    pub shown: bool,
    /// Whether the 3D view fills the central area.
    pub maximised: bool,
    /// Whether the slice planes show in it with their images.
    pub planes: bool,
}

impl Default for Camera3d {
    fn default() -> Self {
        Self::from_direction(Direction3d::AnteriorLeft)
    }
}

/// The 3D view's standard directions (where the eye is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction3d {
    /// From the front.
    Anterior,
    /// From behind.
    Posterior,
    /// From the left.
    Left,
    /// From the right.
    Right,
    /// From above.
    Superior,
    /// From below.
    Inferior,
    /// From the front left and a little above (the default).
    AnteriorLeft,
}

impl Direction3d {
    /// Every direction, for menus.
    pub const ALL: [Direction3d; 7] = [
        Self::Anterior,
        Self::Posterior,
        Self::Left,
        Self::Right,
        Self::Superior,
        Self::Inferior,
        Self::AnteriorLeft,
    ];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anterior => "anterior",
            Self::Posterior => "posterior",
            Self::Left => "left",
            Self::Right => "right",
            Self::Superior => "superior",
            Self::Inferior => "inferior",
            Self::AnteriorLeft => "anterior left",
        }
    }
}

impl Camera3d {
    /// The orbit camera for a view of aspect `width / height`: orthographic, orbiting the
    /// centre of `world` (moved by the pan), at zoom 1 a ball of the box's longest side in view
    /// (the box's corners may be cut off; the anatomy rarely reaches them).
    pub fn orbit(&self, world: &WorldBox, aspect: f64) -> crate::render::OrbitCamera {
        let radius = 0.5 * (world.max_mm - world.min_mm).max_element();
        let aspect = if aspect.is_finite() && aspect > 0.0 {
            aspect
        } else {
            1.0
        };
        let half_height = 1.04 * radius * (1.0 / aspect).max(1.0) / self.zoom.max(1e-3);
        let mut camera = crate::render::OrbitCamera::new(
            world.centre_mm().as_vec3().to_array(),
            self.yaw_deg as f32,
            self.pitch_deg as f32,
            half_height as f32,
        );
        let (right, up) = camera.right_up();
        let [px, py] = self.pan_mm.map(|v| v as f32);
        let target = glam::Vec3::from_array(camera.target_mm) + right * px + up * py;
        camera.target_mm = target.to_array();
        camera
    }

    /// The camera looking from `d`, the whole box in view.
    pub fn from_direction(d: Direction3d) -> Self {
        let (yaw_deg, pitch_deg) = match d {
            Direction3d::Anterior => (0.0, 0.0),
            Direction3d::Posterior => (180.0, 0.0),
            Direction3d::Left => (90.0, 0.0),
            Direction3d::Right => (-90.0, 0.0),
            Direction3d::Superior => (0.0, 89.0),
            Direction3d::Inferior => (0.0, -89.0),
            Direction3d::AnteriorLeft => (35.0, 20.0),
        };
        Self {
            yaw_deg,
            pitch_deg,
            zoom: 1.0,
            pan_mm: [0.0; 2],
            shown: false,
            maximised: false,
            planes: true,
        }
    }
}

/// Most sequences shown side by side.
pub const MAX_SIDE_BY_SIDE: usize = 4;

fn orientation_index(o: Orientation) -> usize {
    match o {
        Orientation::Axial => 0,
        Orientation::Coronal => 1,
        Orientation::Sagittal => 2,
    }
}

/// A change to what the views show (applied by `ViewerState::apply`).
#[derive(Debug, Clone, PartialEq)]
pub enum ViewCommand {
    /// Move the shared cursor (world mm).
    SetCursor(DVec3),
    /// Step a view's slice.
    StepSlice(Orientation, i32),
    /// Multiply a view's zoom about a point of it, given as its offset from the view's centre
    /// in mm along screen right and up (the point stays where it is; `[0, 0]`: the centre).
    Zoom(Orientation, f64, [f64; 2]),
    /// Move a view's centre by mm along screen right and up.
    Pan(Orientation, [f64; 2]),
    /// Reset zoom and pan of every view and centre the cursor.
    ResetView,
    /// Set a sequence's window (intensities shown black and white).
    SetWindow {
        /// Sequence index.
        seq: usize,
        /// Low end.
        low: f32,
        /// High end.
        high: f32,
    },
    /// Apply a window preset to a sequence.
    WindowPreset(usize, WindowPreset),
    /// Set a sequence's colour map.
    SetColormap(usize, Colormap),
    /// Trilinear (true) or nearest sampling.
    SetLinear(bool),
    /// Reference overlay opacity.
    SetReferenceOpacity(f32),
    /// Reference overlay as outlines.
    SetReferenceOutline(bool),
    /// Predicted overlay opacity.
    SetPredictedOpacity(f32),
    /// Show one sequence alone.
    ShowSequence(usize),
    /// Add or remove a sequence from the side-by-side set.
    ToggleSideBySide(usize),
    /// Blend a sequence over the shown ones (None: no blend), with an opacity.
    SetBlend(Option<(usize, f32)>),
    /// Change the layout.
    SetLayout(Layout),
    /// Turn the 3D view by degrees about the superior axis and up.
    Orbit3d([f64; 2]),
    /// Multiply the 3D view's zoom.
    Zoom3d(f64),
    /// Look from a standard direction (zoom kept, pan reset).
    Look3d(Direction3d),
    /// Move the 3D view's orbit centre by mm along the view's right and up.
    Pan3d([f64; 2]),
    /// Show or hide the 3D view in the side-by-side layouts.
    Show3d(bool),
    /// Let the 3D view fill the central area, or give the slices their place back.
    Maximise3d(bool),
    /// Show the slice planes in the 3D view, or not.
    Planes3d(bool),
}

impl ViewerState {
    /// The layout a grid of a single slice needs: one large view of the orientation facing
    /// the slice (the one whose normal is closest to the one-voxel axis); `None` for a volume.
    pub fn single_slice_layout(affine: &Affine, dims: [usize; 3]) -> Option<Layout> {
        let thin =
            (0..3).find(|a| dims[*a] == 1 && dims.iter().filter(|d| **d > 1).count() == 2)?;
        Some(Self::facing_axis(affine, thin))
    }

    /// The layout of a stack of unrelated 2D images (the slices along the third voxel axis):
    /// one large view facing them, paged through like slices.
    pub fn stack_layout(affine: &Affine) -> Layout {
        Self::facing_axis(affine, 2)
    }

    /// One large view of the orientation whose normal is closest to voxel axis `axis`.
    fn facing_axis(affine: &Affine, axis: usize) -> Layout {
        let axis = affine.linear().col(axis).normalize_or_zero();
        Orientation::ALL
            .into_iter()
            .max_by(|a, b| {
                let (na, nb) = (a.axes().2.dot(axis).abs(), b.axes().2.dot(axis).abs());
                na.total_cmp(&nb)
            })
            .map_or(Layout::TriPlanar, Layout::Single)
    }

    /// State for a case of `layer_count` images whose first has this grid. A single slice
    /// opens in one large view facing it; a volume in the tri-planar layout.
    pub fn new(affine: &Affine, dims: [usize; 3], layer_count: usize) -> Self {
        let world_box = WorldBox::of_grid(affine, dims);
        let step = [0, 1, 2].map(|a| step_along(affine, a));
        Self {
            world_box,
            step_mm: DVec3::from_array(step),
            cursor_mm: world_box.centre_mm(),
            zoom: [ViewZoom::default(); 3],
            layout: Self::single_slice_layout(affine, dims).unwrap_or(Layout::TriPlanar),
            shown: vec![0],
            blend: None,
            layer_count,
            linear: false,
            overlay: OverlayStyle::default(),
            camera3d: Camera3d::default(),
        }
    }

    /// Apply a view command (one naming a missing sequence does nothing; the display settings'
    /// commands are the layers', applied by `SequenceDisplay::apply`).
    pub fn apply(&mut self, cmd: ViewCommand) {
        let seq_ok = |s: usize| s < self.layer_count;
        match cmd {
            ViewCommand::SetCursor(p) => self.set_cursor(p),
            ViewCommand::StepSlice(o, n) => self.step_slice(o, n),
            ViewCommand::Zoom(o, f, about_mm) => self.zoom_about(o, f, about_mm),
            ViewCommand::Pan(o, d) => {
                let z = self.view_zoom_mut(o);
                z.pan_mm[0] += d[0];
                z.pan_mm[1] += d[1];
            }
            ViewCommand::ResetView => {
                self.zoom = [ViewZoom::default(); 3];
                self.cursor_mm = self.world_box.centre_mm();
            }
            ViewCommand::SetLinear(b) => self.linear = b,
            ViewCommand::SetReferenceOpacity(a) => {
                self.overlay.reference_opacity = a.clamp(0.0, 1.0)
            }
            ViewCommand::SetReferenceOutline(b) => self.overlay.reference_outline = b,
            ViewCommand::SetPredictedOpacity(a) => {
                self.overlay.predicted_opacity = a.clamp(0.0, 1.0)
            }
            ViewCommand::ShowSequence(s) if seq_ok(s) => self.shown = vec![s],
            ViewCommand::ToggleSideBySide(s) => self.toggle_side_by_side(s),
            ViewCommand::SetBlend(b) => {
                self.blend = b
                    .filter(|(s, _)| seq_ok(*s))
                    .map(|(s, a)| (s, a.clamp(0.0, 1.0)));
            }
            ViewCommand::SetLayout(l) => self.layout = l,
            cmd @ (ViewCommand::Orbit3d(_)
            | ViewCommand::Zoom3d(_)
            | ViewCommand::Look3d(_)
            | ViewCommand::Pan3d(_)
            | ViewCommand::Show3d(_)
            | ViewCommand::Maximise3d(_)
            | ViewCommand::Planes3d(_)) => self.apply_3d(&cmd),
            _ => {}
        }
    }

    /// The 3D view's commands.
    fn apply_3d(&mut self, cmd: &ViewCommand) {
        let c = &mut self.camera3d;
        match *cmd {
            ViewCommand::Orbit3d([yaw, pitch]) if yaw.is_finite() && pitch.is_finite() => {
                c.yaw_deg = (c.yaw_deg + yaw).rem_euclid(360.0);
                c.pitch_deg = (c.pitch_deg + pitch).clamp(-89.0, 89.0);
            }
            ViewCommand::Zoom3d(f) if f.is_finite() && f > 0.0 => {
                c.zoom = (c.zoom * f).clamp(0.25, 40.0)
            }
            ViewCommand::Look3d(d) => {
                *c = Camera3d {
                    zoom: c.zoom,
                    shown: c.shown,
                    maximised: c.maximised,
                    planes: c.planes,
                    ..Camera3d::from_direction(d)
                }
            }
            ViewCommand::Pan3d([x, y]) if x.is_finite() && y.is_finite() => {
                let limit = (self.world_box.max_mm - self.world_box.min_mm).length();
                c.pan_mm = [
                    (c.pan_mm[0] + x).clamp(-limit, limit),
                    (c.pan_mm[1] + y).clamp(-limit, limit),
                ];
            }
            ViewCommand::Show3d(on) => {
                c.shown = on;
                c.maximised &= on;
            }
            ViewCommand::Maximise3d(on) => {
                c.maximised = on;
                c.shown |= on;
            }
            ViewCommand::Planes3d(on) => c.planes = on,
            _ => {}
        }
    }

    /// The 3D view's camera for a view of aspect `width / height` (see `Camera3d::orbit`).
    pub fn orbit_camera(&self, aspect: f64) -> crate::render::OrbitCamera {
        self.camera3d.orbit(&self.world_box, aspect)
    }

    /// Zoom and pan of an orientation.
    pub fn view_zoom(&self, o: Orientation) -> &ViewZoom {
        &self.zoom[orientation_index(o)]
    }

    /// Zoom and pan of an orientation, to change.
    pub fn view_zoom_mut(&mut self, o: Orientation) -> &mut ViewZoom {
        &mut self.zoom[orientation_index(o)]
    }

    /// The plane of a view of `o` whose rectangle has aspect `width / height`: it fits the
    /// world box at zoom 1, keeps square pixels in mm and passes through the cursor.
    pub fn plane(&self, o: Orientation, aspect: f64) -> SlicePlane {
        let (right, up, normal) = o.axes();
        let size = self.world_box.max_mm - self.world_box.min_mm;
        let ext_right = size.dot(right).abs();
        let ext_up = size.dot(up).abs();
        let aspect = if aspect.is_finite() && aspect > 0.0 {
            aspect
        } else {
            1.0
        };
        let z = self.view_zoom(o);
        let half_h = 0.5 * 1.04 * ext_up.max(ext_right / aspect).max(1e-3) / z.zoom.max(1e-3);
        let half_w = half_h * aspect;
        let mut centre = self.world_box.centre_mm() + right * z.pan_mm[0] + up * z.pan_mm[1];
        centre += normal * (self.cursor_mm - centre).dot(normal);
        SlicePlane {
            centre_mm: centre,
            right,
            up,
            half_extent_mm: [half_w, half_h],
        }
    }

    /// Move the cursor `steps` slices along a view's normal, kept inside the world box.
    pub fn step_slice(&mut self, o: Orientation, steps: i32) {
        let a = o.normal_axis();
        let v = self.cursor_mm[a] + steps as f64 * self.step_mm[a];
        self.cursor_mm[a] = v.clamp(self.world_box.min_mm[a], self.world_box.max_mm[a]);
    }

    /// Set the cursor, clamped to the world box.
    pub fn set_cursor(&mut self, pos_mm: DVec3) {
        self.cursor_mm = pos_mm.clamp(self.world_box.min_mm, self.world_box.max_mm);
    }

    /// Multiply an orientation's zoom (kept within 0.25..64).
    pub fn zoom_by(&mut self, o: Orientation, factor: f64) {
        self.zoom_about(o, factor, [0.0; 2]);
    }

    /// Multiply an orientation's zoom (kept within 0.25..64) keeping the world point at
    /// `about_mm` (offset from the view's centre, mm along screen right and up) in its place:
    /// the centre moves towards it by the share of the offset the zoom takes away.
    pub fn zoom_about(&mut self, o: Orientation, factor: f64, about_mm: [f64; 2]) {
        if !factor.is_finite() || factor <= 0.0 || !about_mm.iter().all(|v| v.is_finite()) {
            return;
        }
        let z = self.view_zoom_mut(o);
        let before = z.zoom;
        z.zoom = (z.zoom * factor).clamp(0.25, 64.0);
        let kept = 1.0 - before / z.zoom;
        z.pan_mm = [0, 1].map(|a| z.pan_mm[a] + about_mm[a] * kept);
    }

    /// Show `seq` alone, or add/remove it from the side-by-side set.
    pub fn toggle_side_by_side(&mut self, seq: usize) {
        if let Some(i) = self.shown.iter().position(|s| *s == seq) {
            if self.shown.len() > 1 {
                self.shown.remove(i);
            }
        } else if self.shown.len() < MAX_SIDE_BY_SIDE && seq < self.layer_count {
            self.shown.push(seq);
        }
    }
}

/// The extent of one voxel of a grid along world axis `axis` (0 = R, 1 = A, 2 = S), taken from
/// the voxel axis closest to it: the slice step of a view whose normal is that axis.
pub fn step_along(affine: &Affine, axis: usize) -> f64 {
    let lin = affine.linear();
    let mut best = (0.0, 1.0);
    for j in 0..3 {
        let col = lin.col(j);
        let len = col.length();
        if len > 0.0 {
            let cos = (col[axis] / len).abs();
            if cos > best.0 {
                best = (cos, len);
            }
        }
    }
    best.1
}
