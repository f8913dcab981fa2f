//! The 3D view of a case: the slice planes with their views' images, its label surfaces
//! (opaque) and the predicted mask's (translucent) rendered through an orbit camera into a
//! cached image, re-rendered only when the camera, the view's size, the meshes or a plane (its
//! place or its slice image) changed, and drawn every frame by the view blit.
//!
//! Invariants: knows no egui and no project; the cached image has the view's size in pixels and
//! the blit's format; `set_meshes` replaces every mesh of its kind and bumps the version, so the
//! next `prepare` re-renders.

use super::plane3d::{PlanePipeline, PlaneQuad};
use super::surface3d::{OrbitCamera, SurfaceMesh, SurfacePipeline, SurfaceTarget};
use super::{BlitUniform, RenderError, ViewBlitPipeline};
use crate::volume::surface::Mesh;

/// The view's background.
const BACKGROUND: wgpu::Color = wgpu::Color {
    r: 0.02,
    g: 0.02,
    b: 0.03,
    a: 1.0,
};

/// What the cached image was rendered for.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    camera: OrbitCamera,
    size: [u32; 2],
    version: u64,
    /// Each plane and its image's version.
    planes: Vec<(PlaneQuad, u64)>,
}

/// A slice plane to show: its quad, its image and the image's version (bumped whenever the
/// image is rendered anew).
pub struct PlaneSource<'a> {
    /// Where it is.
    pub quad: PlaneQuad,
    /// The slice view's cached image.
    pub image: &'a wgpu::TextureView,
    /// The image's version.
    pub version: u64,
}

/// The cached image, its depth buffer and the blit's binding of it.
struct Cache {
    target: SurfaceTarget,
    /// The blit's uniform block (written once: no crosshair), kept with its bind group.
    _blit_uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    key: Option<Key>,
}

impl Cache {
    /// An image of `size` pixels in the blit's format, bound for the blit.
    fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        blit: &ViewBlitPipeline,
        size: [u32; 2],
    ) -> Self {
        let target = SurfaceTarget::with_format(device, size, blit.target());
        let (blit_uniform, bind_group) = blit.bind(device, target.color.view());
        let uniform = BlitUniform {
            crosshair_ndc: [0.0; 2],
            viewport_px: size.map(|v| v as f32),
            show_crosshair: 0,
            _pad: [0; 3],
        };
        queue.write_buffer(&blit_uniform, 0, bytemuck::bytes_of(&uniform));
        Self {
            target,
            _blit_uniform: blit_uniform,
            bind_group,
            key: None,
        }
    }
}

/// A case's 3D view on the GPU.
pub struct View3d {
    pipeline: SurfacePipeline,
    plane_pipeline: PlanePipeline,
    labels: Vec<SurfaceMesh>,
    predicted: Vec<SurfaceMesh>,
    cache: Option<Cache>,
    /// The colour format it renders in (the blit's).
    format: wgpu::TextureFormat,
    version: u64,
    renders: u64,
}

impl View3d {
    /// An empty view drawing into `blit`'s format.
    pub fn new(device: &wgpu::Device, blit: &ViewBlitPipeline) -> Self {
        Self {
            pipeline: SurfacePipeline::new(device, blit.target()),
            plane_pipeline: PlanePipeline::new(device, blit.target()),
            labels: Vec::new(),
            predicted: Vec::new(),
            cache: None,
            format: blit.target(),
            version: 0,
            renders: 0,
        }
    }

    /// Replace the surfaces: the mask's labels (opaque) or, with `predicted`, the predicted
    /// mask's (drawn translucent: give colours an alpha below 1).
    pub fn set_meshes(
        &mut self,
        device: &wgpu::Device,
        meshes: &[(Mesh, [f32; 4])],
        predicted: bool,
    ) {
        let uploaded = meshes
            .iter()
            .filter_map(|(m, c)| SurfaceMesh::upload(device, &self.pipeline, m, *c))
            .collect();
        if predicted {
            self.predicted = uploaded;
        } else {
            self.labels = uploaded;
        }
        self.version += 1;
    }

    /// How many times its image was rendered (not drawn from the cache).
    pub fn renders(&self) -> u64 {
        self.renders
    }

    /// Make the cached image show `camera` at `size` pixels with `planes`, recording into
    /// `encoder` (after the slice images it samples) only when something changed.
    pub fn prepare(
        &mut self,
        (device, queue, encoder): (&wgpu::Device, &wgpu::Queue, &mut wgpu::CommandEncoder),
        blit: &ViewBlitPipeline,
        camera: &OrbitCamera,
        size: [u32; 2],
        planes: &[PlaneSource<'_>],
    ) {
        let size = size.map(|v| v.max(1));
        if self.cache.as_ref().is_none_or(|c| c.target.size() != size) {
            self.cache = Some(Cache::new(device, queue, blit, size));
        }
        let key = Key {
            camera: *camera,
            size,
            version: self.version,
            planes: planes.iter().map(|p| (p.quad, p.version)).collect(),
        };
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        if cache.key.as_ref() != Some(&key) {
            let meshes: Vec<&SurfaceMesh> = self.labels.iter().chain(&self.predicted).collect();
            let draws: Vec<_> = planes
                .iter()
                .map(|p| self.plane_pipeline.plane(device, p.image, p.quad))
                .collect();
            cache.target.encode_scene(
                encoder,
                queue,
                (&self.pipeline, &meshes),
                Some((&self.plane_pipeline, &draws)),
                (camera, BACKGROUND),
            );
            cache.key = Some(key);
            self.renders += 1;
        }
    }

    /// Render the view with `planes` through `camera` into a new image of `size` pixels and read it back
    /// (RGBA8, rows top to bottom), e.g. to save it.
    pub fn snapshot(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        camera: &OrbitCamera,
        size: [u32; 2],
        planes: &[PlaneSource<'_>],
    ) -> Result<Vec<u8>, RenderError> {
        let target = SurfaceTarget::with_format(device, size.map(|v| v.max(1)), self.format);
        let meshes: Vec<&SurfaceMesh> = self.labels.iter().chain(&self.predicted).collect();
        let draws: Vec<_> = planes
            .iter()
            .map(|p| self.plane_pipeline.plane(device, p.image, p.quad))
            .collect();
        target.render_scene(
            device,
            queue,
            (&self.pipeline, &meshes),
            Some((&self.plane_pipeline, &draws)),
            (camera, BACKGROUND),
        );
        let mut pixels = target.read_pixels(device, queue)?;
        if matches!(
            self.format,
            wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb
        ) {
            for p in pixels.chunks_exact_mut(4) {
                p.swap(0, 2);
            }
        }
        Ok(pixels)
    }

    /// Draw the cached image into a pass whose viewport is the view's rectangle.
    pub fn draw(&self, blit: &ViewBlitPipeline, pass: &mut wgpu::RenderPass<'_>) {
        if let Some(cache) = &self.cache {
            blit.draw(&cache.bind_group, pass);
        }
    }
}

/// RGBA8 pixels (rows top to bottom) of an image of `size` as PNG bytes, e.g. a snapshot to
/// save.
pub fn rgba_png(rgba: Vec<u8>, size: [u32; 2]) -> Result<Vec<u8>, String> {
    let image = image::RgbaImage::from_raw(size[0], size[1], rgba)
        .ok_or_else(|| "the rendered image has the wrong size".to_string())?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png)
}
