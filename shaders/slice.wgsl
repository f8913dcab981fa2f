// One slice view: samples an image volume (3D texture) on an arbitrary plane, applies
// window/level and a colour map, overlays the reference and predicted label masks (3D r8uint
// textures through a 256-entry colour table) and draws the crosshair.
//
// The plane is given as one matrix per volume mapping the view's normalised device coordinates
// (x, y in -1..1, z = 0) to that volume's texture coordinates (0..1 across the voxel grid,
// voxel centres at (i + 0.5) / n). The CPU composes it from the view (centre, axes, zoom in mm)
// and the inverse voxel→world affine, so oblique and anisotropic volumes land where they belong.
//
// Software rasterisers (Mesa's llvmpipe) pay for every texture instruction in the shader, even
// in branches not taken; so the optional parts (a blended image, the predicted mask, outlines)
// are switched by pipeline-overridable constants, and each combination is its own pipeline with
// the unused fetches compiled out. Nearest or trilinear sampling is the bound sampler's choice.

// keep in sync with `SliceUniform` in src/render/slice.rs
struct SliceUniform {
    image_from_ndc: mat4x4<f32>,
    labels_from_ndc: mat4x4<f32>,
    // NDC → texture coordinates of the blended (second) image.
    blend_from_ndc: mat4x4<f32>,
    // Window in normalised intensity (0..1 across the volume's value range): low, high.
    window: vec2<f32>,
    // Crosshair position in NDC.
    crosshair_ndc: vec2<f32>,
    // View size in physical pixels.
    viewport_px: vec2<f32>,
    // Opacity of the reference and predicted overlays.
    overlay_opacity: vec2<f32>,
    // Bit flags: see FLAG_* below.
    flags: u32,
    // 0 = grey, 1 = hot, 2 = diverging (blue-white-red).
    colormap: u32,
    // Window of the blended image in its normalised intensity: low, high.
    blend_window: vec2<f32>,
    // Opacity of the blended image over the base image (0 = not shown).
    blend_opacity: f32,
    // Colour map of the blended image.
    blend_colormap: u32,
    _pad: vec2<u32>,
}

// Draw a second image blended over the base one.
override BLEND: bool = false;
// Draw the predicted mask (as outlines).
override SHOW_PREDICTED: bool = false;
// Draw the reference mask as outlines only.
override OUTLINE: bool = false;

const FLAG_CROSSHAIR: u32 = 4u;
const FLAG_HAS_REFERENCE: u32 = 8u;
const FLAG_HAS_PREDICTED: u32 = 16u;
// The blended image is transparent below its window (a statistic map over anatomy).
const FLAG_BLEND_CLIP: u32 = 32u;

@group(0) @binding(0) var<uniform> u: SliceUniform;
@group(0) @binding(1) var image_tex: texture_3d<f32>;
@group(0) @binding(2) var image_sampler: sampler;
@group(0) @binding(3) var reference_tex: texture_3d<u32>;
@group(0) @binding(4) var predicted_tex: texture_3d<u32>;
// Label colours (RGBA, alpha = opacity multiplier), indexed by label value.
@group(0) @binding(5) var<uniform> lut: array<vec4<f32>, 256>;
@group(0) @binding(6) var blend_tex: texture_3d<f32>;

struct VsOut {
    @builtin(position) position: vec4<f32>,
    @location(0) ndc: vec2<f32>,
}

// A single triangle covering the viewport.
@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    let x = f32((i << 1u) & 2u) * 2.0 - 1.0;
    let y = f32(i & 2u) * 2.0 - 1.0;
    var out: VsOut;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    out.ndc = vec2<f32>(x, y);
    return out;
}

fn inside(t: vec3<f32>) -> bool {
    return all(t >= vec3<f32>(0.0)) && all(t < vec3<f32>(1.0));
}

