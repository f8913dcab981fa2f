//! What the pixel decoders trust, checked before they run: the bit layout (Bits Allocated,
//! Bits Stored, High Bit, Pixel Representation), and for RLE Lossless each frame's segment
//! table (count, offsets inside the fragment) and that each segment really unpacks to a whole
//! image — so a decoder never indexes past what it was given (the fuzzer found RLE headers and
//! segments that did, and Bits Stored = 64).
//!
//! Invariants: reads only the bytes given; allocates nothing of a claimed size.

/// RLE Lossless's transfer syntax.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Bits Allocated, Bits Stored, High Bit and Pixel Representation must describe a layout the
/// decoders handle (Bits Allocated 8, 16 or 32 is checked by the caller).
pub fn check_bits(
    allocated: f64,
    stored: Option<f64>,
    high: Option<f64>,
    representation: Option<f64>,
) -> Result<(), String> {
    let stored = stored.unwrap_or(allocated);
    if !(1.0..=allocated).contains(&stored) {
        return Err(format!(
            "Bits Stored {stored} with Bits Allocated {allocated}: must be 1 to {allocated}"
        ));
    }
    if let Some(high) = high.filter(|h| !(0.0..allocated).contains(h)) {
        return Err(format!(
            "High Bit {high} lies outside the {allocated} bits allocated"
        ));
    }
    if representation.is_some_and(|r| r != 0.0 && r != 1.0) {
        return Err(format!(
            "Pixel Representation {:?} is neither 0 (unsigned) nor 1 (signed)",
            representation
        ));
    }
    Ok(())
}

/// An RLE frame (`fragment`) must hold `segments` segments, each unpacking to at least
/// `pixels` bytes.
pub fn check_rle_frame(fragment: &[u8], segments: usize, pixels: usize) -> Result<(), String> {
    if fragment.len() < 64 {
        return Err(format!(
            "an RLE frame of {} bytes is shorter than its 64-byte header",
            fragment.len()
        ));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ]) as usize
    };
    let count = word(0);
    if count != segments {
        return Err(format!(
            "the RLE header names {count} segments; this image needs {segments}"
        ));
    }
    let mut offsets: Vec<usize> = (1..=count).map(word).collect();
    offsets.push(fragment.len());
    for (k, w) in offsets.windows(2).enumerate() {
        if w[0] < 64 || w[0] > w[1] || w[1] > fragment.len() {
            return Err(format!(
                "RLE segment {k} spans bytes {}..{} of a {}-byte frame: outside it or out of order",
                w[0],
                w[1],
                fragment.len()
            ));
        }
        let unpacked = packbits_len(&fragment[w[0]..w[1]]);
        if unpacked < pixels {
            return Err(format!(
                "RLE segment {k} unpacks to {unpacked} bytes; the image has {pixels} pixels"
            ));
        }
    }
    Ok(())
}

/// How many bytes PackBits data unpacks to (a literal run of n + 1 bytes, a repeat of 257 − n,
/// 128 a no-op), counting only what the data really holds.
fn packbits_len(data: &[u8]) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while at < data.len() {
        let n = data[at] as usize;
        at += 1;
        match n {
            0..=127 => {
                let run = (n + 1).min(data.len() - at);
                out += run;
                at += run;
            }
            128 => {}
            _ => {
                if at < data.len() {
                    out += 257 - n;
                    at += 1;
                }
            }
        }
    }
    out
}
