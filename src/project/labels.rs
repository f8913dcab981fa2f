//! `LabelTable`: names and colours of the values in a label mask, with ITK-SNAP label
//! description file import and export.
//!
//! Invariants: values are unique; value 0 is the background and is never listed as a label.

use serde::{Deserialize, Serialize};

/// One label of a mask: its voxel value, name and display colour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Voxel value in the mask (1..=255).
    pub value: u8,
    /// Human name, e.g. `habenula_L`.
    pub name: String,
    /// Display colour, sRGB.
    pub color: [u8; 3],
}

/// The labels of a project's masks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelTable {
    labels: Vec<Label>,
}

/// A distinct colour for label `value` where none is given (ITK-SNAP-like palette).
pub fn default_color(value: u8) -> [u8; 3] {
    crate::volume::default_label_color(value)
}

impl LabelTable {
    /// A table from labels; errors on a duplicate or zero value.
    pub fn new(labels: Vec<Label>) -> Result<Self, String> {
        let t = Self { labels };
        t.check()?;
        Ok(t)
    }

    /// Check the invariants (unique, non-zero values).
    pub fn check(&self) -> Result<(), String> {
        let mut seen = [false; 256];
        for l in &self.labels {
            if l.value == 0 {
                return Err(format!(
                    "label {:?} uses value 0, which is the background",
                    l.name
                ));
            }
            if std::mem::replace(&mut seen[l.value as usize], true) {
                return Err(format!("label value {} is listed twice", l.value));
            }
        }
        Ok(())
    }

    /// The labels, in table order.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Label names indexed by value, from 0 (`background`) to the largest value; values with
    /// no label are named `label<N>`.
    pub fn names_by_value(&self) -> Vec<String> {
        let max = self.labels.iter().map(|l| l.value).max().unwrap_or(0) as usize;
        let mut names: Vec<String> = (0..=max).map(|v| format!("label{v}")).collect();
        names[0] = "background".into();
        for l in &self.labels {
            names[l.value as usize] = l.name.clone();
        }
        names
    }

    /// Pairs of labels that are mirror images of each other across the midline, by name
    /// (`X_L`/`X_R`, `X_left`/`X_right`, `left_X`/`right_X`, any case): a left–right flip
    /// of an image must swap them.
    pub fn mirror_pairs(&self) -> Vec<[u8; 2]> {
        let side = |name: &str| -> Option<(String, bool)> {
            let n = name.to_ascii_lowercase();
            for (suffix, left) in [
                ("_l", true),
                ("_r", false),
                ("_left", true),
                ("_right", false),
            ] {
                if let Some(stem) = n.strip_suffix(suffix) {
                    return Some((format!("{stem}_"), left));
                }
            }
            for (prefix, left) in [("left_", true), ("right_", false)] {
                if let Some(stem) = n.strip_prefix(prefix) {
                    return Some((format!("_{stem}"), left));
                }
            }
            None
        };
        let mut pairs = Vec::new();
        for a in &self.labels {
            let Some((stem, true)) = side(&a.name) else {
                continue;
            };
            if let Some(b) = self
                .labels
                .iter()
                .find(|b| side(&b.name) == Some((stem.clone(), false)))
            {
                pairs.push([a.value, b.value]);
            }
        }
        pairs
    }

    /// The label with this value.
    pub fn get(&self, value: u8) -> Option<&Label> {
        self.labels.iter().find(|l| l.value == value)
    }

    /// The label with this name.
    pub fn by_name(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }

    /// The name of a value (`"background"` for 0, `"label N"` when unlisted).
    pub fn name_of(&self, value: u8) -> String {
        match (value, self.get(value)) {
            (0, _) => "background".to_owned(),
            (_, Some(l)) => l.name.clone(),
            (v, None) => format!("label {v}"),
        }
    }

    /// Parse an ITK-SNAP label description file. Lines are
    /// `IDX R G B A VIS MSH "NAME"`; `#` starts a comment; index 0 ("Clear Label") is skipped.
    pub fn from_itksnap(text: &str) -> Result<Self, String> {
        let mut labels = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", n + 1);
            let (fields, name) = match line.find('"') {
                Some(q) => {
                    let rest = &line[q + 1..];
                    let end = rest
                        .rfind('"')
                        .ok_or_else(|| bad("unterminated label name"))?;
                    (&line[..q], rest[..end].to_owned())
                }
                None => return Err(bad("missing quoted label name")),
            };
            let nums: Vec<&str> = fields.split_whitespace().collect();
            if nums.len() != 7 {
                return Err(bad(
                    "expected 7 numbers before the name (IDX R G B A VIS MSH)",
                ));
            }
            let value: u32 = nums[0]
                .parse()
                .map_err(|_| bad("label index is not a whole number"))?;
            let value = u8::try_from(value).map_err(|_| bad("label index above 255"))?;
            let mut color = [0u8; 3];
            for (c, s) in color.iter_mut().zip(&nums[1..4]) {
                let v: u32 = s.parse().map_err(|_| bad("colour is not a whole number"))?;
                *c = u8::try_from(v).map_err(|_| bad("colour above 255"))?;
            }
            if value == 0 {
                continue;
            }
            labels.push(Label { value, name, color });
        }
        Self::new(labels)
    }

    /// Write an ITK-SNAP label description file.
    pub fn to_itksnap(&self) -> String {
        let mut s = String::from(
            "################################################\n\
             # ITK-SnAP Label Description File\n\
             # Written by mriloop\n\
             # IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL\n\
             ################################################\n",
        );
        s.push_str("    0     0    0    0        0  0  0    \"Clear Label\"\n");
        for l in &self.labels {
            let name = l.name.replace('"', "'");
            s.push_str(&format!(
                "{:5} {:5} {:4} {:4} {:8} {:2} {:2}    \"{}\"\n",
                l.value, l.color[0], l.color[1], l.color[2], 1, 1, 1, name
            ));
        }
        s
    }
}
