//! `CaseTextures`: every volume of one case on the GPU (images, reference and predicted masks,
//! label colours), uploaded once; and `ViewSlots`: the per-view bindings drawn from them, made
//! when a view first needs them and kept while what it samples stays the same.
//!
//! Invariants: a slot's bindings sample exactly the images its key names; changing the case
//! drops every slot (the owner makes a new `ViewSlots`).

use super::slice::{SliceBindings, SlicePipeline, SliceSources};
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
        })
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
        Ok(image.value_range())
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

    /// The bindings of `slot`, if made.
    pub fn get(&self, slot: usize) -> Option<&SliceBindings> {
        self.slots.get(&slot).map(|(_, b)| b)
    }
}
