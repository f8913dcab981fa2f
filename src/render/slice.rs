//! The slice pipeline (`shaders/slice.wgsl`): one long-lived `SlicePipeline`, and per view a
//! `SliceBindings` (its uniform buffer and bind group) updated each frame from a `SlicePlane`
//! and a `SliceStyle`.

use super::plane::SlicePlane;
use super::texture::{ImageTexture, LabelLut, LabelTexture, RenderError};
use crate::volume::Affine;

/// The WGSL source of the slice shader.
pub const SHADER_SOURCE: &str = include_str!("../../shaders/slice.wgsl");

/// Colour format of offscreen renders (tests, benchmarks, screenshots).
pub const OFFSCREEN_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

const FLAG_LINEAR: u32 = 1;
const FLAG_OUTLINE: u32 = 2;
pub(super) const FLAG_CROSSHAIR: u32 = 4;
const FLAG_HAS_REFERENCE: u32 = 8;
const FLAG_HAS_PREDICTED: u32 = 16;
const FLAG_BLEND_CLIP: u32 = 32;

/// The uniform block of one view.
// keep in sync with `SliceUniform` in shaders/slice.wgsl
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SliceUniform {
    /// NDC → image texture coordinates.
    pub image_from_ndc: [[f32; 4]; 4],
    /// NDC → label texture coordinates.
    pub labels_from_ndc: [[f32; 4]; 4],
    /// NDC → blended image texture coordinates.
    pub blend_from_ndc: [[f32; 4]; 4],
    /// Window (low, high) in normalised intensity.
    pub window: [f32; 2],
    /// Crosshair position in NDC.
    pub crosshair_ndc: [f32; 2],
    /// View size in physical pixels.
    pub viewport_px: [f32; 2],
    /// Opacity of the reference and predicted overlays.
    pub overlay_opacity: [f32; 2],
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Colour map index.
    pub colormap: u32,
    /// Window of the blended image in its normalised intensity.
    pub blend_window: [f32; 2],
    /// Opacity of the blended image (0: none).
    pub blend_opacity: f32,
    /// Colour map index of the blended image.
    pub blend_colormap: u32,
    /// Padding to the WGSL struct size.
    pub _pad: [u32; 2],
}

impl SliceUniform {
    /// The uniform block of a view of `grids` showing `plane` with `style` on a viewport of
    /// `viewport_px` pixels; `None` for a singular affine.
    pub fn for_view(
        plane: &SlicePlane,
        style: &SliceStyle,
        viewport_px: [f32; 2],
        grids: &ViewGrids,
    ) -> Option<SliceUniform> {
        let image = plane.tex_from_ndc(&grids.image.affine, grids.image.dims)?;
        let labels = plane.tex_from_ndc(&grids.labels.affine, grids.labels.dims)?;
        let norm = |(lo, hi): (f32, f32), v: f32| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        let mut flags = 0;
        if style.linear {
            flags |= FLAG_LINEAR;
        }
        if style.reference_outline {
            flags |= FLAG_OUTLINE;
        }
        if grids.has_reference {
            flags |= FLAG_HAS_REFERENCE;
        }
        if grids.has_predicted {
            flags |= FLAG_HAS_PREDICTED;
        }
        let crosshair = match style.crosshair_mm {
            Some(p) => {
                flags |= FLAG_CROSSHAIR;
                let n = plane.mm_to_ndc(p);
                [n[0] as f32, n[1] as f32]
            }
            None => [0.0; 2],
        };
        let (blend_from_ndc, blend_window, blend_opacity, blend_colormap) =
            match (grids.blend, style.blend) {
                (Some(g), Some(b)) if b.opacity > 0.0 => (
                    {
                        if b.clip_below {
                            flags |= FLAG_BLEND_CLIP;
                        }
                        plane.tex_from_ndc(&g.affine, g.dims)?
                    },
                    [
                        norm(g.value_range, b.window_low),
                        norm(g.value_range, b.window_high),
                    ],
                    b.opacity.min(1.0),
                    b.colormap.code(),
                ),
                _ => (image, [0.0, 1.0], 0.0, 0),
            };
        Some(SliceUniform {
            image_from_ndc: image.to_cols_array_2d(),
            labels_from_ndc: labels.to_cols_array_2d(),
            blend_from_ndc: blend_from_ndc.to_cols_array_2d(),
            window: [
                norm(grids.image.value_range, style.window_low),
                norm(grids.image.value_range, style.window_high),
            ],
            crosshair_ndc: crosshair,
            viewport_px,
            overlay_opacity: [style.reference_opacity, style.predicted_opacity],
            flags,
            colormap: style.colormap.code(),
            blend_window,
            blend_opacity,
            blend_colormap,
            _pad: [0; 2],
        })
    }
}

