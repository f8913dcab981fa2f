//! The one bridge between egui and the render layer: an egui-wgpu paint callback per view.
//! The GPU side (`ViewerGpu`: pipeline, the open case's textures, per-view bindings) lives in
//! egui-wgpu's callback resources; each frame a view's callback carries only its slot, what it
//! samples and its uniform block.
//!
//! Invariants: textures are uploaded once per opened case (`ViewerGpu::set_case`); a callback
//! whose case generation is stale draws nothing.

use crate::render::{
    CaseTextures, RenderError, SlicePipeline, SliceUniform, ViewBlitPipeline, ViewKey, ViewSlots,
};
use egui_wgpu::{CallbackResources, CallbackTrait, ScreenDescriptor};

/// GPU resources of the viewer, stored in egui-wgpu's callback resources.
pub struct ViewerGpu {
    pipeline: SlicePipeline,
    blit: ViewBlitPipeline,
    case: Option<CaseTextures>,
    slots: ViewSlots,
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
            generation: 0,
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
