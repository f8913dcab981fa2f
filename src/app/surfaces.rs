//! The 3D view's surfaces kept in step with the open case: the reference (working) mask's
//! labels meshed when the case opens and re-meshed block by block for every changed sub-box
//! the session reports (a brush dab, an undo, a prompt's answer), the predicted mask's when a
//! prediction arrives; each time, the label meshes go to the GPU in the label table's colours
//! (a hidden label is left out; the prediction translucent). A mask of more than
//! `MESH_INLINE_VOXELS` voxels is meshed whole by a worker thread (a 256³ mask takes a
//! noticeable fraction of a second): the sub-boxes edited meanwhile are kept and re-meshed when
//! its surfaces arrive.
//!
//! Invariants: changed from the one GPU step (`sync`) and the frame's poll only; once no worker
//! is meshing, the surfaces are those of the masks the session holds after the changes it
//! reported; a worker's result for a case no longer open is dropped.

use super::bridge::ViewerGpu;
use super::MriloopApp;
use crate::edit::VoxelBox;
use crate::volume::surface::{LabelSurfaces, Mesh};
use crate::volume::Volume;
use std::sync::mpsc::{Receiver, TryRecvError};

/// How opaque the predicted mask's surfaces are drawn.
const PREDICTED_ALPHA: f32 = 0.35;
/// Masks up to this many voxels are meshed whole on the UI thread (a 96³ mask in ~10 ms).
const MESH_INLINE_VOXELS: usize = 96 * 96 * 96;

/// One mask's surfaces: ready, or being meshed by a worker (with the edits made since).
#[derive(Default)]
pub struct MaskSurfaces {
    ready: Option<LabelSurfaces>,
    meshing: Option<Receiver<LabelSurfaces>>,
    edited_meanwhile: Vec<VoxelBox>,
}

/// The open case's reference (`[0]`) and predicted (`[1]`) mask surfaces.
#[derive(Default)]
pub struct SurfaceState {
    masks: [MaskSurfaces; 2],
}

impl SurfaceState {
    /// Whether a worker is meshing.
    pub fn busy(&self) -> bool {
        self.masks.iter().any(|m| m.meshing.is_some())
    }
}

/// The surfaces of `mask`'s first frame.
fn surfaces_of(mask: &Volume<u8>) -> LabelSurfaces {
    let [nx, ny, nz] = mask.dims3();
    let frame = &mask.data()[..mask.frame_len()];
    LabelSurfaces::new(frame, [nx, ny, nz], *mask.affine())
}

impl MriloopApp {
    /// The mask of kind `predicted` of the open case.
    fn surface_mask(&self, predicted: bool) -> Option<&Volume<u8>> {
        let open = self.session.open_case()?;
        if predicted {
            open.predicted.as_ref()
        } else {
            open.reference.as_ref()
        }
    }

    /// Mesh the open case's mask of kind `predicted` anew: here when it is small (and upload),
    /// else by a worker (uploaded when it arrives).
    fn remesh(&mut self, predicted: bool) {
        let kind = usize::from(predicted);
        self.surfaces.masks[kind] = MaskSurfaces::default();
        let Some(mask) = self.surface_mask(predicted) else {
            self.upload_surfaces(predicted);
            return;
        };
        if mask.frame_len() <= MESH_INLINE_VOXELS {
            self.surfaces.masks[kind].ready = Some(surfaces_of(mask));
            self.upload_surfaces(predicted);
            return;
        }
        let [nx, ny, nz] = mask.dims3();
        let (frame, affine) = (mask.data()[..mask.frame_len()].to_vec(), *mask.affine());
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = self.wake();
        std::thread::spawn(move || {
            let _ = tx.send(LabelSurfaces::new(&frame, [nx, ny, nz], affine));
            wake();
        });
        self.surfaces.masks[kind].meshing = Some(rx);
        // Until the worker answers, the view shows no stale surfaces of another case.
        self.upload_surfaces(predicted);
    }

    /// Mesh the open case's masks anew (a case opened).
    pub(super) fn rebuild_surfaces(&mut self) {
        self.remesh(false);
        self.remesh(true);
    }

    /// Re-mesh the reference mask's blocks that `boxes` reach, and upload its labels.
    pub(super) fn update_surfaces(&mut self, boxes: &[VoxelBox]) {
        if boxes.is_empty() {
            return;
        }
        let Some(mask) = self.session.open_case().and_then(|o| o.reference.as_ref()) else {
            return;
        };
        let state = &mut self.surfaces.masks[0];
        if state.meshing.is_some() {
            state.edited_meanwhile.extend_from_slice(boxes);
            return;
        }
        let surfaces = state.ready.get_or_insert_with(|| surfaces_of(mask));
        let frame = &mask.data()[..mask.frame_len()];
        for b in boxes {
            surfaces.update(frame, b.min, b.max);
        }
        self.upload_surfaces(false);
    }

    /// The predicted mask changed: mesh it anew.
    pub(super) fn predicted_surfaces_changed(&mut self) {
        self.remesh(true);
    }

    /// Take the surfaces a worker finished, bring them up to the edits made meanwhile, and
    /// upload them.
    pub(super) fn poll_surfaces(&mut self) {
        for predicted in [false, true] {
            let state = &mut self.surfaces.masks[usize::from(predicted)];
            let Some(rx) = &state.meshing else { continue };
            let mut surfaces = match rx.try_recv() {
                Ok(s) => s,
                Err(TryRecvError::Empty) => continue,
                Err(TryRecvError::Disconnected) => {
                    state.meshing = None;
                    continue;
                }
            };
            state.meshing = None;
            let edited = std::mem::take(&mut state.edited_meanwhile);
            if let Some(mask) = self.surface_mask(predicted) {
                let frame = &mask.data()[..mask.frame_len()];
                for b in &edited {
                    surfaces.update(frame, b.min, b.max);
                }
            }
            self.surfaces.masks[usize::from(predicted)].ready = Some(surfaces);
            self.upload_surfaces(predicted);
        }
    }

    /// Upload the reference's (or, with `predicted`, the prediction's) label meshes in the
    /// label colours, hidden labels left out.
    pub(super) fn upload_surfaces(&self, predicted: bool) {
        let Some(rs) = &self.render_state else { return };
        let colours = self.session.overlay_colours();
        let alpha = if predicted { PREDICTED_ALPHA } else { 1.0 };
        let meshes: Vec<(Mesh, [f32; 4])> = self.surfaces.masks[usize::from(predicted)]
            .ready
            .as_ref()
            .map(|s| {
                s.labels()
                    .into_iter()
                    .filter(|l| colours[*l as usize][3] > 0)
                    .map(|l| {
                        let [r, g, b, _] = colours[l as usize].map(|c| f32::from(c) / 255.0);
                        (s.mesh(l), [r, g, b, alpha])
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut renderer = rs.renderer.write();
        if let Some(gpu) = renderer.callback_resources.get_mut::<ViewerGpu>() {
            gpu.set_surfaces(&rs.device, &meshes, predicted);
        }
    }
}
