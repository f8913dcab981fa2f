//! BGZF: gzip made of many small members (the blocked gzip of htslib/samtools), each naming its
//! own compressed size in a gzip extra field. It is still plain gzip: every `.nii.gz` reader
//! (nibabel, ITK, FSL's znzlib, `gunzip`) reads it as one stream. mriloop writes its `.nii.gz`
//! files this way so they compress and decompress on all cores; any other gzip file is read
//! through the ordinary single-stream path.
//!
//! Invariants: `compress` produces blocks of at most 64 KiB, each with a CRC-32 and size, ending
//! with the standard empty EOF block; `decompress` checks every block's CRC and size, and never
//! writes beyond the caller's buffer.

use std::thread;

/// Uncompressed bytes per block (as htslib: 0xff00, so a block fits in 64 KiB even uncompressed).
const BLOCK_INPUT: usize = 0xff00;
/// Gzip member header with the BGZF extra field; bytes 16..18 hold the block size − 1.
const HEADER: [u8; 18] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0, 0,
];
/// The empty block that ends a BGZF file.
const EOF_BLOCK: [u8; 28] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0x1b, 0, 3, 0, 0, 0, 0, 0, 0, 0,
    0, 0,
];

fn threads() -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// Compress one block (≤ `BLOCK_INPUT` bytes) into a complete BGZF member.
fn compress_block(
    c: &mut libdeflater::Compressor,
    input: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>, String> {
    scratch.resize(c.deflate_compress_bound(input.len()), 0);
    let n = match c.deflate_compress(input, scratch) {
        Ok(n) if n + 26 <= 65536 => n,
        // Incompressible: store the bytes in deflate "stored" blocks instead (always fits).
        _ => {
            let level = libdeflater::CompressionLvl::new(0).map_err(|e| format!("{e:?}"))?;
            let mut stored = libdeflater::Compressor::new(level);
            scratch.resize(stored.deflate_compress_bound(input.len()), 0);
            stored
                .deflate_compress(input, scratch)
                .map_err(|e| e.to_string())?
        }
    };
    let total = 18 + n + 8;
    let mut block = Vec::with_capacity(total);
    block.extend_from_slice(&HEADER);
    block[16..18].copy_from_slice(&((total - 1) as u16).to_le_bytes());
    block.extend_from_slice(&scratch[..n]);
    block.extend_from_slice(&libdeflater::crc32(input).to_le_bytes());
    block.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(block)
}

/// Compress `data` as BGZF (deflate level 6), using all cores.
pub fn compress(data: &[u8]) -> Result<Vec<u8>, String> {
    let chunks: Vec<&[u8]> = data.chunks(BLOCK_INPUT).collect();
    let per_thread = chunks.len().div_ceil(threads()).max(1);
    let parts: Vec<Vec<u8>> = thread::scope(|s| {
        let handles: Vec<_> = chunks
            .chunks(per_thread)
            .map(|group| {
                s.spawn(move || -> Result<Vec<u8>, String> {
                    let mut c =
                        libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
                    let mut scratch = Vec::new();
                    let mut out = Vec::new();
                    for chunk in group {
                        out.extend(compress_block(&mut c, chunk, &mut scratch)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("compressor thread failed".into()))
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + EOF_BLOCK.len());
    for p in parts {
        out.extend(p);
    }
    out.extend_from_slice(&EOF_BLOCK);
    Ok(out)
}

/// One block of a BGZF stream.
struct Block {
    /// Compressed deflate payload range in the input.
    payload: std::ops::Range<usize>,
    crc: u32,
    len: usize,
}

/// Walk the blocks of a BGZF stream; `None` if it is not BGZF (or not entirely).
fn blocks(gz: &[u8]) -> Option<Vec<Block>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < gz.len() {
        let h = gz.get(at..at + 12)?;
        if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 || h[3] & 4 == 0 {
            return None;
        }
        let xlen = u16::from_le_bytes([h[10], h[11]]) as usize;
        let extra = gz.get(at + 12..at + 12 + xlen)?;
        // Find the BC subfield.
        let mut p = 0usize;
        let mut bsize = None;
        while p + 4 <= extra.len() {
            let slen = u16::from_le_bytes([extra[p + 2], extra[p + 3]]) as usize;
            if extra[p] == b'B' && extra[p + 1] == b'C' && slen == 2 && p + 6 <= extra.len() {
                bsize = Some(u16::from_le_bytes([extra[p + 4], extra[p + 5]]) as usize + 1);
            }
            p += 4 + slen;
        }
        let size = bsize?;
        let header_len = 12 + xlen;
        if size < header_len + 8 || at + size > gz.len() || h[3] & !4 != 0 {
            return None;
        }
        let tail = &gz[at + size - 8..at + size];
        out.push(Block {
            payload: at + header_len..at + size - 8,
            crc: u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]),
            len: u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]) as usize,
        });
        at += size;
    }
    (!out.is_empty()).then_some(out)
}

/// Outcome of trying the BGZF path.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflated {
    /// Not a BGZF stream, or its decompressed size is not the one expected: use the generic path.
    NotBgzf,
    /// Decoded into the caller's buffer.
    Done,
    /// A BGZF stream with a corrupt block.
    Corrupt(String),
}

/// Decompress a BGZF stream whose decompressed size must be `skip + dst.len()`, dropping its
/// first `skip` bytes (a file header) and writing the rest into `dst`, on all cores. Every block
/// is checked against its CRC-32 and size.
pub fn decompress_into(gz: &[u8], skip: usize, dst: &mut [u8]) -> Inflated {
    let Some(blocks) = blocks(gz) else {
        return Inflated::NotBgzf;
    };
    let total = blocks
        .iter()
        .try_fold(0usize, |acc, b| acc.checked_add(b.len));
    if total != skip.checked_add(dst.len()) {
        return Inflated::NotBgzf;
    }
    let starts = block_starts(&blocks);
    let per_thread = blocks.len().div_ceil(threads()).max(1);
    let errors: Vec<String> = thread::scope(|s| {
        let mut rest: &mut [u8] = dst;
        let mut rest_start = skip;
        let mut handles = Vec::new();
        for (g, group) in blocks.chunks(per_thread).enumerate() {
            let first = g * per_thread;
            let group_end = starts[first + group.len() - 1] + group[group.len() - 1].len;
            let take = group_end.saturating_sub(rest_start).min(rest.len());
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            let out = OutSlice {
                bytes: mine,
                start: rest_start,
            };
            rest_start += take;
            let starts = &starts;
            handles.push(s.spawn(move || inflate_group(gz, group, first, starts, out)));
        }
        handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("decoder thread failed".into()))
                    .err()
            })
            .collect()
    });
    match errors.into_iter().next() {
        Some(e) => Inflated::Corrupt(e),
        None => Inflated::Done,
    }
}

