//! Enhanced (multi-frame) MR and CT: one file holds a whole series, each frame's geometry in
//! its per-frame functional groups (or the shared ones): Plane Position, Plane Orientation,
//! Pixel Measures, Pixel Value Transformation (the decoder applies each frame's rescale), and
//! Frame Content's temporal position. Each frame becomes one slice of the series, so frames
//! sort into 3D along the normal and into 4D by temporal position, as separate files would.
//!
//! Invariants: the frame count is checked against the per-frame groups and the pixel data
//! present (see `pixel_values`) before any frame is decoded; a frame without a position or an
//! orientation is an error naming it.

use super::{
    check_orientation, diffusion, float_values, image_size, opt_float, opt_text, pixel_values,
    tag_str, DefaultDicomObject, InMemDicomObject, Slice,
};
use dicom_dictionary_std::tags;
use std::path::Path;

/// The most frames one file may hold.
const MAX_FRAMES: f64 = 100_000.0;

/// The items of sequence `tag` in `obj` (none when absent).
fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// The first item of functional group `group` for a frame: its own, else the shared one.
fn group<'a>(
    frame: &'a InMemDicomObject,
    shared: Option<&'a InMemDicomObject>,
    group: dicom_core::Tag,
) -> Option<&'a InMemDicomObject> {
    items(frame, group)
        .first()
        .or_else(|| shared.and_then(|s| items(s, group).first()))
}

/// Every frame of an enhanced file as a slice.
pub(super) fn frame_slices(
    obj: &DefaultDicomObject,
    path: &Path,
    series_uid: String,
    frames: f64,
) -> Result<Vec<Slice>, String> {
    if !(1.0..=MAX_FRAMES).contains(&frames) {
        return Err(format!(
            "{frames} frames in one file: more than mriloop reads"
        ));
    }
    let n = frames as usize;
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.len() != n {
        return Err(format!(
            "{n} frames but {} per-frame functional groups {}: not an enhanced image mriloop reads",
            per_frame.len(),
            tag_str(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        ));
    }
    let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    let (rows, columns) = image_size(obj)?;
    let values = pixel_values(obj, rows, columns, n)?;
    let sop_uid = opt_text(obj, tags::SOP_INSTANCE_UID);
    per_frame
        .iter()
        .zip(values)
        .enumerate()
        .map(|(f, (frame, values))| {
            let g = frame_geometry(frame, shared).map_err(|e| format!("frame {}: {e}", f + 1))?;
            Ok(Slice {
                path: path.to_path_buf(),
                series_uid: series_uid.clone(),
                sop_uid: sop_uid.clone(),
                tile: None,
                description: opt_text(obj, tags::SERIES_DESCRIPTION),
                series_number: opt_float(obj, tags::SERIES_NUMBER).map(|n| n as i64),
                modality: opt_text(obj, tags::MODALITY).unwrap_or_default(),
                rows,
                columns,
                spacing: g.spacing,
                orientation: g.orientation,
                position: g.position,
                instance: g.temporal,
                slice_thickness: g.thickness,
                repetition_time_ms: opt_float(obj, tags::REPETITION_TIME).filter(|t| *t > 0.0),
                gradient: diffusion::of_frame(group(frame, shared, tags::MR_DIFFUSION_SEQUENCE)),
                values,
            })
        })
        .collect()
}

/// Where a frame lies and when: from its functional groups (else the shared ones).
struct FrameGeometry {
    spacing: [f64; 2],
    orientation: [f64; 6],
    position: [f64; 3],
    thickness: Option<f64>,
    temporal: i64,
}

fn frame_geometry(
    frame: &InMemDicomObject,
    shared: Option<&InMemDicomObject>,
) -> Result<FrameGeometry, String> {
    let at = |g| group(frame, shared, g);
    let position = at(tags::PLANE_POSITION_SEQUENCE).ok_or("no Plane Position Sequence")?;
    let position = float_values(
        position,
        tags::IMAGE_POSITION_PATIENT,
        "Image Position (Patient)",
        3,
    )?;
    let orientation =
        at(tags::PLANE_ORIENTATION_SEQUENCE).ok_or("no Plane Orientation Sequence")?;
    let orientation = float_values(
        orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        "Image Orientation (Patient)",
        6,
    )?;
    check_orientation(&orientation)?;
    let measures = at(tags::PIXEL_MEASURES_SEQUENCE).ok_or("no Pixel Measures Sequence")?;
    let spacing = float_values(measures, tags::PIXEL_SPACING, "Pixel Spacing", 2)?;
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(format!("Pixel Spacing {spacing:?} must be positive"));
    }
    Ok(FrameGeometry {
        spacing: [spacing[0], spacing[1]],
        orientation: [0, 1, 2, 3, 4, 5].map(|i| orientation[i]),
        position: [position[0], position[1], position[2]],
        thickness: opt_float(measures, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| opt_float(measures, tags::SLICE_THICKNESS))
            .filter(|t| *t > 0.0),
        temporal: at(tags::FRAME_CONTENT_SEQUENCE)
            .and_then(|c| opt_float(c, tags::TEMPORAL_POSITION_INDEX))
            .map_or(0, |t| t as i64),
    })
}
