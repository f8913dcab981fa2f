//! GPU copies of volumes: an image as an `R16Float` 3D texture holding intensities normalised to
//! its value range (filterable everywhere, half the memory of f32: a 512³ volume is 256 MiB), a
//! label mask as an `R8Uint` 3D texture, and a 256-entry label colour table.
//!
//! Invariants: a texture is uploaded once, in z-slabs so no staging copy exceeds
//! `MAX_UPLOAD_BYTES`; a mask edit rewrites only its sub-box (`LabelTexture::update_sub_box`);
//! a 4D series holds one 3D frame (or summary) on the GPU and rewrites it in place when the
//! shown time point changes (`ImageTexture::write_values`).

use crate::volume::Volume;
use half::f16;

/// Largest single upload (bytes); bigger volumes go up in slabs of whole z-slices.
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;

/// Errors creating GPU resources.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No usable GPU adapter or device.
    #[error("no usable GPU device: {0}")]
    NoDevice(String),
    /// Reading rendered pixels back failed.
    #[error("reading pixels back from the GPU failed: {0}")]
    Readback(String),
    /// The volume does not fit the device's 3D texture limit.
    #[error("volume {dims:?} exceeds this GPU's 3D texture limit of {limit} voxels per axis")]
    TooLarge {
        /// The volume's dims.
        dims: [usize; 3],
        /// `max_texture_dimension_3d`.
        limit: u32,
    },
    /// Values that do not fill the texture they are written to.
    #[error("{0}")]
    Shape(String),
    /// A sub-box lies outside the texture.
    #[error("sub-box {min:?}..{max:?} is outside the {dims:?} texture")]
    BadBox {
        /// Inclusive lower corner.
        min: [usize; 3],
        /// Exclusive upper corner.
        max: [usize; 3],
        /// Texture dims.
        dims: [usize; 3],
    },
}

fn check_dims(device: &wgpu::Device, dims: [usize; 3]) -> Result<wgpu::Extent3d, RenderError> {
    let limit = device.limits().max_texture_dimension_3d;
    if dims.iter().any(|d| *d == 0 || *d > limit as usize) {
        return Err(RenderError::TooLarge { dims, limit });
    }
    Ok(wgpu::Extent3d {
        width: dims[0] as u32,
        height: dims[1] as u32,
        depth_or_array_layers: dims[2] as u32,
    })
}

fn texture_3d(
    device: &wgpu::Device,
    label: &str,
    size: wgpu::Extent3d,
    format: wgpu::TextureFormat,
) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D3,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    })
}

/// Write `bytes` (whole rows of `row_bytes`, `rows_per_slice` rows per z-slice) into `texture`
/// at `origin`, in slabs of whole slices of at most `MAX_UPLOAD_BYTES`.
fn write_slabs(
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    origin: [u32; 3],
    size: [u32; 3],
    bytes_per_voxel: u32,
    bytes: &[u8],
) {
    let row_bytes = size[0] * bytes_per_voxel;
    let slice_bytes = (row_bytes * size[1]) as usize;
    let slices_per_slab = (MAX_UPLOAD_BYTES / slice_bytes.max(1)).max(1);
    let mut z = 0u32;
    while z < size[2] {
        let n = (slices_per_slab as u32).min(size[2] - z);
        let start = z as usize * slice_bytes;
        let end = start + n as usize * slice_bytes;
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture,
                mip_level: 0,
                origin: wgpu::Origin3d {
                    x: origin[0],
                    y: origin[1],
                    z: origin[2] + z,
                },
                aspect: wgpu::TextureAspect::All,
            },
            &bytes[start..end],
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes),
                rows_per_image: Some(size[1]),
            },
            wgpu::Extent3d {
                width: size[0],
                height: size[1],
                depth_or_array_layers: n,
            },
        );
        z += n;
    }
}

/// An image volume on the GPU (one 3D frame), intensities normalised to `value_range`.
pub struct ImageTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    dims: [usize; 3],
    value_range: (f32, f32),
}