/// Stream offset (in decompressed bytes) where each block starts.
fn block_starts(blocks: &[Block]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(blocks.len());
    let mut at = 0usize;
    for b in blocks {
        starts.push(at);
        at += b.len;
    }
    starts
}

/// One decoder thread's part of the caller's buffer: `bytes` holds stream offsets
/// `start..start + bytes.len()`.
struct OutSlice<'a> {
    bytes: &'a mut [u8],
    start: usize,
}

/// Decode the blocks of `group` (the first being block number `first`) into `out`, checking each
/// block's size and CRC; blocks reaching outside `out` are decoded into scratch and only the
/// part inside `out` is copied.
fn inflate_group(
    gz: &[u8],
    group: &[Block],
    first: usize,
    starts: &[usize],
    out: OutSlice<'_>,
) -> Result<(), String> {
    let OutSlice {
        bytes: mine,
        start: mine_start,
    } = out;
    let mut d = libdeflater::Decompressor::new();
    let mut scratch = Vec::new();
    for (i, b) in group.iter().enumerate() {
        let index = first + i;
        let begin = starts[index];
        let end = begin + b.len;
        let whole = begin >= mine_start && end <= mine_start + mine.len();
        let out: &mut [u8] = if whole {
            &mut mine[begin - mine_start..end - mine_start]
        } else {
            scratch.resize(b.len, 0);
            &mut scratch[..]
        };
        inflate_block(&mut d, &gz[b.payload.clone()], b, index, out)?;
        if !whole {
            // A block straddling the skipped prefix: copy the part that is ours.
            let lo = begin.max(mine_start);
            let hi = end.min(mine_start + mine.len());
            if lo < hi {
                mine[lo - mine_start..hi - mine_start]
                    .copy_from_slice(&scratch[lo - begin..hi - begin]);
            }
        }
    }
    Ok(())
}

/// Inflate one block's deflate `payload` into `out` (exactly `b.len` bytes) and check its size
/// and CRC-32 against the block trailer; `index` names the block in error messages.
fn inflate_block(
    d: &mut libdeflater::Decompressor,
    payload: &[u8],
    b: &Block,
    index: usize,
    out: &mut [u8],
) -> Result<(), String> {
    match d.deflate_decompress(payload, out) {
        Ok(n) if n == b.len => {}
        Ok(n) => {
            return Err(format!(
                "block {index} holds {n} bytes, its trailer says {}",
                b.len
            ))
        }
        Err(e) => return Err(format!("block {index}: {e}")),
    }
    if libdeflater::crc32(out) != b.crc {
        return Err(format!("block {index}: CRC mismatch"));
    }
    Ok(())
}
