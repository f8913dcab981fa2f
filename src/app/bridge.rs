//! The one bridge between egui and the render layer: an egui-wgpu paint callback per view.
//! The GPU side (`ViewerGpu`: pipeline, the open case's textures, per-view bindings) lives in
//! egui-wgpu's callback resources; each frame a view's callback carries only its slot, what it
//! samples and its uniform block.
//!
//! Invariants: textures are uploaded once per opened case (`ViewerGpu::set_case`); a callback
//! whose case generation is stale draws nothing.

use crate::render::{
    CaseTextures, OrbitCamera, PlaneQuad, PlaneSource, RenderError, SlicePipeline, SliceUniform,
    View3d, ViewBlitPipeline, ViewKey, ViewSlots,
};
use crate::volume::surface::Mesh;
use egui_wgpu::{CallbackResources, CallbackTrait, ScreenDescriptor};

/// GPU resources of the viewer, stored in egui-wgpu's callback resources.
pub struct ViewerGpu {
    pipeline: SlicePipeline,
    blit: ViewBlitPipeline,
    case: Option<CaseTextures>,
    slots: ViewSlots,
    view3d: Option<View3d>,
    generation: u64,
}

impl ViewerGpu {
    /// Build the pipeline for egui's target format.
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        Self {
            pipeline: SlicePipeline::new(device, target),
            blit: ViewBlitPipeline::new(device, target),
            case: None,
            slots: ViewSlots::default(),
            view3d: None,
            generation: 0,
        }
    }

    /// Replace the 3D view's surfaces of the mask (or, with `predicted`, of the prediction).
    pub fn set_surfaces(
        &mut self,
        device: &wgpu::Device,
        meshes: &[(Mesh, [f32; 4])],
        predicted: bool,
    ) {
        let blit = &self.blit;
        self.view3d
            .get_or_insert_with(|| View3d::new(device, blit))
            .set_meshes(device, meshes, predicted);
    }

    /// How many times the 3D view was rendered in `rs`'s viewer (0 without one).
    pub fn renders_3d_in(rs: &egui_wgpu::RenderState) -> u64 {
        rs.renderer
            .read()
            .callback_resources
            .get::<Self>()
            .and_then(|g| g.view3d.as_ref())
            .map_or(0, View3d::renders)
    }

    /// The 3D view of `rs`'s viewer with `planes` rendered through `camera` at `size` pixels
    /// (RGBA8); an error when no case is shown.
    pub fn snapshot_3d_in(
        rs: &egui_wgpu::RenderState,
        camera: &OrbitCamera,
        size: [u32; 2],
        planes: &[(usize, PlaneQuad)],
    ) -> Result<Vec<u8>, RenderError> {
        let renderer = rs.renderer.read();
        let Some(gpu) = renderer.callback_resources.get::<Self>() else {
            return Err(RenderError::Shape("no case is shown in 3D".into()));
        };
        match gpu.view3d.as_ref() {
            Some(view) => {
                let planes = gpu.plane_sources(planes);
                view.snapshot(&rs.device, &rs.queue, camera, size, &planes)
            }
            None => Err(RenderError::Shape("no case is shown in 3D".into())),
        }
    }

    /// Put the viewer's GPU side into egui-wgpu's callback resources (once, at start).
    pub fn install(rs: &egui_wgpu::RenderState) {
        let gpu = Self::new(&rs.device, rs.target_format);
        rs.renderer.write().callback_resources.insert(gpu);
    }

    /// How many times view slot `slot` was rendered in `rs`'s viewer (0 without one).
    pub fn renders_in(rs: &egui_wgpu::RenderState, slot: usize) -> u64 {
        rs.renderer
            .read()
            .callback_resources
            .get::<Self>()
            .map_or(0, |g| g.view_renders(slot))
    }

    /// Show a newly uploaded case; returns its generation number.
    pub fn set_case(&mut self, textures: CaseTextures) -> u64 {
        self.case = Some(textures);
        self.slots = ViewSlots::default();
        self.view3d = None;
        self.generation += 1;
        self.generation
    }

    /// The open case's textures (for sub-box updates and colours).
    pub fn case(&self) -> Option<&CaseTextures> {
        self.case.as_ref()
    }

    /// How many times view slot `slot`'s slice image was rendered (not drawn from its cache).
    pub fn view_renders(&self, slot: usize) -> u64 {
        self.slots.renders(slot)
    }

    /// Rewrite image `index` of the open case in place (a 4D series' frame or summary);
    /// returns the intensity range it now maps to 0..1.
    pub fn write_image(
        &mut self,
        queue: &wgpu::Queue,
        index: usize,
        values: &[f32],
    ) -> Result<(f32, f32), RenderError> {
        self.case
            .as_mut()
            .ok_or_else(|| RenderError::Shape("no case is open".into()))?
            .write_image(queue, index, values)
    }

    /// Replace the open case's predicted mask (a new prediction; `None` removes it).
    pub fn set_predicted(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        mask: Option<&crate::volume::Volume<u8>>,
    ) -> Result<(), RenderError> {
        self.case
            .as_mut()
            .ok_or_else(|| RenderError::Shape("no case is open".into()))?
            .set_predicted(device, queue, mask)?;
        self.slots = ViewSlots::default();
        Ok(())
    }

    /// Put a derived image in slot `index` of the open case (replacing or appending); the
    /// views' bindings are remade so none samples a replaced texture.
    pub fn set_image(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        index: usize,
        volume: &crate::volume::Volume<f32>,
    ) -> Result<(f32, f32), RenderError> {
        let range = self
            .case
            .as_mut()
            .ok_or_else(|| RenderError::Shape("no case is open".into()))?
            .set_image(device, queue, index, volume)?;
        self.slots = ViewSlots::default();
        Ok(range)
    }
}

