//! The slice planes in the 3D view: each a quad in world mm (the slice's plane clipped to the
//! case's world box) textured with its slice view's cached image, drawn opaque with depth so
//! the label surfaces in front of it show and those behind it are hidden
//! (`shaders/plane3d.wgsl`).
//!
//! Invariants: knows no egui and no project; a plane's bind group holds the texture view it was
//! made with, so it is made anew whenever that view's image is (re)created; texture coordinates
//! outside 0–1 draw nothing.

use super::surface3d::DEPTH_FORMAT;
use glam::{DVec3, Mat4};

/// The WGSL source of the plane shader.
pub const PLANE_SHADER_SOURCE: &str = include_str!("../../shaders/plane3d.wgsl");

/// A plane's uniform block.
// keep in sync with `PlaneUniform` in shaders/plane3d.wgsl
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct PlaneUniform {
    view_proj: [[f32; 4]; 4],
    corners: [[f32; 4]; 4],
    uvs: [[f32; 4]; 4],
}

/// A textured quad: four world corners (bottom left, bottom right, top right, top left) and
/// where each falls in its image (0–1, rows top to bottom).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaneQuad {
    /// Corners in world mm.
    pub corners_mm: [[f32; 3]; 4],
    /// Each corner's texture coordinates.
    pub uvs: [[f32; 2]; 4],
}

impl PlaneQuad {
    /// The part of a slice view's plane inside the world box `[lo, hi]` (mm): the plane through
    /// `centre_mm` with unit `right` and `up` (axis-aligned), its image spanning
    /// `half_extent_mm` either side of the centre.
    pub fn clipped(
        (centre_mm, right, up, half_extent_mm): (DVec3, DVec3, DVec3, [f64; 2]),
        (lo, hi): (DVec3, DVec3),
    ) -> Self {
        // The box's span along right and up, relative to the centre.
        let span = |dir: DVec3| {
            let (a, b) = ((lo - centre_mm).dot(dir), (hi - centre_mm).dot(dir));
            (a.min(b), a.max(b))
        };
        let ((r0, r1), (u0, u1)) = (span(right), span(up));
        let corner = |r: f64, u: f64| {
            let p = centre_mm + right * r + up * u;
            let uv = [
                (0.5 + r / (2.0 * half_extent_mm[0])) as f32,
                (0.5 - u / (2.0 * half_extent_mm[1])) as f32,
            ];
            (p.as_vec3().to_array(), uv)
        };
        let c = [
            corner(r0, u0),
            corner(r1, u0),
            corner(r1, u1),
            corner(r0, u1),
        ];
        Self {
            corners_mm: c.map(|(p, _)| p),
            uvs: c.map(|(_, uv)| uv),
        }
    }
}

/// A plane ready to draw: its uniform block and the bind group with its image.
pub struct PlaneDraw {
    quad: PlaneQuad,
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

/// The long-lived part: the pipeline, its layout and the sampler.
pub struct PlanePipeline {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::RenderPipeline,
    sampler: wgpu::Sampler,
}

fn layout_entry(binding: u32, ty: wgpu::BindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
        ty,
        count: None,
    }
}

impl PlanePipeline {
    /// Build for a colour target format (with `DEPTH_FORMAT` depth).
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mriloop plane3d"),
            source: wgpu::ShaderSource::Wgsl(PLANE_SHADER_SOURCE.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mriloop plane3d"),
            entries: &[
                layout_entry(
                    0,
                    wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                ),
                layout_entry(
                    1,
                    wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                ),
                layout_entry(
                    2,
                    wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                ),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mriloop plane3d"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("mriloop plane3d"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: target,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: Some(wgpu::DepthStencilState {
                format: DEPTH_FORMAT,
                depth_write_enabled: Some(true),
                depth_compare: Some(wgpu::CompareFunction::Less),
                stencil: Default::default(),
                bias: Default::default(),
            }),
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("mriloop plane3d"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        Self {
            layout,
            pipeline,
            sampler,
        }
    }

    /// A plane drawing `quad` with the image in `texture_view`.
    pub fn plane(
        &self,
        device: &wgpu::Device,
        texture_view: &wgpu::TextureView,
        quad: PlaneQuad,
    ) -> PlaneDraw {
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop plane3d uniform"),
            size: std::mem::size_of::<PlaneUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mriloop plane3d"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(texture_view),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Sampler(&self.sampler),
                },
            ],
        });
        PlaneDraw {
            quad,
            uniform,
            bind_group,
        }
    }

    /// Write each plane's uniform for `view_proj` (before the pass).
    pub fn write(&self, queue: &wgpu::Queue, planes: &[PlaneDraw], view_proj: Mat4) {
        for p in planes {
            let u = PlaneUniform {
                view_proj: view_proj.to_cols_array_2d(),
                corners: p.quad.corners_mm.map(|c| [c[0], c[1], c[2], 1.0]),
                uvs: p.quad.uvs.map(|t| [t[0], t[1], 0.0, 0.0]),
            };
            queue.write_buffer(&p.uniform, 0, bytemuck::bytes_of(&u));
        }
    }

    /// Draw `planes` into a pass with a depth attachment.
    pub fn draw(&self, pass: &mut wgpu::RenderPass<'_>, planes: &[PlaneDraw]) {
        if planes.is_empty() {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        for p in planes {
            pass.set_bind_group(0, &p.bind_group, &[]);
            pass.draw(0..6, 0..1);
        }
    }
}