/// Colour maps for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Black to white.
    #[default]
    Grey,
    /// Black, red, yellow, white.
    Hot,
    /// Blue, white, red (ADC, probabilities, differences).
    Diverging,
}

impl Colormap {
    /// All colour maps, for pickers.
    pub const ALL: [Colormap; 3] = [Colormap::Grey, Colormap::Hot, Colormap::Diverging];

    /// Index in the shader.
    fn code(self) -> u32 {
        match self {
            Colormap::Grey => 0,
            Colormap::Hot => 1,
            Colormap::Diverging => 2,
        }
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Grey => "grey",
            Colormap::Hot => "hot",
            Colormap::Diverging => "diverging",
        }
    }
}

/// How a second image is blended over the base image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlendStyle {
    /// Intensity of the blended image shown at the bottom of its colour map.
    pub window_low: f32,
    /// Intensity shown at the top.
    pub window_high: f32,
    /// Its colour map.
    pub colormap: Colormap,
    /// Opacity over the base image (0..1).
    pub opacity: f32,
    /// Transparent where the blended image is below `window_low` (a statistic map such as a
    /// seed correlation shown only above its threshold).
    pub clip_below: bool,
}

/// How a view draws: window/level, colour map, interpolation, overlays, crosshair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceStyle {
    /// Intensity shown black (in the image's units).
    pub window_low: f32,
    /// Intensity shown white.
    pub window_high: f32,
    /// Colour map.
    pub colormap: Colormap,
    /// Trilinear (true) or nearest-voxel (false) sampling.
    pub linear: bool,
    /// Reference mask opacity (0 hides it).
    pub reference_opacity: f32,
    /// Draw the reference mask as outlines only.
    pub reference_outline: bool,
    /// Predicted mask opacity (drawn as outlines).
    pub predicted_opacity: f32,
    /// Crosshair position (world mm), if shown.
    pub crosshair_mm: Option<glam::DVec3>,
    /// The blended second image's style, when one is bound and shown.
    pub blend: Option<BlendStyle>,
}

/// What a view samples: the base image, an optional image blended over it, the label masks
/// (sharing one grid) and their colours.
#[derive(Clone, Copy)]
pub struct SliceSources<'a> {
    /// The base image.
    pub image: &'a ImageTexture,
    /// Its voxel→world affine.
    pub image_affine: Affine,
    /// An image blended over the base, with its affine.
    pub blend: Option<(&'a ImageTexture, Affine)>,
    /// The reference mask.
    pub reference: Option<&'a LabelTexture>,
    /// The predicted mask.
    pub predicted: Option<&'a LabelTexture>,
    /// Stands in for a missing mask (a 1-voxel texture of label 0).
    pub empty_labels: &'a LabelTexture,
    /// Voxel→world affine of the masks' grid.
    pub labels_affine: Affine,
    /// Label colours.
    pub lut: &'a LabelLut,
    /// Trilinear (true) or nearest-voxel sampling of the images.
    pub linear: bool,
}

/// Which optional parts a pipeline variant draws (bits: 1 blend, 2 predicted mask, 4 reference
/// outlines); each is compiled with the others' texture fetches left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipelineVariant(u8);

impl PipelineVariant {
    /// The variant a uniform block needs.
    pub fn of(uniform: &SliceUniform) -> Self {
        let mut bits = 0;
        if uniform.blend_opacity > 0.0 {
            bits |= 1;
        }
        if uniform.flags & FLAG_HAS_PREDICTED != 0 && uniform.overlay_opacity[1] > 0.0 {
            bits |= 2;
        }
        if uniform.flags & FLAG_OUTLINE != 0 {
            bits |= 4;
        }
        Self(bits)
    }

