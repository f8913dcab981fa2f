// Slice planes in the 3D view: a quad in world mm (two triangles from the vertex index)
// textured with its slice view's cached image; texture coordinates outside 0–1 (a zoomed view
// shows less than the quad) are left out.

// keep in sync with `PlaneUniform` in src/render/plane3d.rs
struct PlaneUniform {
    view_proj: mat4x4<f32>,
    // Corners (world mm, w unused): bottom left, bottom right, top right, top left.
    corners: array<vec4<f32>, 4>,
    // Each corner's texture coordinates (xy), zw unused.
    uvs: array<vec4<f32>, 4>,
};

@group(0) @binding(0) var<uniform> u: PlaneUniform;
@group(0) @binding(1) var image: texture_2d<f32>;
@group(0) @binding(2) var image_sampler: sampler;

struct VsOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    var corner_of = array<u32, 6>(0u, 1u, 2u, 0u, 2u, 3u);
    let c = corner_of[i];
    var out: VsOut;
    out.clip = u.view_proj * vec4<f32>(u.corners[c].xyz, 1.0);
    out.uv = u.uvs[c].xy;
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let colour = textureSampleLevel(image, image_sampler, in.uv, 0.0);
    if (any(in.uv < vec2<f32>(0.0)) || any(in.uv > vec2<f32>(1.0))) {
        discard;
    }
    return vec4<f32>(colour.rgb, 1.0);
}