/// One view's draw for this frame.
pub struct SliceCallback {
    /// The case generation it was computed for.
    pub generation: u64,
    /// The view's slot (unique among the views of a frame).
    pub slot: usize,
    /// What it samples.
    pub key: ViewKey,
    /// Its uniform block.
    pub uniform: SliceUniform,
}

impl CallbackTrait for SliceCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(gpu) = resources.get_mut::<ViewerGpu>() {
            if gpu.generation == self.generation {
                if let Some(case) = gpu.case.as_ref() {
                    gpu.slots.prepare_cached(
                        device,
                        queue,
                        encoder,
                        (&gpu.pipeline, &gpu.blit),
                        case,
                        self.slot,
                        self.key,
                        &self.uniform,
                    );
                }
            }
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        if let Some(gpu) = resources.get::<ViewerGpu>() {
            if gpu.generation == self.generation {
                gpu.slots.draw_cached(self.slot, &gpu.blit, pass);
            }
        }
    }
}

/// The 3D view's draw for this frame.
pub struct View3dCallback {
    /// The case generation it was computed for.
    pub generation: u64,
    /// The camera.
    pub camera: OrbitCamera,
    /// The view's size in physical pixels.
    pub size_px: [u32; 2],
    /// The slice planes to show: each view slot's image on its quad.
    pub planes: Vec<(usize, PlaneQuad)>,
}

impl ViewerGpu {
    /// The planes' images from the slice views' caches (those not drawn yet are left out).
    fn plane_sources<'a>(&'a self, planes: &[(usize, PlaneQuad)]) -> Vec<PlaneSource<'a>> {
        planes
            .iter()
            .filter_map(|(slot, quad)| {
                let cache = self.slots.cache(*slot)?;
                Some(PlaneSource {
                    quad: *quad,
                    image: cache.texture_view(),
                    version: cache.renders(),
                })
            })
            .collect()
    }
}

impl CallbackTrait for View3dCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(gpu) = resources.get_mut::<ViewerGpu>() else {
            return Vec::new();
        };
        if gpu.generation != self.generation {
            return Vec::new();
        }
        if let Some(mut view) = gpu.view3d.take() {
            let planes = gpu.plane_sources(&self.planes);
            view.prepare(
                (device, queue, encoder),
                &gpu.blit,
                &self.camera,
                self.size_px,
                &planes,
            );
            drop(planes);
            gpu.view3d = Some(view);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        if let Some(gpu) = resources.get::<ViewerGpu>() {
            if gpu.generation == self.generation {
                if let Some(view) = gpu.view3d.as_ref() {
                    view.draw(&gpu.blit, pass);
                }
            }
        }
    }
}