impl ImageTexture {
    /// Upload frame `frame` of `vol`. Values map linearly from `value_range` to 0..1 (NaN → 0).
    pub fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        vol: &Volume<f32>,
        frame: usize,
    ) -> Result<Self, RenderError> {
        let dims = vol.dims3();
        let size = check_dims(device, dims)?;
        let n = vol.frame_len();
        let frame = frame.min(vol.dims()[3] - 1);
        let values = &vol.data()[frame * n..(frame + 1) * n];
        let texture = texture_3d(device, "mriloop image", size, wgpu::TextureFormat::R16Float);
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let mut image = Self {
            texture,
            view,
            dims,
            value_range: (0.0, 1.0),
        };
        image.write_values(queue, values)?;
        Ok(image)
    }

    /// Replace the whole texture's values with `values` (one 3D frame on the same grid, x
    /// fastest): the way a 4D series streams its frames and summaries through one texture.
    /// The values are normalised by their own range, which becomes `value_range`.
    pub fn write_values(&mut self, queue: &wgpu::Queue, values: &[f32]) -> Result<(), RenderError> {
        let [nx, ny, nz] = self.dims;
        if values.len() != nx * ny * nz {
            return Err(RenderError::Shape(format!(
                "{} values for an image texture of {nx}×{ny}×{nz} voxels",
                values.len()
            )));
        }
        let (lo, hi) = Self::range_of(values);
        let scale = if hi > lo { 1.0 / (hi - lo) } else { 1.0 };
        let halfs: Vec<f16> = values
            .iter()
            .map(|v| f16::from_f32(if v.is_finite() { (v - lo) * scale } else { 0.0 }))
            .collect();
        write_slabs(
            queue,
            &self.texture,
            [0; 3],
            [nx as u32, ny as u32, nz as u32],
            2,
            bytemuck::cast_slice(&halfs),
        );
        self.value_range = (lo, hi);
        Ok(())
    }

    /// The range of the finite values (the intensities mapped to 0..1); `(0, 1)` if none.
    pub fn range_of(values: &[f32]) -> (f32, f32) {
        let (lo, hi) = values
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                (a.min(*v), b.max(*v))
            });
        if lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    }

    /// The texture view to bind.
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// The texture.
    pub fn texture(&self) -> &wgpu::Texture {
        &self.texture
    }

    /// Voxel dims.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// The intensity range mapped to 0..1.
    pub fn value_range(&self) -> (f32, f32) {
        self.value_range
    }

    /// Normalised (0..1) value of an intensity, for window/level.
    pub fn normalise(&self, value: f32) -> f32 {
        let (lo, hi) = self.value_range;
        if hi > lo {
            (value - lo) / (hi - lo)
        } else {
            0.0
        }
    }
}

/// A label mask on the GPU.
pub struct LabelTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    dims: [usize; 3],
}

impl LabelTexture {
    /// Upload a whole mask (its first frame).
    pub fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        mask: &Volume<u8>,
    ) -> Result<Self, RenderError> {
        let dims = mask.dims3();
        let size = check_dims(device, dims)?;
        let texture = texture_3d(device, "mriloop labels", size, wgpu::TextureFormat::R8Uint);
        write_slabs(
            queue,
            &texture,
            [0; 3],
            [size.width, size.height, size.depth_or_array_layers],
            1,
            &mask.data()[..mask.frame_len()],
        );
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Ok(Self {
            texture,
            view,
            dims,
        })
    }

    /// Rewrite the voxels in `[min, max)` from `mask` (same dims): only that region is sent.
    pub fn update_sub_box(
        &self,
        queue: &wgpu::Queue,
        mask: &Volume<u8>,
        min: [usize; 3],
        max: [usize; 3],
    ) -> Result<(), RenderError> {
        let dims = self.dims;
        if mask.dims3() != dims || (0..3).any(|a| min[a] >= max[a] || max[a] > dims[a]) {
            return Err(RenderError::BadBox { min, max, dims });
        }
        let size = [max[0] - min[0], max[1] - min[1], max[2] - min[2]];
        let mut packed = Vec::with_capacity(size[0] * size[1] * size[2]);
        for k in min[2]..max[2] {
            for j in min[1]..max[1] {
                let row = mask.linear_index(min[0], j, k, 0);
                packed.extend_from_slice(&mask.data()[row..row + size[0]]);
            }
        }
        write_slabs(
            queue,
            &self.texture,
            [min[0] as u32, min[1] as u32, min[2] as u32],
            [size[0] as u32, size[1] as u32, size[2] as u32],
            1,
            &packed,
        );
        Ok(())
    }

    /// The texture view to bind.
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// Voxel dims.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
}

/// The colour of every label value (RGBA, alpha = opacity multiplier; value 0 unused), as a
/// uniform buffer of 256 `vec4<f32>` (read without a texture fetch).
pub struct LabelLut {
    buffer: wgpu::Buffer,
}

impl LabelLut {
    /// Create with all labels transparent.
    pub fn new(device: &wgpu::Device) -> Self {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mriloop label colours"),
            size: 256 * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self { buffer }
    }

    /// Set all 256 colours (sRGB bytes, as shown).
    pub fn update(&self, queue: &wgpu::Queue, colours: &[[u8; 4]; 256]) {
        let floats: Vec<[f32; 4]> = colours
            .iter()
            .map(|c| c.map(|v| f32::from(v) / 255.0))
            .collect();
        queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&floats));
    }

    /// The buffer to bind.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}
