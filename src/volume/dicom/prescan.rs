//! A light walk over a DICOM file's bytes before the parser sees them: every element's declared
//! length — in the meta group, the data set, sequences, items and pixel-data fragments — must
//! fit in the bytes that remain where it starts. dicom-rs allocates (and zero-fills) a declared
//! length before reading it, so a few hundred bytes declaring 1.5 GB would take that much
//! memory; after this walk no allocation can exceed the file's real size.
//!
//! Invariants: reads only the bytes given (no allocation beyond a small stack of spans); a
//! nesting deeper than `MAX_DEPTH` is an error, not a stack overflow; a deflated data set (its
//! bytes are compressed) is left to the parser, whose output the file size does not bound
//! (noted, not walked).

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};

/// Deepest sequence nesting walked.
const MAX_DEPTH: usize = 32;
/// A length field meaning "until a delimiter".
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How the data set's elements are encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

struct Walker<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
}

/// Check `bytes` (a whole DICOM file); the error names the element that claims too much.
pub fn check_declared_lengths(bytes: &[u8]) -> Result<(), String> {
    let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        132
    } else if bytes.starts_with(b"DICM") {
        4
    } else {
        // No preamble: the parser decides what it is; nothing here allocates.
        return Ok(());
    };
    let meta = Walker {
        bytes,
        encoding: Encoding::ExplicitLittle,
    };
    let (data_start, syntax) = meta.meta_group(start)?;
    let encoding = match syntax.as_str() {
        "1.2.840.10008.1.2" => Encoding::ImplicitLittle,
        "1.2.840.10008.1.2.2" => Encoding::ExplicitBig,
        "1.2.840.10008.1.2.1.99" => return Ok(()),
        _ => Encoding::ExplicitLittle,
    };
    Walker { bytes, encoding }.elements(data_start, bytes.len(), 0)
}

