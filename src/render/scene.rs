//! `CaseTextures`: every volume of one case on the GPU (images, reference and predicted masks,
//! label colours), uploaded once; and `ViewSlots`: the per-view bindings drawn from them, made
//! when a view first needs them and kept while what it samples stays the same.
//!
//! Invariants: a slot's bindings sample exactly the images its key names; changing the case
//! drops every slot (the owner makes a new `ViewSlots`).

use super::cache::{draw_cached, prepare_cached, ViewBlitPipeline, ViewCache};
use super::slice::{SliceBindings, SlicePipeline, SliceSources, SliceUniform};
use super::texture::{ImageTexture, LabelLut, LabelTexture, RenderError};
use crate::volume::{Affine, Volume};
use std::collections::HashMap;

/// The GPU copies of one case's volumes.
pub struct CaseTextures {
    images: Vec<(ImageTexture, Affine)>,
    reference: Option<LabelTexture>,
    predicted: Option<LabelTexture>,
    empty: LabelTexture,
    labels_affine: Affine,
    lut: LabelLut,
    content_version: std::sync::atomic::AtomicU64,
}

impl CaseTextures {
    /// Upload images (each with its own affine) and optional masks (on one grid) once.
    pub fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        images: &[&Volume<f32>],
        reference: Option<&Volume<u8>>,
        predicted: Option<&Volume<u8>>,
        colours: &[[u8; 4]; 256],
    ) -> Result<Self, RenderError> {
        let images = images
            .iter()
            .map(|v| Ok((ImageTexture::upload(device, queue, v, 0)?, *v.affine())))
            .collect::<Result<Vec<_>, RenderError>>()?;
        let first_affine = images.first().map(|i| i.1).unwrap_or_default();
        let labels_affine = reference
            .or(predicted)
            .map_or(first_affine, |m| *m.affine());
        let empty_volume = Volume::filled([1, 1, 1, 1], labels_affine, 0u8)
            .map_err(|e| RenderError::NoDevice(e.to_string()))?;
        let reference = reference
            .map(|m| LabelTexture::upload(device, queue, m))
            .transpose()?;
        let predicted = predicted
            .map(|m| LabelTexture::upload(device, queue, m))
            .transpose()?;
        let lut = LabelLut::new(device);
        lut.update(queue, colours);
        Ok(Self {
            images,
            reference,
            predicted,
            empty: LabelTexture::upload(device, queue, &empty_volume)?,
            labels_affine,
            lut,
            content_version: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A number that changes whenever what the textures hold changes (a frame or derived image
    /// written, a mask edit, new colours): cached views made before it are stale.
    pub fn content_version(&self) -> u64 {
        self.content_version
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn touch(&self) {
        self.content_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rewrite the sub-box `min..max` (exclusive) of the reference mask texture from `mask`.
    pub fn update_reference_sub_box(
        &self,
        queue: &wgpu::Queue,
        mask: &Volume<u8>,
        min: [usize; 3],
        max: [usize; 3],
    ) -> Result<(), RenderError> {
        let Some(tex) = &self.reference else {
            return Ok(());
        };
        self.touch();
        tex.update_sub_box(queue, mask, min, max)
    }

    /// Number of images.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Bytes of GPU memory the case's textures take (images as 2-byte texels, masks as 1-byte
    /// texels, the colour table).
    pub fn gpu_bytes(&self) -> usize {
        let voxels = |d: [usize; 3]| d[0] * d[1] * d[2];
        let images: usize = self.images.iter().map(|(t, _)| 2 * voxels(t.dims())).sum();
        let masks: usize = [
            self.reference.as_ref(),
            self.predicted.as_ref(),
            Some(&self.empty),
        ]
        .into_iter()
        .flatten()
        .map(|m| voxels(m.dims()))
        .sum();
        images + masks + 256 * 16
    }

    /// Rewrite image `index`'s values in place (a 4D series' next frame or summary, on the
    /// same grid); returns the intensity range the texture now maps to 0..1.
    pub fn write_image(
        &mut self,
        queue: &wgpu::Queue,
        index: usize,
        values: &[f32],
    ) -> Result<(f32, f32), RenderError> {
        let (image, _) = self
            .images
            .get_mut(index)
            .ok_or_else(|| RenderError::Shape(format!("no image {index} in this case")))?;
        image.write_values(queue, values)?;
        let range = image.value_range();
        self.touch();
        Ok(range)
    }

    /// Put a derived image (e.g. a seed correlation map) in slot `index`: replaced when the
    /// slot exists, appended when `index` is the next free one. Returns its value range.
    pub fn set_image(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        index: usize,
        volume: &Volume<f32>,
    ) -> Result<(f32, f32), RenderError> {
        let texture = ImageTexture::upload(device, queue, volume, 0)?;
        let range = texture.value_range();
        self.touch();
        match index.cmp(&self.images.len()) {
            std::cmp::Ordering::Less => self.images[index] = (texture, *volume.affine()),
            std::cmp::Ordering::Equal => self.images.push((texture, *volume.affine())),
            std::cmp::Ordering::Greater => {
                return Err(RenderError::Shape(format!(
                    "image slot {index} after only {} images",
                    self.images.len()
                )))
            }
        }
        Ok(range)
    }

    /// Replace the predicted mask (a new prediction, on the masks' grid); views made before
    /// must be bound anew (their owner drops its slots).
    pub fn set_predicted(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        mask: Option<&Volume<u8>>,
    ) -> Result<(), RenderError> {
        self.predicted = mask
            .map(|m| LabelTexture::upload(device, queue, m))
            .transpose()?;
        self.touch();
        Ok(())
    }

    /// The reference mask texture (for sub-box edits).
    pub fn reference(&self) -> Option<&LabelTexture> {
        self.reference.as_ref()
    }

    /// The predicted mask texture.
    pub fn predicted(&self) -> Option<&LabelTexture> {
        self.predicted.as_ref()
    }

    /// Replace the label colours.
    pub fn set_colours(&self, queue: &wgpu::Queue, colours: &[[u8; 4]; 256]) {
        self.touch();
        self.lut.update(queue, colours);
    }

    /// The sources of a view of image `base` with image `blend` over it (indices checked),
    /// sampled trilinearly or not.
    pub fn sources(
        &self,
        base: usize,
        blend: Option<usize>,
        linear: bool,
    ) -> Option<SliceSources<'_>> {
        let (image, image_affine) = self.images.get(base)?;
        let blend = match blend {
            Some(b) => Some(self.images.get(b).map(|(t, a)| (t, *a))?),
            None => None,
        };
        Some(SliceSources {
            image,
            image_affine: *image_affine,
            blend,
            reference: self.reference.as_ref(),
            predicted: self.predicted.as_ref(),
            empty_labels: &self.empty,
            labels_affine: self.labels_affine,
            lut: &self.lut,
            linear,
        })
    }
}

/// What one view slot samples: its base image, the image blended over it, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewKey {
    /// Index of the base image.
    pub base: usize,
    /// Index of the blended image.
    pub blend: Option<usize>,
    /// Trilinear (true) or nearest-voxel sampling.
    pub linear: bool,
}

/// Per-view bindings, by slot number (each view drawn in a frame has its own slot, so each has
/// its own uniform buffer).
#[derive(Default)]
pub struct ViewSlots {
    slots: HashMap<usize, (ViewKey, SliceBindings)>,
    caches: HashMap<usize, Option<ViewCache>>,
}

impl ViewSlots {
    /// The bindings of `slot`, made (or remade) for `key` if needed; `None` if the key names
    /// an image the case lacks.
    pub fn get_or_create(
        &mut self,
        device: &wgpu::Device,
        pipeline: &SlicePipeline,
        textures: &CaseTextures,
        slot: usize,
        key: ViewKey,
    ) -> Option<&SliceBindings> {
        let stale = self.slots.get(&slot).is_none_or(|(k, _)| *k != key);
        if stale {
            let sources = textures.sources(key.base, key.blend, key.linear)?;
            self.slots
                .insert(slot, (key, SliceBindings::new(device, pipeline, sources)));
        }
        self.slots.get(&slot).map(|(_, b)| b)
    }

    /// The cached slice image of `slot`, if made.
    pub fn cache(&self, slot: usize) -> Option<&ViewCache> {
        self.caches.get(&slot).and_then(Option::as_ref)
    }

    /// The bindings of `slot`, if made.
    pub fn get(&self, slot: usize) -> Option<&SliceBindings> {
        self.slots.get(&slot).map(|(_, b)| b)
    }

    /// Get `slot` ready to draw `key` with `uniform` from its cache: bindings made if needed,
    /// the slice image re-rendered into `encoder` only if it changed (see `render::cache`).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_cached(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        pipelines: (&SlicePipeline, &ViewBlitPipeline),
        textures: &CaseTextures,
        slot: usize,
        key: ViewKey,
        uniform: &SliceUniform,
    ) {
        if self
            .get_or_create(device, pipelines.0, textures, slot, key)
            .is_none()
        {
            return;
        }
        let Some((_, bindings)) = self.slots.get(&slot) else {
            return;
        };
        let cache = self.caches.entry(slot).or_default();
        prepare_cached(
            cache,
            device,
            queue,
            encoder,
            pipelines,
            bindings,
            key,
            uniform,
            textures.content_version(),
        );
    }

    /// Draw `slot` from its cache (after `prepare_cached` this frame).
    pub fn draw_cached(
        &self,
        slot: usize,
        blit: &ViewBlitPipeline,
        pass: &mut wgpu::RenderPass<'_>,
    ) {
        if let Some(Some(cache)) = self.caches.get(&slot) {
            draw_cached(cache, blit, pass);
        }
    }

    /// How many times `slot`'s slice image was rendered rather than drawn from its cache.
    pub fn renders(&self, slot: usize) -> u64 {
        self.caches
            .get(&slot)
            .and_then(|c| c.as_ref())
            .map_or(0, |c| c.renders())
    }
}
