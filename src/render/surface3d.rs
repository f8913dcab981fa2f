//! The 3D view's surfaces on the GPU: each label's mesh (world mm) in its own vertex and index
//! buffers, drawn lit in its colour — opaque with depth, or translucent (blended, depth tested
//! but not written, drawn after the opaque ones) — through a camera that orbits a target,
//! orthographic or perspective, into an offscreen colour target with its own depth buffer.
//!
//! Invariants: knows no egui and no project; a mesh is uploaded once and drawn every frame the
//! view is re-rendered; an empty mesh draws nothing; the camera's up and viewing direction are
//! never parallel (pitch stays inside ±89°).

use super::plane3d::{PlaneDraw, PlanePipeline};
use super::{OffscreenTarget, RenderError};
use crate::volume::surface::Mesh;
use glam::{Mat4, Vec3};
use wgpu::util::DeviceExt;

/// The WGSL source of the surface shader.
pub const SURFACE_SHADER_SOURCE: &str = include_str!("../../shaders/surface.wgsl");
/// The depth buffer's format.
pub const DEPTH_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;

/// One draw's uniform block.
// keep in sync with `SurfaceUniform` in shaders/surface.wgsl
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SurfaceUniform {
    /// World mm → clip space.
    pub view_proj: [[f32; 4]; 4],
    /// RGBA, 0–1 (alpha < 1: translucent).
    pub color: [f32; 4],
    /// Towards the light (world), w unused.
    pub light_dir: [f32; 4],
}

/// A camera orbiting `target_mm`: yaw about the world's z (superior) axis, pitch above the
/// axial plane; orthographic (`half_height_mm` of world a half view) or perspective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrbitCamera {
    /// The point looked at (world mm).
    pub target_mm: [f32; 3],
    /// Degrees about +z from looking along +y (from anterior: yaw 0 looks at the face).
    pub yaw_deg: f32,
    /// Degrees above the axial plane (90: from above).
    pub pitch_deg: f32,
    /// Half the view's height in world mm (orthographic), or at the target (perspective).
    pub half_height_mm: f32,
    /// Perspective instead of orthographic.
    pub perspective: bool,
}

impl OrbitCamera {
    /// Looking at `target_mm` from `yaw_deg`, `pitch_deg`, `half_height_mm` of world a half view.
    pub fn new(target_mm: [f32; 3], yaw_deg: f32, pitch_deg: f32, half_height_mm: f32) -> Self {
        Self {
            target_mm,
            yaw_deg,
            pitch_deg: pitch_deg.clamp(-89.0, 89.0),
            half_height_mm: half_height_mm.max(1e-3),
            perspective: false,
        }
    }

    /// The unit direction from the target towards the eye.
    pub fn eye_dir(&self) -> Vec3 {
        let (yaw, pitch) = (self.yaw_deg.to_radians(), self.pitch_deg.to_radians());
        Vec3::new(
            -yaw.sin() * pitch.cos(),
            yaw.cos() * pitch.cos(),
            pitch.sin(),
        )
    }

    /// The view plane's unit right and up directions in world space (as drawn on screen).
    pub fn right_up(&self) -> (Vec3, Vec3) {
        let forward = -self.eye_dir();
        let right = forward.cross(Vec3::Z).normalize_or_zero();
        (right, right.cross(forward))
    }

    /// The viewing ray through a point of the view (NDC, x right, y up, −1…1) for a view
    /// `aspect` wide: its origin in front of everything drawn and its unit direction (world).
    pub fn ray(&self, ndc: [f32; 2], aspect: f32) -> Option<(Vec3, Vec3)> {
        let inverse = self.view_proj(aspect).inverse();
        let near = inverse.project_point3(Vec3::new(ndc[0], ndc[1], 0.0));
        let far = inverse.project_point3(Vec3::new(ndc[0], ndc[1], 1.0));
        let dir = (far - near).normalize_or_zero();
        (near.is_finite() && dir != Vec3::ZERO).then_some((near, dir))
    }

    /// World mm → clip space for a view `aspect` (width / height) wide.
    pub fn view_proj(&self, aspect: f32) -> Mat4 {
        let target = Vec3::from_array(self.target_mm);
        let h = self.half_height_mm;
        let distance = 4.0 * h;
        let eye = target + self.eye_dir() * distance;
        let view = Mat4::look_at_rh(eye, target, Vec3::Z);
        let proj = if self.perspective {
            let fov = 2.0 * (h / distance).atan();
            Mat4::perspective_rh(fov, aspect.max(1e-3), distance * 0.05, distance * 3.0)
        } else {
            let w = h * aspect.max(1e-3);
            Mat4::orthographic_rh(-w, w, -h, h, 0.0, distance * 2.0)
        };
        proj * view
    }
}