fn colormap(v: f32, which: u32) -> vec3<f32> {
    let x = clamp(v, 0.0, 1.0);
    if which == 1u {
        // hot: black → red → yellow → white
        return clamp(vec3<f32>(3.0 * x, 3.0 * x - 1.0, 3.0 * x - 2.0), vec3<f32>(0.0), vec3<f32>(1.0));
    }
    if which == 2u {
        // diverging: blue → white → red
        if x < 0.5 {
            let t = x * 2.0;
            return vec3<f32>(t, t, 1.0);
        }
        let t = (1.0 - x) * 2.0;
        return vec3<f32>(1.0, t, t);
    }
    return vec3<f32>(x, x, x);
}

fn label_at(tex: texture_3d<u32>, t: vec3<f32>) -> u32 {
    if !inside(t) {
        return 0u;
    }
    let dims = vec3<f32>(textureDimensions(tex));
    let idx = vec3<i32>(floor(t * dims));
    return textureLoad(tex, idx, 0).r;
}

// Whether the label at `t` differs from a neighbour one screen pixel away (an outline pixel).
fn is_edge(tex: texture_3d<u32>, ndc: vec2<f32>, label: u32) -> bool {
    let step = 2.0 / u.viewport_px;
    let offsets = array<vec2<f32>, 4>(
        vec2<f32>(step.x, 0.0), vec2<f32>(-step.x, 0.0), vec2<f32>(0.0, step.y), vec2<f32>(0.0, -step.y)
    );
    for (var k = 0; k < 4; k++) {
        let p = ndc + offsets[k];
        let t = (u.labels_from_ndc * vec4<f32>(p, 0.0, 1.0)).xyz;
        if label_at(tex, t) != label {
            return true;
        }
    }
    return false;
}

fn overlay(base: vec3<f32>, tex: texture_3d<u32>, ndc: vec2<f32>, opacity: f32, outline: bool) -> vec3<f32> {
    let t = (u.labels_from_ndc * vec4<f32>(ndc, 0.0, 1.0)).xyz;
    let label = label_at(tex, t);
    if label == 0u || opacity <= 0.0 {
        return base;
    }
    if outline && !is_edge(tex, ndc, label) {
        return base;
    }
    let c = lut[label];
    let a = opacity * c.a;
    return mix(base, c.rgb, a);
}

// Intensity (normalised) of `tex` at texture coordinate `t` (nearest or trilinear: the sampler's).
fn intensity(tex: texture_3d<f32>, t: vec3<f32>) -> f32 {
    return textureSampleLevel(tex, image_sampler, t, 0.0).r;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let p = vec4<f32>(in.ndc, 0.0, 1.0);
    let t = (u.image_from_ndc * p).xyz;
    var rgb = vec3<f32>(0.0);
    if inside(t) {
        let w = max(u.window.y - u.window.x, 1e-6);
        rgb = colormap((intensity(image_tex, t) - u.window.x) / w, u.colormap);
    }
    if BLEND && u.blend_opacity > 0.0 {
        let tb = (u.blend_from_ndc * p).xyz;
        if inside(tb) {
            let wb = max(u.blend_window.y - u.blend_window.x, 1e-6);
            let vb = (intensity(blend_tex, tb) - u.blend_window.x) / wb;
            if (u.flags & FLAG_BLEND_CLIP) == 0u || vb >= 0.0 {
                rgb = mix(rgb, colormap(vb, u.blend_colormap), u.blend_opacity);
            }
        }
    }
    if (u.flags & FLAG_HAS_REFERENCE) != 0u {
        rgb = overlay(rgb, reference_tex, in.ndc, u.overlay_opacity.x, OUTLINE);
    }
    if SHOW_PREDICTED && (u.flags & FLAG_HAS_PREDICTED) != 0u {
        // The prediction is always drawn as an outline, so both masks stay readable together.
        rgb = overlay(rgb, predicted_tex, in.ndc, u.overlay_opacity.y, true);
    }
    if (u.flags & FLAG_CROSSHAIR) != 0u {
        let d = abs(in.ndc - u.crosshair_ndc) * u.viewport_px * 0.5;
        if d.x < 0.5 || d.y < 0.5 {
            rgb = mix(rgb, vec3<f32>(0.2, 1.0, 0.2), 0.8);
        }
    }
    return vec4<f32>(rgb, 1.0);
}
