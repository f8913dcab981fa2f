//! `FlatPipeline` (`shaders/flat.wgsl`): a flat colour over a viewport, the cheapest full-view
//! draw. Benchmarks draw it at the size of the slice views to measure the device's own cost per
//! pixel, the floor under any slice shader.

/// The WGSL source of the flat shader.
pub const FLAT_SHADER_SOURCE: &str = include_str!("../../shaders/flat.wgsl");

/// A pipeline drawing a flat colour over the viewport (no bindings).
pub struct FlatPipeline {
    pipeline: wgpu::RenderPipeline,
}

impl FlatPipeline {
    /// Build for a colour target format.
    pub fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mriloop flat"),
            source: wgpu::ShaderSource::Wgsl(FLAT_SHADER_SOURCE.into()),
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mriloop flat"),
            bind_group_layouts: &[],
            immediate_size: 0,
        });
        let pipeline =
            super::slice::full_view_pipeline(device, "mriloop flat", &layout, &shader, target, &[]);
        Self { pipeline }
    }

    /// Draw over the pass's current viewport.
    pub fn draw(&self, pass: &mut wgpu::RenderPass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.draw(0..3, 0..1);
    }
}