    fn constants(self) -> [(&'static str, f64); 3] {
        let on = |b: u8| if self.0 & b != 0 { 1.0 } else { 0.0 };
        [
            ("BLEND", on(1)),
            ("SHOW_PREDICTED", on(2)),
            ("OUTLINE", on(4)),
        ]
    }
}

/// The long-lived part of slice drawing: bind group layout, samplers, and the pipeline
/// variants, each compiled when first needed.
pub struct SlicePipeline {
    shader: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    target: wgpu::TextureFormat,
    nearest: wgpu::Sampler,
    trilinear: wgpu::Sampler,
    variants: std::sync::RwLock<[Option<wgpu::RenderPipeline>; 8]>,
}

pub(super) fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

pub(super) fn texture_entry(
    binding: u32,
    sample_type: wgpu::TextureSampleType,
    dim: wgpu::TextureViewDimension,
) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Texture {
            sample_type,
            view_dimension: dim,
            multisampled: false,
        },
        count: None,
    }
}

/// A pipeline that draws one triangle over the whole viewport with `shader`'s `vs_main` and
/// `fs_main` into a `target` colour attachment, without blending (the slice, blit and flat
/// shaders all draw this way); `constants` set the shader's overridable constants.
pub(super) fn full_view_pipeline(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::PipelineLayout,
    shader: &wgpu::ShaderModule,
    target: wgpu::TextureFormat,
    constants: &[(&str, f64)],
) -> wgpu::RenderPipeline {
    let options = wgpu::PipelineCompilationOptions {
        constants,
        zero_initialize_workgroup_memory: false,
    };
    device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some(label),
        layout: Some(layout),
        vertex: wgpu::VertexState {
            module: shader,
            entry_point: Some("vs_main"),
            compilation_options: options.clone(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: shader,
            entry_point: Some("fs_main"),
            compilation_options: options,
            targets: &[Some(wgpu::ColorTargetState {
                format: target,
                blend: None,
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        multiview_mask: None,
        cache: None,
    })
}

/// Begin a render pass on `view` that first clears it to `clear`.
pub fn clear_pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    view: &wgpu::TextureView,
    clear: wgpu::Color,
    label: &str,
) -> wgpu::RenderPass<'e> {
    encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
        label: Some(label),
        color_attachments: &[Some(wgpu::RenderPassColorAttachment {
            view,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations {
                load: wgpu::LoadOp::Clear(clear),
                store: wgpu::StoreOp::Store,
            },
        })],
        depth_stencil_attachment: None,
        timestamp_writes: None,
        occlusion_query_set: None,
        multiview_mask: None,
    })
}

impl SlicePipeline {
    /// Build for a colour target format (egui's surface format, or `OFFSCREEN_FORMAT`).
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mriloop slice"),
            source: wgpu::ShaderSource::Wgsl(SHADER_SOURCE.into()),
        });
        let d3 = wgpu::TextureViewDimension::D3;
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mriloop slice"),
            entries: &[
                uniform_entry(0),
                texture_entry(1, wgpu::TextureSampleType::Float { filterable: true }, d3),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
                texture_entry(3, wgpu::TextureSampleType::Uint, d3),
                texture_entry(4, wgpu::TextureSampleType::Uint, d3),
                uniform_entry(5),
                texture_entry(6, wgpu::TextureSampleType::Float { filterable: true }, d3),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mriloop slice"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let sampler = |filter, label| {
            device.create_sampler(&wgpu::SamplerDescriptor {
                label: Some(label),
                mag_filter: filter,
                min_filter: filter,
                ..Default::default()
            })
        };
        Self {
            nearest: sampler(wgpu::FilterMode::Nearest, "mriloop nearest"),
            trilinear: sampler(wgpu::FilterMode::Linear, "mriloop trilinear"),
            shader,
            layout,
            pipeline_layout,
            target,
            variants: Default::default(),
        }
    }

    /// Compile a variant if it is not yet (call before drawing with it).
    pub fn ensure(&self, device: &wgpu::Device, variant: PipelineVariant) {
        let i = variant.0 as usize & 7;
        if self.variants.read().map(|v| v[i].is_some()).unwrap_or(true) {
            return;
        }
        let pipeline = full_view_pipeline(
            device,
            "mriloop slice",
            &self.pipeline_layout,
            &self.shader,
            self.target,
            &variant.constants(),
        );
        if let Ok(mut v) = self.variants.write() {
            v[i] = Some(pipeline);
        }
    }

    /// A compiled variant.
    pub fn variant(&self, variant: PipelineVariant) -> Option<wgpu::RenderPipeline> {
        self.variants
            .read()
            .ok()
            .and_then(|v| v[variant.0 as usize & 7].clone())
    }
}