/// The long-lived part: the pipelines (opaque and translucent) and their layout.
pub struct SurfacePipeline {
    layout: wgpu::BindGroupLayout,
    opaque: wgpu::RenderPipeline,
    translucent: wgpu::RenderPipeline,
}

impl SurfacePipeline {
    /// Build for a colour target format.
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mriloop surface"),
            source: wgpu::ShaderSource::Wgsl(SURFACE_SHADER_SOURCE.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mriloop surface"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mriloop surface"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let make = |blend: bool| surface_pipeline(device, &pipeline_layout, &shader, target, blend);
        Self {
            opaque: make(false),
            translucent: make(true),
            layout,
        }
    }
}

/// A triangle pipeline over (position, normal) vertices with depth: opaque, or blended without
/// depth writes.
fn surface_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::PipelineLayout,
    shader: &wgpu::ShaderModule,
    target: wgpu::TextureFormat,
    blend: bool,
) -> wgpu::RenderPipeline {
    const ATTRIBUTES: [wgpu::VertexAttribute; 2] =
        wgpu::vertex_attr_array![0 => Float32x3, 1 => Float32x3];
    device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("mriloop surface"),
        layout: Some(layout),
        vertex: wgpu::VertexState {
            module: shader,
            entry_point: Some("vs_main"),
            compilation_options: Default::default(),
            buffers: &[Some(wgpu::VertexBufferLayout {
                array_stride: 24,
                step_mode: wgpu::VertexStepMode::Vertex,
                attributes: &ATTRIBUTES,
            })],
        },
        fragment: Some(wgpu::FragmentState {
            module: shader,
            entry_point: Some("fs_main"),
            compilation_options: Default::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: target,
                blend: blend.then_some(wgpu::BlendState::ALPHA_BLENDING),
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        // Surfaces are closed and wound counter-clockwise seen from outside: their back faces
        // are hidden behind their front ones (and a translucent one blends its near side only).
        primitive: wgpu::PrimitiveState {
            cull_mode: Some(wgpu::Face::Back),
            ..Default::default()
        },
        depth_stencil: Some(wgpu::DepthStencilState {
            format: DEPTH_FORMAT,
            depth_write_enabled: Some(!blend),
            depth_compare: Some(wgpu::CompareFunction::Less),
            stencil: Default::default(),
            bias: Default::default(),
        }),
        multisample: wgpu::MultisampleState::default(),
        multiview_mask: None,
        cache: None,
    })
}

/// One mesh on the GPU with its own uniform block.
pub struct SurfaceMesh {
    vertices: wgpu::Buffer,
    indices: wgpu::Buffer,
    index_count: u32,
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    /// RGBA, 0–1.
    pub color: [f32; 4],
}

impl SurfaceMesh {
    /// Upload `mesh` (`None` when it has no triangles), to be drawn in `color`.
    pub fn upload(
        device: &wgpu::Device,
        pipeline: &SurfacePipeline,
        mesh: &Mesh,
        color: [f32; 4],
    ) -> Option<Self> {
        if mesh.indices.is_empty() {
            return None;
        }
        let interleaved: Vec<[f32; 6]> = mesh
            .positions_mm
            .iter()
            .zip(&mesh.normals)
            .map(|(p, n)| [p[0], p[1], p[2], n[0], n[1], n[2]])
            .collect();
        let buffer = |label: &str, contents: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let vertices = buffer(
            "mriloop surface vertices",
            bytemuck::cast_slice(&interleaved),
            wgpu::BufferUsages::VERTEX,
        );
        let indices = buffer(
            "mriloop surface indices",
            bytemuck::cast_slice(&mesh.indices),
            wgpu::BufferUsages::INDEX,
        );
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop surface uniform"),
            size: std::mem::size_of::<SurfaceUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mriloop surface"),
            layout: &pipeline.layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }],
        });
        Some(Self {
            vertices,
            indices,
            index_count: mesh.indices.len() as u32,
            uniform,
            bind_group,
            color,
        })
    }
}

