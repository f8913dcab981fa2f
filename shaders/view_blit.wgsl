// A slice view drawn from its cached rendering: the view's last slice image (rendered by
// slice.wgsl into a texture of the view's size, without crosshair) copied pixel for pixel into
// the view, with the crosshair drawn on top exactly as slice.wgsl draws it. Views whose plane,
// style and volumes did not change since the last frame cost one texture fetch per pixel instead
// of the slice shader's 3D samples, overlays and outline tests.

// keep in sync with `BlitUniform` in src/render/cache.rs
struct BlitUniform {
    // Crosshair position in NDC.
    crosshair_ndc: vec2<f32>,
    // View size in physical pixels.
    viewport_px: vec2<f32>,
    // 1: draw the crosshair.
    show_crosshair: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> u: BlitUniform;
@group(0) @binding(1) var view_tex: texture_2d<f32>;
@group(0) @binding(2) var view_sampler: sampler;

struct VsOut {
    @builtin(position) position: vec4<f32>,
    @location(0) ndc: vec2<f32>,
}

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    let x = f32((i << 1u) & 2u) * 2.0 - 1.0;
    let y = f32(i & 2u) * 2.0 - 1.0;
    var out: VsOut;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    out.ndc = vec2<f32>(x, y);
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    // Pixel centres of the view land on texel centres of the cached image (same size).
    let uv = vec2<f32>(0.5 + 0.5 * in.ndc.x, 0.5 - 0.5 * in.ndc.y);
    var rgb = textureSampleLevel(view_tex, view_sampler, uv, 0.0).rgb;
    if u.show_crosshair != 0u {
        let d = abs(in.ndc - u.crosshair_ndc) * u.viewport_px * 0.5;
        if d.x < 0.5 || d.y < 0.5 {
            rgb = mix(rgb, vec3<f32>(0.2, 1.0, 0.2), 0.8);
        }
    }
    return vec4<f32>(rgb, 1.0);
}
