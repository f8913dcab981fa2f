//! Cached slice views: each view keeps its last slice image in a texture of its own size and
//! re-renders it only when something it shows changed (its uniform block apart from the
//! crosshair, the textures it samples, or the case's content version, bumped by every upload,
//! frame change and mask edit). Every frame the view is drawn from the cache by `ViewBlitPipeline`
//! (`shaders/view_blit.wgsl`), which also draws the crosshair. Paging one view then re-renders
//! that view only: the other two keep their planes and just move their crosshair.
//!
//! Invariants: a cached image is exactly what `SliceBindings::draw` would draw without the
//! crosshair for the key it was made for; its texture has the view's size in pixels and the
//! target's format, so the blit copies texel for pixel.

use super::slice::{
    clear_pass, full_view_pipeline, texture_entry, uniform_entry, SliceBindings, SlicePipeline,
    SliceUniform,
};
use super::ViewKey;

/// The WGSL source of the blit shader.
pub const BLIT_SHADER_SOURCE: &str = include_str!("../../shaders/view_blit.wgsl");

/// The blit's uniform block.
// keep in sync with `BlitUniform` in shaders/view_blit.wgsl
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlitUniform {
    /// Crosshair position in NDC.
    pub crosshair_ndc: [f32; 2],
    /// View size in physical pixels.
    pub viewport_px: [f32; 2],
    /// 1: draw the crosshair.
    pub show_crosshair: u32,
    /// Padding to the WGSL struct size.
    pub _pad: [u32; 3],
}

/// The long-lived part of drawing views from their caches.
pub struct ViewBlitPipeline {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::RenderPipeline,
    sampler: wgpu::Sampler,
    target: wgpu::TextureFormat,
}

impl ViewBlitPipeline {
    /// Build for a colour target format (the slice pipeline's).
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mriloop view blit"),
            source: wgpu::ShaderSource::Wgsl(BLIT_SHADER_SOURCE.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mriloop view blit"),
            entries: &[
                uniform_entry(0),
                texture_entry(
                    1,
                    wgpu::TextureSampleType::Float { filterable: true },
                    wgpu::TextureViewDimension::D2,
                ),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mriloop view blit"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = full_view_pipeline(
            device,
            "mriloop view blit",
            &pipeline_layout,
            &shader,
            target,
            &[],
        );
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("mriloop view blit"),
            mag_filter: wgpu::FilterMode::Nearest,
            min_filter: wgpu::FilterMode::Nearest,
            ..Default::default()
        });
        Self {
            layout,
            pipeline,
            sampler,
            target,
        }
    }
}

/// What a cached image was rendered for.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CacheKey {
    view: ViewKey,
    uniform: SliceUniform,
    content_version: u64,
    size: [u32; 2],
}

/// One view's cached slice image.
pub struct ViewCache {
    texture_view: wgpu::TextureView,
    blit_uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    size: [u32; 2],
    key: Option<CacheKey>,
    renders: u64,
}

impl ViewCache {
    fn new(device: &wgpu::Device, blit: &ViewBlitPipeline, size: [u32; 2]) -> Self {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("mriloop view cache"),
            size: wgpu::Extent3d {
                width: size[0],
                height: size[1],
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: blit.target,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        });
        let texture_view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let (blit_uniform, bind_group) = blit.bind(device, &texture_view);
        Self {
            texture_view,
            blit_uniform,
            bind_group,
            size,
            key: None,
            renders: 0,
        }
    }

    /// How many times this view's slice image was rendered (not drawn from the cache).
    pub fn renders(&self) -> u64 {
        self.renders
    }

    /// The cached slice image (e.g. for the 3D view's planes).
    pub fn texture_view(&self) -> &wgpu::TextureView {
        &self.texture_view
    }
}

impl ViewBlitPipeline {
    /// A blit uniform buffer and the bind group that draws `texture_view` with it.
    pub fn bind(
        &self,
        device: &wgpu::Device,
        texture_view: &wgpu::TextureView,
    ) -> (wgpu::Buffer, wgpu::BindGroup) {
        let blit = self;
        let blit_uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop view blit uniform"),
            size: std::mem::size_of::<BlitUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mriloop view blit"),
            layout: &blit.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: blit_uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(texture_view),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Sampler(&blit.sampler),
                },
            ],
        });
        (blit_uniform, bind_group)
    }

    /// Draw the texture of `bind_group` (from `bind`) into a pass whose viewport is the view's
    /// rectangle.
    pub fn draw(&self, bind_group: &wgpu::BindGroup, pass: &mut wgpu::RenderPass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.draw(0..3, 0..1);
    }

    /// The colour format it draws into (and its sources are made in).
    pub fn target(&self) -> wgpu::TextureFormat {
        self.target
    }
}

/// The view size in pixels a uniform block was made for (at least 1×1).
fn size_of_view(uniform: &SliceUniform) -> [u32; 2] {
    uniform.viewport_px.map(|v| (v.round().max(1.0)) as u32)
}

/// Make `cache` (created or resized as needed) hold the slice image `bindings` draws for
/// `uniform` (crosshair left out), rendering into `encoder` only when its key changed; write
/// this frame's crosshair for the blit.
#[allow(clippy::too_many_arguments)]
pub fn prepare_cached(
    cache: &mut Option<ViewCache>,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    encoder: &mut wgpu::CommandEncoder,
    (pipeline, blit): (&SlicePipeline, &ViewBlitPipeline),
    bindings: &SliceBindings,
    view: ViewKey,
    uniform: &SliceUniform,
    content_version: u64,
) {
    let size = size_of_view(uniform);
    if cache.as_ref().is_none_or(|c| c.size != size) {
        *cache = Some(ViewCache::new(device, blit, size));
    }
    let Some(c) = cache.as_mut() else {
        return;
    };
    let without_crosshair = SliceUniform {
        flags: uniform.flags & !super::slice::FLAG_CROSSHAIR,
        crosshair_ndc: [0.0; 2],
        ..*uniform
    };
    let key = CacheKey {
        view,
        uniform: without_crosshair,
        content_version,
        size,
    };
    if c.key != Some(key) {
        bindings.prepare(device, queue, pipeline, &without_crosshair);
        let mut pass = clear_pass(
            encoder,
            &c.texture_view,
            wgpu::Color::BLACK,
            "mriloop view cache",
        );
        bindings.draw(pipeline, &mut pass);
        drop(pass);
        c.key = Some(key);
        c.renders += 1;
    }
    let blit_uniform = BlitUniform {
        crosshair_ndc: uniform.crosshair_ndc,
        viewport_px: uniform.viewport_px,
        show_crosshair: u32::from(uniform.flags & super::slice::FLAG_CROSSHAIR != 0),
        _pad: [0; 3],
    };
    queue.write_buffer(&c.blit_uniform, 0, bytemuck::bytes_of(&blit_uniform));
}

/// Draw a cached view into a pass whose viewport is the view's rectangle.
pub fn draw_cached(cache: &ViewCache, blit: &ViewBlitPipeline, pass: &mut wgpu::RenderPass<'_>) {
    blit.draw(&cache.bind_group, pass);
}