/// The grid of a volume a view samples: where its voxels are and the intensity range its
/// texture was normalised by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridInfo {
    /// Voxel→world affine.
    pub affine: Affine,
    /// Voxel dims.
    pub dims: [usize; 3],
    /// Intensities mapped to 0..1 on upload (labels: unused).
    pub value_range: (f32, f32),
}

/// The grids of everything one view samples; enough to compute its uniform block without the
/// GPU objects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGrids {
    /// The base image.
    pub image: GridInfo,
    /// The blended image.
    pub blend: Option<GridInfo>,
    /// The masks' grid (any grid when there are none).
    pub labels: GridInfo,
    /// A reference mask is bound.
    pub has_reference: bool,
    /// A predicted mask is bound.
    pub has_predicted: bool,
}

/// Per-view draw data: the textures it shows and its uniform buffer.
pub struct SliceBindings {
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    grids: ViewGrids,
    variant: std::sync::atomic::AtomicU8,
}

impl SliceBindings {
    /// Bind the textures a view samples.
    pub fn new(device: &wgpu::Device, pipeline: &SlicePipeline, src: SliceSources<'_>) -> Self {
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop slice uniform"),
            size: std::mem::size_of::<SliceUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let reference_view = src.reference.unwrap_or(src.empty_labels).view();
        let predicted_view = src.predicted.unwrap_or(src.empty_labels).view();
        let blend_view = src.blend.map_or(src.image.view(), |(b, _)| b.view());
        let tex = |binding, view| wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::TextureView(view),
        };
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mriloop slice"),
            layout: &pipeline.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                tex(1, src.image.view()),
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Sampler(if src.linear {
                        &pipeline.trilinear
                    } else {
                        &pipeline.nearest
                    }),
                },
                tex(3, reference_view),
                tex(4, predicted_view),
                wgpu::BindGroupEntry {
                    binding: 5,
                    resource: src.lut.buffer().as_entire_binding(),
                },
                tex(6, blend_view),
            ],
        });
        let labels = src.reference.or(src.predicted).unwrap_or(src.empty_labels);
        let grids = ViewGrids {
            image: GridInfo {
                affine: src.image_affine,
                dims: src.image.dims(),
                value_range: src.image.value_range(),
            },
            blend: src.blend.map(|(b, affine)| GridInfo {
                affine,
                dims: b.dims(),
                value_range: b.value_range(),
            }),
            labels: GridInfo {
                affine: src.labels_affine,
                dims: labels.dims(),
                value_range: (0.0, 1.0),
            },
            has_reference: src.reference.is_some(),
            has_predicted: src.predicted.is_some(),
        };
        Self {
            uniform,
            bind_group,
            grids,
            variant: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// The grids this view samples.
    pub fn grids(&self) -> &ViewGrids {
        &self.grids
    }

    /// The uniform block for a plane, style and view size; `None` for a singular affine.
    pub fn uniform(
        &self,
        plane: &SlicePlane,
        style: &SliceStyle,
        viewport_px: [f32; 2],
    ) -> Option<SliceUniform> {
        SliceUniform::for_view(plane, style, viewport_px, &self.grids)
    }

    /// Write this frame's uniform block and compile the pipeline variant it needs.
    pub fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &SlicePipeline,
        uniform: &SliceUniform,
    ) {
        let variant = PipelineVariant::of(uniform);
        pipeline.ensure(device, variant);
        self.variant
            .store(variant.0, std::sync::atomic::Ordering::Relaxed);
        queue.write_buffer(&self.uniform, 0, bytemuck::bytes_of(uniform));
    }

    /// Draw into a render pass whose viewport is the view's rectangle (with the pipeline variant
    /// `prepare` chose).
    pub fn draw(&self, pipeline: &SlicePipeline, pass: &mut wgpu::RenderPass<'_>) {
        let variant = PipelineVariant(self.variant.load(std::sync::atomic::Ordering::Relaxed));
        let Some(p) = pipeline.variant(variant) else {
            return;
        };
        pass.set_pipeline(&p);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.draw(0..3, 0..1);
    }

    /// Render one view offscreen to RGBA8 pixels (rows top to bottom), for tests, benchmarks
    /// and screenshots. `pipeline` must have been built for `OFFSCREEN_FORMAT`.
    pub fn render_offscreen(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &SlicePipeline,
        uniform: &SliceUniform,
        size: [u32; 2],
    ) -> Result<Vec<u8>, RenderError> {
        self.prepare(device, queue, pipeline, uniform);
        let target = OffscreenTarget::new(device, size);
        target.draw(
            device,
            queue,
            pipeline,
            &[(self, [0.0, 0.0, size[0] as f32, size[1] as f32])],
        );
        target.read_pixels(device, queue)
    }
}