/// An offscreen colour target with a depth buffer of its size.
pub struct SurfaceTarget {
    /// The colour target (read back with `read_pixels`).
    pub color: OffscreenTarget,
    depth: wgpu::TextureView,
    size: [u32; 2],
}

impl SurfaceTarget {
    /// A target of `size` pixels in `OFFSCREEN_FORMAT`.
    pub fn new(device: &wgpu::Device, size: [u32; 2]) -> Self {
        Self::with_format(device, size, super::OFFSCREEN_FORMAT)
    }

    /// A target of `size` pixels in colour `format` (e.g. the window's, to blit it there).
    pub fn with_format(device: &wgpu::Device, size: [u32; 2], format: wgpu::TextureFormat) -> Self {
        let depth = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("mriloop surface depth"),
            size: wgpu::Extent3d {
                width: size[0],
                height: size[1],
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: DEPTH_FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            view_formats: &[],
        });
        Self {
            color: OffscreenTarget::with_format(device, size, format),
            depth: depth.create_view(&wgpu::TextureViewDescriptor::default()),
            size,
        }
    }

    /// Clear to `background` and draw `meshes` through `camera` (opaque ones first); submits.
    pub fn render(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &SurfacePipeline,
        meshes: &[&SurfaceMesh],
        (camera, background): (&OrbitCamera, wgpu::Color),
    ) {
        self.render_scene(
            device,
            queue,
            (pipeline, meshes),
            None,
            (camera, background),
        );
    }

    /// Clear to `background` and draw the slice `planes`, then `meshes` (opaque ones first)
    /// through `camera`; submits.
    pub fn render_scene(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        surfaces: (&SurfacePipeline, &[&SurfaceMesh]),
        planes: Option<(&PlanePipeline, &[PlaneDraw])>,
        camera_background: (&OrbitCamera, wgpu::Color),
    ) {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        self.encode_scene(&mut encoder, queue, surfaces, planes, camera_background);
        queue.submit([encoder.finish()]);
    }

    /// `render_scene` recorded into `encoder` (after what it already holds, e.g. the slice
    /// images the planes show); the uniforms are written through `queue`.
    pub fn encode_scene(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        queue: &wgpu::Queue,
        (pipeline, meshes): (&SurfacePipeline, &[&SurfaceMesh]),
        planes: Option<(&PlanePipeline, &[PlaneDraw])>,
        (camera, background): (&OrbitCamera, wgpu::Color),
    ) {
        let aspect = self.size[0] as f32 / self.size[1].max(1) as f32;
        let view_proj_mat = camera.view_proj(aspect);
        if let Some((plane_pipeline, planes)) = planes {
            plane_pipeline.write(queue, planes, view_proj_mat);
        }
        let view_proj = view_proj_mat.to_cols_array_2d();
        let eye = camera.eye_dir();
        for m in meshes {
            let u = SurfaceUniform {
                view_proj,
                color: m.color,
                light_dir: [eye.x, eye.y, eye.z, 0.0],
            };
            queue.write_buffer(&m.uniform, 0, bytemuck::bytes_of(&u));
        }
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("mriloop surfaces"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: self.color.view(),
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(background),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
                view: &self.depth,
                depth_ops: Some(wgpu::Operations {
                    load: wgpu::LoadOp::Clear(1.0),
                    store: wgpu::StoreOp::Store,
                }),
                stencil_ops: None,
            }),
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        if let Some((plane_pipeline, planes)) = planes {
            plane_pipeline.draw(&mut pass, planes);
        }
        for translucent in [false, true] {
            let p = if translucent {
                &pipeline.translucent
            } else {
                &pipeline.opaque
            };
            pass.set_pipeline(p);
            for m in meshes.iter().filter(|m| (m.color[3] < 1.0) == translucent) {
                pass.set_bind_group(0, &m.bind_group, &[]);
                pass.set_vertex_buffer(0, m.vertices.slice(..));
                pass.set_index_buffer(m.indices.slice(..), wgpu::IndexFormat::Uint32);
                pass.draw_indexed(0..m.index_count, 0, 0..1);
            }
        }
    }

    /// Its size in pixels.
    pub fn size(&self) -> [u32; 2] {
        self.size
    }

    /// The rendered pixels (RGBA8, rows top to bottom).
    pub fn read_pixels(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<Vec<u8>, RenderError> {
        self.color.read_pixels(device, queue)
    }
}