impl Walker<'_> {
    fn u16_at(&self, at: usize, big: bool) -> Option<u16> {
        let b = self.bytes.get(at..at + 2)?;
        Some(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32_at(&self, at: usize, big: bool) -> Option<u32> {
        let b = self.bytes.get(at..at + 4)?;
        Some(if big {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// The meta group (explicit VR little endian): where the data set starts, and its transfer
    /// syntax.
    fn meta_group(&self, mut at: usize) -> Result<(usize, String), String> {
        let mut syntax = String::new();
        while self.u16_at(at, false) == Some(0x0002) {
            let (tag, vr, len, header) = self.header(at)?;
            let end = self.fits(tag, at + header, len, self.bytes.len())?;
            if tag == Tag(0x0002, 0x0000) {
                // The meta group's length, which the parser reads the group by.
                let claimed = self.u32_at(at + header, false).unwrap_or(0);
                self.fits(tag, end, claimed, self.bytes.len())?;
            }
            if tag == Tag(0x0002, 0x0010) && vr == Some(VR::UI) {
                syntax = String::from_utf8_lossy(&self.bytes[at + header..end])
                    .trim_end_matches(['\0', ' '])
                    .to_string();
            }
            at = end;
        }
        Ok((at, syntax))
    }

    /// An element header at `at`: its tag, VR (explicit encodings), value length and header
    /// size.
    fn header(&self, at: usize) -> Result<(Tag, Option<VR>, u32, usize), String> {
        let big = self.encoding == Encoding::ExplicitBig && self.u16_at(at, false) != Some(0x0002);
        let short = || format!("the file ends inside an element header at byte {at}");
        let group = self.u16_at(at, big).ok_or_else(short)?;
        let element = self.u16_at(at + 2, big).ok_or_else(short)?;
        let tag = Tag(group, element);
        // The encoding the transfer syntax names, strictly, as the parser reads it: what the
        // walk checks is what the parser will allocate.
        let explicit = self.encoding != Encoding::ImplicitLittle || group == 0x0002;
        if group == 0xFFFE || !explicit {
            let len = self.u32_at(at + 4, big).ok_or_else(short)?;
            return Ok((tag, None, len, 8));
        }
        let code = self.bytes.get(at + 4..at + 6).ok_or_else(short)?;
        // An unknown VR is read as UN (a 4-byte length), as dicom-rs does.
        let vr = Some(VR::from_binary([code[0], code[1]]).unwrap_or(VR::UN));
        let long = matches!(
            vr,
            Some(
                VR::OB
                    | VR::OD
                    | VR::OF
                    | VR::OL
                    | VR::OV
                    | VR::OW
                    | VR::SQ
                    | VR::SV
                    | VR::UC
                    | VR::UN
                    | VR::UR
                    | VR::UT
                    | VR::UV
            )
        );
        if long {
            let len = self.u32_at(at + 8, big).ok_or_else(short)?;
            Ok((tag, vr, len, 12))
        } else {
            let len = self.u16_at(at + 6, big).ok_or_else(short)?;
            Ok((tag, vr, u32::from(len), 8))
        }
    }

    /// The end of a value of `len` bytes starting at `at`, if it fits before `limit`.
    fn fits(&self, tag: Tag, at: usize, len: u32, limit: usize) -> Result<usize, String> {
        let end = at.checked_add(len as usize).filter(|e| *e <= limit);
        end.ok_or_else(|| {
            format!(
                "element ({:04X},{:04X}) declares {len} bytes; only {} remain in the file",
                tag.0,
                tag.1,
                limit.saturating_sub(at)
            )
        })
    }

    /// Whether an element is a sequence (explicit: its VR; implicit: the dictionary's).
    fn is_sequence(tag: Tag, vr: Option<VR>) -> bool {
        match vr {
            Some(vr) => vr == VR::SQ,
            None => dicom_dictionary_std::StandardDataDictionary
                .by_tag(tag)
                .is_some_and(|e| e.vr().relaxed() == VR::SQ),
        }
    }

    /// Walk the elements from `at` to `limit`.
    fn elements(&self, mut at: usize, limit: usize, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while at < limit {
            at = self.one_element(at, limit, depth)?;
        }
        Ok(())
    }

    /// Walk one element at `at` (a sequence's items too); where it ends.
    fn one_element(&self, at: usize, limit: usize, depth: usize) -> Result<usize, String> {
        let (tag, vr, len, header) = self.header(at)?;
        let body = at + header;
        // Encapsulated pixel data: items that are compressed fragments, not elements.
        let fragments = tag == Tag(0x7FE0, 0x0010) && len == UNDEFINED;
        let nested = fragments || Self::is_sequence(tag, vr);
        // An undefined length marks a sequence also where the VR is unknown (implicit, or UN).
        let unknown = matches!(vr, None | Some(VR::UN));
        match (len == UNDEFINED, nested) {
            (true, true) => self.items(body, limit, depth + 1, None, fragments),
            (true, false) if unknown => self.items(body, limit, depth + 1, None, false),
            (true, false) => Err(format!(
                "element ({:04X},{:04X}) has an undefined length but is no sequence",
                tag.0, tag.1
            )),
            (false, true) => {
                let end = self.fits(tag, body, len, limit)?;
                self.items(body, end, depth + 1, Some(end), false)
            }
            (false, false) => self.fits(tag, body, len, limit),
        }
    }

    /// Walk a sequence's items (or, `fragments`, pixel-data fragments) from `at`: to `end`
    /// when its length is defined, else to its delimiter. Returns where the sequence ends.
    fn items(
        &self,
        mut at: usize,
        limit: usize,
        depth: usize,
        end: Option<usize>,
        fragments: bool,
    ) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        loop {
            if end.is_some_and(|e| at >= e) {
                return Ok(at);
            }
            let (tag, _, len, header) = self.header(at)?;
            at += header;
            at = match (tag, len) {
                (Tag(0xFFFE, 0xE0DD), _) => return Ok(at),
                (Tag(0xFFFE, 0xE000), UNDEFINED) if !fragments => {
                    self.item_until_delimiter(at, limit, depth)?
                }
                (Tag(0xFFFE, 0xE000), _) if len != UNDEFINED => {
                    let item_end = self.fits(tag, at, len, limit)?;
                    if !fragments {
                        self.elements(at, item_end, depth)?;
                    }
                    item_end
                }
                _ => {
                    return Err(format!(
                        "({:04X},{:04X}) where a sequence item was expected",
                        tag.0, tag.1
                    ))
                }
            };
        }
    }

    /// Walk an undefined-length item's elements to its delimiter; where it ends.
    fn item_until_delimiter(
        &self,
        mut at: usize,
        limit: usize,
        depth: usize,
    ) -> Result<usize, String> {
        loop {
            let (tag, _, _, header) = self.header(at)?;
            if tag == Tag(0xFFFE, 0xE00D) {
                return Ok(at + header);
            }
            at = self.one_element(at, limit, depth)?;
        }
    }
}
