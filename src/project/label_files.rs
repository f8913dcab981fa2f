//! Label names and colours kept beside a label file, for label files opened on their own:
//! a Slicer segmentation's own segments (`.seg.nrrd`), else a text table next to the file —
//! `NAME.nii.txt` (MRIcron's atlases: `aal.nii.gz` beside `aal.nii.txt`) or `NAME.txt` — in
//! any of the formats the tools users know write: ITK-SNAP's label description file, FreeSurfer's
//! and 3D Slicer's colour tables (`IDX NAME R G B A`), or a plain `IDX NAME …` list.
//!
//! Invariants: a table file is untrusted — larger than [`MAX_TABLE_BYTES`] it is refused (read
//! no further), a malformed line is refused naming its number; index 0 (the background) is
//! skipped, and so are indices above 255 (no uint8 mask holds them) in a colour table or list
//! (an ITK-SNAP file holding one is refused, as its import is); a label without a colour gets
//! the default one.

use super::labels::{default_color, Label, LabelTable};
use std::path::{Path, PathBuf};

/// The largest label table read (FreeSurfer's full colour table is ~100 kB).
pub const MAX_TABLE_BYTES: u64 = 4 << 20;

/// The label table beside the label file `mask`, and where it was found: `None` when there is
/// none; the error names the file and the problem.
pub fn label_table_beside(mask: &Path) -> Option<Result<(PathBuf, LabelTable), String>> {
    if crate::volume::nrrd::is_segmentation_name(mask) {
        return match segmentation_table(mask) {
            Ok(t) if t.labels().is_empty() => None,
            read => Some(read.map(|t| (mask.to_path_buf(), t))),
        };
    }
    let table = table_candidates(mask).into_iter().find(|p| p.is_file())?;
    let read = read_table_text(&table).and_then(|text| {
        LabelTable::from_text(&text).map_err(|e| format!("{}: {e}", table.display()))
    });
    Some(read.map(|t| (table, t)))
}

/// Where a table for `mask` may be: `aal.nii.gz` → `aal.nii.txt`, `aal.txt`.
fn table_candidates(mask: &Path) -> Vec<PathBuf> {
    let Some(name) = mask.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let bare = name.strip_suffix(".gz").unwrap_or(name);
    let stem = bare.rsplit_once('.').map_or(bare, |(s, _)| s);
    let mut out = vec![mask.with_file_name(format!("{bare}.txt"))];
    if stem != bare {
        out.push(mask.with_file_name(format!("{stem}.txt")));
    }
    out
}

