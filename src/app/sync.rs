//! The one GPU step: after every session input, `sync` mirrors the returned `Changes` in the
//! viewer's GPU resources (egui-wgpu's callback resources) — a new case's textures, edited mask
//! sub-boxes, a new prediction, colours, rewritten or derived images — and shows the session's
//! messages. With the paint callbacks (`bridge`), the only code that reaches those resources.
//!
//! Invariants: only what changed is uploaded (a brush dab uploads its sub-box); a failed upload
//! is shown as an error naming the case, and the session's state stays as it is.

use super::bridge::ViewerGpu;
use super::MriloopApp;
use crate::render::{CaseTextures, RenderError};
use crate::session::{Changes, Message};

impl MriloopApp {
    /// Mirror `changes` on the GPU and in the dialogs.
    pub(super) fn sync(&mut self, changes: Changes) {
        for m in &changes.messages {
            match m {
                Message::Info(s) => self.dialogs.info = Some(s.clone()),
                Message::Notice(s) => self.dialogs.notice = Some(s.clone()),
                Message::Error(s) => self.dialogs.error = Some(s.clone()),
            }
        }
        if changes.project {
            self.restart_stats();
        }
        let result = if changes.case_opened {
            self.upload_case()
        } else {
            self.update_case(&changes)
        };
        if changes.case_opened {
            self.rebuild_surfaces();
        } else {
            self.update_surfaces(&changes.mask_boxes);
            if changes.predicted {
                self.predicted_surfaces_changed();
            } else if changes.colours {
                self.upload_surfaces(false);
                self.upload_surfaces(true);
            }
        }
        if let Err(e) = result {
            let id = self
                .session
                .open_case()
                .map_or(String::new(), |o| o.case_id.clone());
            self.dialogs.error = Some(format!("case {id}: {e}"));
        }
    }

    /// Upload every texture of the newly opened case.
    fn upload_case(&mut self) -> Result<(), RenderError> {
        let (Some(rs), Some(open)) = (&self.render_state, self.session.open_case()) else {
            return Ok(());
        };
        let images: Vec<_> = open.layers.iter().map(|i| &i.volume).collect();
        let textures = CaseTextures::upload(
            &rs.device,
            &rs.queue,
            &images,
            open.reference.as_ref(),
            open.predicted.as_ref(),
            &self.session.overlay_colours(),
        )?;
        let mut renderer = rs.renderer.write();
        if let Some(gpu) = renderer.callback_resources.get_mut::<ViewerGpu>() {
            self.gpu_generation = gpu.set_case(textures);
        }
        Ok(())
    }

    /// Upload what changed in the open case.
    fn update_case(&mut self, changes: &Changes) -> Result<(), RenderError> {
        let (Some(rs), Some(open)) = (&self.render_state, self.session.open_case()) else {
            return Ok(());
        };
        let mut renderer = rs.renderer.write();
        let Some(gpu) = renderer.callback_resources.get_mut::<ViewerGpu>() else {
            return Ok(());
        };
        if let Some(mask) = open.reference.as_ref() {
            if let Some(case) = gpu.case() {
                for b in &changes.mask_boxes {
                    case.update_reference_sub_box(&rs.queue, mask, b.min, b.max)?;
                }
            }
        }
        if changes.predicted {
            gpu.set_predicted(&rs.device, &rs.queue, open.predicted.as_ref())?;
        }
        if changes.colours {
            if let Some(case) = gpu.case() {
                case.set_colours(&rs.queue, &self.session.overlay_colours());
            }
        }
        for &i in &changes.images_written {
            if let Some(img) = open.layers.get(i) {
                gpu.write_image(&rs.queue, i, img.volume.data())?;
            }
        }
        for &i in &changes.images_set {
            if let Some(img) = open.layers.get(i) {
                gpu.set_image(&rs.device, &rs.queue, i, &img.volume)?;
            }
        }
        Ok(())
    }
}
