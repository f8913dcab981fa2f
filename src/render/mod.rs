//! GPU rendering of volume slices with wgpu and WGSL. Knows nothing of egui or projects.
//!
//! Long-lived parts (`SlicePipeline`, `ViewBlitPipeline`, textures) are apart from per-view draw
//! data (`SliceBindings`, one uniform buffer per view, and its cached slice image). Volumes are
//! uploaded once as 3D textures; slices are sampled on the GPU for any plane and re-rendered only
//! when what a view shows changed; a mask edit rewrites only its sub-box.

mod cache;
mod flat;
mod plane;
mod plane3d;
mod scene;
mod slice;
mod surface3d;
mod texture;
mod view3d;

pub use cache::{BlitUniform, ViewBlitPipeline, ViewCache, BLIT_SHADER_SOURCE};
pub use flat::FlatPipeline;
pub use plane::{Orientation, SlicePlane};
pub use plane3d::{PlaneDraw, PlanePipeline, PlaneQuad, PLANE_SHADER_SOURCE};
pub use scene::{CaseTextures, ViewKey, ViewSlots};
pub use slice::{
    clear_pass, wait_idle, BlendStyle, Colormap, GridInfo, OffscreenTarget, PipelineVariant,
    SliceBindings, SlicePipeline, SliceSources, SliceStyle, SliceUniform, ViewGrids,
    OFFSCREEN_FORMAT,
};
pub use surface3d::{
    OrbitCamera, SurfaceMesh, SurfacePipeline, SurfaceTarget, SurfaceUniform, DEPTH_FORMAT,
    SURFACE_SHADER_SOURCE,
};
pub use texture::{ImageTexture, LabelLut, LabelTexture, RenderError, MAX_UPLOAD_BYTES};
pub use view3d::{rgba_png, PlaneSource, View3d};

/// A wgpu device and queue, e.g. for headless rendering in tests and benchmarks.
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter is (name, backend), for reports.
    pub adapter_info: wgpu::AdapterInfo,
}

impl GpuContext {
    /// Open the default adapter without a window (on a machine with no GPU, Mesa's lavapipe).
    pub fn headless() -> Result<Self, RenderError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .map_err(|e| RenderError::NoDevice(e.to_string()))?;
        let mut limits = wgpu::Limits::default().using_resolution(adapter.limits());
        limits.max_texture_dimension_3d = adapter.limits().max_texture_dimension_3d;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mriloop headless"),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| RenderError::NoDevice(e.to_string()))?;
        Ok(Self {
            device,
            queue,
            adapter_info: adapter.get_info(),
        })
    }
}