/// A table file's text (a UTF-8 byte-order mark dropped), refused past [`MAX_TABLE_BYTES`]
/// (read no further than one byte beyond).
fn read_table_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TABLE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_TABLE_BYTES {
        return Err(format!(
            "{}: more than a label table's {MAX_TABLE_BYTES} bytes",
            path.display()
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

/// A Slicer segmentation's segments as a table (valued as the merged label map is).
fn segmentation_table(path: &Path) -> Result<LabelTable, String> {
    let segments = crate::volume::nrrd::segmentation_segments(path).map_err(|e| e.to_string())?;
    let labels = segments
        .into_iter()
        .filter(|s| s.label_value > 0)
        .map(|s| Label {
            value: s.label_value,
            name: s.name,
            color: s.color,
        })
        .collect();
    LabelTable::new(labels).map_err(|e| format!("{}: {e}", path.display()))
}

impl LabelTable {
    /// Parse a label table in text: an ITK-SNAP label description file (a quoted name on each
    /// line), else one label a line as `IDX NAME [R G B [A]]` (FreeSurfer's and 3D Slicer's
    /// colour tables; MRIcron's `IDX NAME CODE` lists, which have no colour). `#` starts a
    /// comment; indices 0 and above 255 are skipped.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let lines = || {
            text.lines()
                .enumerate()
                .map(|(n, l)| (n, l.trim()))
                .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        };
        if lines().any(|(_, l)| l.contains('"')) {
            return Self::from_itksnap(text);
        }
        let mut labels = Vec::new();
        for (n, line) in lines() {
            let bad = |what: &str| format!("line {}: {what}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let index: u64 = fields[0]
                .parse()
                .map_err(|_| bad("the label index is not a whole number"))?;
            let name = fields
                .get(1)
                .ok_or_else(|| bad("a label index with no name"))?;
            let Some(value) = u8::try_from(index).ok().filter(|v| *v > 0) else {
                continue;
            };
            let color = colour_of(&fields[2..]).unwrap_or_else(|| default_color(value));
            labels.push(Label {
                value,
                name: (*name).to_string(),
                color,
            });
        }
        Self::new(labels)
    }
}

/// `R G B` or `R G B A` (whole numbers 0–255) as a colour; anything else (MRIcron's one code,
/// nothing) is none.
fn colour_of(fields: &[&str]) -> Option<[u8; 3]> {
    if !(3..=4).contains(&fields.len()) {
        return None;
    }
    let v: Vec<u8> = fields.iter().map_while(|f| f.parse().ok()).collect();
    (v.len() == fields.len()).then(|| [v[0], v[1], v[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_formats_users_have_give_names_and_colours() {
        // FreeSurfer's colour table (index above 255 skipped) and Slicer's alike.
        let fs = "#$Id: FreeSurferColorLUT.txt\n0 Unknown 0 0 0 0\n\
                  17  Left-Hippocampus  220 216 20  0\n1000 ctx-lh-unknown 25 5 25 0\n";
        let t = LabelTable::from_text(fs).unwrap();
        assert_eq!(t.labels().len(), 1);
        assert_eq!(t.name_of(17), "Left-Hippocampus");
        assert_eq!(t.get(17).unwrap().color, [220, 216, 20]);
        // MRIcron's list: a code, no colour.
        let t = LabelTable::from_text("1 Precentral_L 2001\n2 Precentral_R 2002\n").unwrap();
        assert_eq!(t.name_of(2), "Precentral_R");
        assert_eq!(t.get(2).unwrap().color, default_color(2));
        // ITK-SNAP's file, by its quoted names.
        let snap = "0 0 0 0 0 0 0 \"Clear Label\"\n3 10 20 30 1 1 1 \"left thalamus\"\n";
        let t = LabelTable::from_text(snap).unwrap();
        assert_eq!(t.name_of(3), "left thalamus");
        assert_eq!(t.get(3).unwrap().color, [10, 20, 30]);
    }

    #[test]
    fn a_malformed_table_is_refused_naming_the_line() {
        let e = LabelTable::from_text("1 a\nx b\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("not a whole number"),
            "{e}"
        );
        let e = LabelTable::from_text("1 a\n\n7\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("no name"), "{e}");
        let e = LabelTable::from_text("1 a\n1 b\n").unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn a_table_is_found_beside_the_label_file_and_an_oversized_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mask = dir.path().join("aal.nii.gz");
        assert!(label_table_beside(&mask).is_none());
        // A byte-order mark (as Windows editors write) is no part of the first index.
        std::fs::write(dir.path().join("aal.txt"), "\u{feff}5 Frontal_Sup_L 2101\n").unwrap();
        let (at, t) = label_table_beside(&mask).unwrap().unwrap();
        assert_eq!(
            (at, t.name_of(5)),
            (dir.path().join("aal.txt"), "Frontal_Sup_L".into())
        );
        // MRIcron's own name wins over the shorter one.
        std::fs::write(dir.path().join("aal.nii.txt"), "5 Other 1\n").unwrap();
        let (at, _) = label_table_beside(&mask).unwrap().unwrap();
        assert_eq!(at, dir.path().join("aal.nii.txt"));
        let big = std::fs::File::create(dir.path().join("aal.nii.txt")).unwrap();
        big.set_len(MAX_TABLE_BYTES + 1).unwrap();
        let e = label_table_beside(&mask).unwrap().unwrap_err();
        assert!(e.contains("aal.nii.txt") && e.contains("more than"), "{e}");
    }
}