/// An offscreen colour target (`OFFSCREEN_FORMAT` unless made `with_format`) that views draw
/// into, e.g. several views tiled like the app's window, and whose pixels can be read back.
pub struct OffscreenTarget {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    size: [u32; 2],
}

impl OffscreenTarget {
    /// A target of `size` pixels.
    pub fn new(device: &wgpu::Device, size: [u32; 2]) -> Self {
        Self::with_format(device, size, OFFSCREEN_FORMAT)
    }

    /// A target of `size` pixels in `format` (e.g. a window's surface format); `read_pixels`
    /// expects 4 bytes per pixel.
    pub fn with_format(device: &wgpu::Device, size: [u32; 2], format: wgpu::TextureFormat) -> Self {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("mriloop offscreen"),
            size: wgpu::Extent3d {
                width: size[0],
                height: size[1],
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT
                | wgpu::TextureUsages::COPY_SRC
                | wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Self {
            texture,
            view,
            size,
        }
    }

    /// The colour attachment, for callers recording their own pass.
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// Clear the target and draw each view (whose uniform was prepared) into its viewport
    /// `[x, y, width, height]` in pixels; submits the work.
    pub fn draw(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &SlicePipeline,
        views: &[(&SliceBindings, [f32; 4])],
    ) {
        self.draw_with(device, queue, |pass| {
            for (bindings, [x, y, w, h]) in views {
                pass.set_viewport(*x, *y, *w, *h, 0.0, 1.0);
                bindings.draw(pipeline, pass);
            }
        });
    }

    /// Clear the target and record draws with `record` into one render pass; submits the work.
    pub fn draw_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        record: impl FnOnce(&mut wgpu::RenderPass<'_>),
    ) {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = clear_pass(
                &mut encoder,
                &self.view,
                wgpu::Color::BLACK,
                "mriloop offscreen",
            );
            record(&mut pass);
        }
        queue.submit([encoder.finish()]);
    }

    /// Copy the pixels back (RGBA8, rows top to bottom), waiting for the GPU.
    pub fn read_pixels(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<Vec<u8>, RenderError> {
        let size = self.size;
        let row_bytes = size[0] * 4;
        let padded = row_bytes.div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop readback"),
            size: (padded * size[1]) as u64,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &self.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(padded),
                    rows_per_image: Some(size[1]),
                },
            },
            wgpu::Extent3d {
                width: size[0],
                height: size[1],
                depth_or_array_layers: 1,
            },
        );
        queue.submit([encoder.finish()]);
        let slice = readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        wait_idle(device)?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RenderError::Readback(e.to_string())),
            Err(e) => return Err(RenderError::Readback(e.to_string())),
        }
        let mapped = slice
            .get_mapped_range()
            .map_err(|e| RenderError::Readback(e.to_string()))?;
        let mut pixels = Vec::with_capacity((row_bytes * size[1]) as usize);
        for row in mapped.chunks(padded as usize) {
            pixels.extend_from_slice(&row[..row_bytes as usize]);
        }
        drop(mapped);
        readback.unmap();
        Ok(pixels)
    }
}

/// Wait until the GPU has finished all submitted work (for benchmarks and readback).
pub fn wait_idle(device: &wgpu::Device) -> Result<(), RenderError> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| RenderError::Readback(e.to_string()))
}
