//! The review window without a window: the real `MriloopApp` driven frame by frame on an
//! egui-wgpu render state of its own (Mesa's lavapipe here, a real GPU where there is one),
//! each frame laid out, tessellated, rendered offscreen and waited for, so its duration is what
//! a user's frame costs. `mriloop bench loop` measures frame times with it.
//!
//! Invariants: one egui context and one render state per window; a frame returns only after
//! the GPU finished it.

use super::{MriloopApp, Startup};
use std::time::{Duration, Instant};

/// A headless review window.
pub struct HeadlessWindow {
    ctx: egui::Context,
    render_state: egui_wgpu::RenderState,
    app: MriloopApp,
    frame: eframe::Frame,
    target: crate::render::OffscreenTarget,
    size: [u32; 2],
    start: Instant,
    layout: Duration,
}

impl HeadlessWindow {
    /// Open the app at `size` pixels on `startup`.
    pub fn new(size: [u32; 2], startup: Startup) -> Result<Self, String> {
        let setup = egui_wgpu::WgpuSetup::CreateNew(
            egui_wgpu::WgpuSetupCreateNew::without_display_handle(),
        );
        let instance = pollster::block_on(setup.new_instance());
        let render_state = pollster::block_on(egui_wgpu::RenderState::create(
            &egui_wgpu::WgpuConfiguration {
                wgpu_setup: setup,
                ..Default::default()
            },
            &instance,
            None,
            egui_wgpu::RendererOptions::default(),
        ))
        .map_err(|e| format!("no wgpu device: {e}"))?;
        let ctx = egui::Context::default();
        let mut cc = eframe::CreationContext::_new_kittest(ctx.clone());
        cc.wgpu_render_state = Some(render_state.clone());
        let app = MriloopApp::new(&cc, startup);
        let target = crate::render::OffscreenTarget::with_format(
            &render_state.device,
            size,
            render_state.target_format,
        );
        Ok(Self {
            ctx,
            render_state,
            app,
            frame: eframe::Frame::_new_kittest(),
            target,
            size,
            start: Instant::now(),
            layout: Duration::ZERO,
        })
    }

    /// The app.
    pub fn app(&self) -> &MriloopApp {
        &self.app
    }

    /// The app, to queue commands.
    pub fn app_mut(&mut self) -> &mut MriloopApp {
        &mut self.app
    }

    /// How long the last frame's layout took (the app's code and egui, before tessellation
    /// and rendering).
    pub fn last_layout(&self) -> Duration {
        self.layout
    }

    /// The adapter the window renders with.
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.render_state.adapter.get_info()
    }

    /// Run frames (pausing `pause` between them, so background work goes on) until `done`
    /// holds or `timeout` passes; returns whether it holds.
    pub fn run_until(
        &mut self,
        done: impl Fn(&Self) -> bool,
        timeout: Duration,
        pause: Duration,
    ) -> bool {
        let t = Instant::now();
        while !done(self) && t.elapsed() < timeout {
            self.frame(Vec::new());
            std::thread::sleep(pause);
        }
        done(self)
    }

    /// Bytes of GPU memory the open case's textures take (0 with no case).
    pub fn case_gpu_bytes(&self) -> usize {
        let renderer = self.render_state.renderer.read();
        renderer
            .callback_resources
            .get::<super::bridge::ViewerGpu>()
            .and_then(|g| g.case())
            .map_or(0, |c| c.gpu_bytes())
    }

    /// Run one frame with `events` as input: layout, tessellation, rendering, and the wait for
    /// the GPU. Returns how long it took.
    pub fn frame(&mut self, events: Vec<egui::Event>) -> Duration {
        use eframe::App;
        let t = Instant::now();
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(self.size[0] as f32, self.size[1] as f32),
            )),
            time: Some(self.start.elapsed().as_secs_f64()),
            events,
            ..Default::default()
        };
        let (app, frame) = (&mut self.app, &mut self.frame);
        let output = self.ctx.run_ui(input, |ui| app.ui(ui, frame));
        self.layout = t.elapsed();
        let rs = &self.render_state;
        let mut renderer = rs.renderer.write();
        for (id, images) in &output.textures_delta.set {
            for image in images {
                renderer.update_texture(&rs.device, &rs.queue, *id, image);
            }
        }
        let jobs = self.ctx.tessellate(output.shapes, 1.0);
        let screen = egui_wgpu::ScreenDescriptor {
            size_in_pixels: self.size,
            pixels_per_point: 1.0,
        };
        let [r, g, b, a] =
            super::background_colour(&self.ctx.global_style().visuals).to_normalized_gamma_f32();
        let clear = wgpu::Color {
            r: f64::from(r),
            g: f64::from(g),
            b: f64::from(b),
            a: f64::from(a),
        };
        paint_jobs(
            &mut renderer,
            (&rs.device, &rs.queue),
            &jobs,
            &screen,
            self.target.view(),
            clear,
        );
        for id in &output.textures_delta.free {
            renderer.free_texture(id);
        }
        drop(renderer);
        let _ = crate::render::wait_idle(&rs.device);
        t.elapsed()
    }
}

/// Draw tessellated egui `jobs` into `view` (cleared to `clear` first) and submit the work.
pub fn paint_jobs(
    renderer: &mut egui_wgpu::Renderer,
    (device, queue): (&wgpu::Device, &wgpu::Queue),
    jobs: &[egui::ClippedPrimitive],
    screen: &egui_wgpu::ScreenDescriptor,
    view: &wgpu::TextureView,
    clear: wgpu::Color,
) {
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    let extra = renderer.update_buffers(device, queue, &mut encoder, jobs, screen);
    {
        let mut pass =
            crate::render::clear_pass(&mut encoder, view, clear, "mriloop egui offscreen")
                .forget_lifetime();
        renderer.render(&mut pass, jobs, screen);
    }
    queue.submit(extra.into_iter().chain([encoder.finish()]));
}
