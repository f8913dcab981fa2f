// Label surfaces in the 3D view: triangles in world mm, lit from the camera's side (two-sided,
// so an open or inside-out face still reads), in the label's colour and opacity.

// keep in sync with `SurfaceUniform` in src/render/surface3d.rs
struct SurfaceUniform {
    view_proj: mat4x4<f32>,
    color: vec4<f32>,
    light_dir: vec4<f32>,
};

@group(0) @binding(0) var<uniform> u: SurfaceUniform;

struct VsOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) normal: vec3<f32>,
};

@vertex
fn vs_main(@location(0) pos_mm: vec3<f32>, @location(1) normal: vec3<f32>) -> VsOut {
    var out: VsOut;
    out.clip = u.view_proj * vec4<f32>(pos_mm, 1.0);
    out.normal = normal;
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let n = normalize(in.normal);
    let l = normalize(u.light_dir.xyz);
    let diffuse = abs(dot(n, l));
    let shade = 0.3 + 0.7 * diffuse;
    return vec4<f32>(u.color.rgb * shade, u.color.a);
}
