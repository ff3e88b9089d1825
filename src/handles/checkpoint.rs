//! The optimizer's state blob: a header of little-endian u64 fields that identify the handle,
//! the raw sections in context byte order, and an FNV-1a-64 checksum of everything before it.

use crate::core::error::Result;
use crate::ffi::types::{
    dtype_code, side_code, GRASS_STEP_APPLIED, GRASS_STEP_SKIPPED_BAD_STEP_COUNT,
};
use crate::handles::optimizer::{grass_optimizer, Kind};
use crate::{bail, ensure};

const MAGIC: u64 = u64::from_le_bytes(*b"GRASSCK\x01");
const FORMAT: u64 = 2;
const FIELDS: [&str; 16] = [
    "magic",
    "format",
    "kind",
    "w_dtype",
    "state_dtype",
    "input_dtype",
    "m",
    "n",
    "side",
    "rank",
    "numel",
    "steps",
    "refresh_count",
    "steps_since_refresh",
    "selection_flags",
    "accumulated",
];
/// Fields that must equal the importing handle's (the rest is progress that the blob restores).
const IDENTITY: usize = 11;

fn header(o: &grass_optimizer) -> [u64; 16] {
    let mut h = [0u64; 16];
    h[0] = MAGIC;
    h[1] = FORMAT;
    h[3] = dtype_code(o.w_dtype) as u64;
    h[4] = dtype_code(o.cfg.state_dtype) as u64;
    h[11] = o.steps;
    match &o.kind {
        Kind::Sparse {
            proj, accumulated, ..
        } => {
            h[2] = 1;
            h[5] = dtype_code(proj.dtype) as u64;
            h[6] = proj.p.m as u64;
            h[7] = proj.p.n as u64;
            h[8] = side_code(proj.p.side) as u64;
            h[9] = proj.sel.rank as u64;
            h[12] = proj.refresh_count as u64;
            h[13] = proj.steps_since_refresh;
            h[14] = proj.has_selection as u64 | (proj.has_prev as u64) << 1;
            h[15] = *accumulated as u64;
        }
        Kind::Dense { numel, grad_dtype } => {
            h[5] = dtype_code(*grad_dtype) as u64;
            h[10] = *numel as u64;
        }
    }
    h
}

/// (address, bytes) of every section in blob order.
fn sections(o: &grass_optimizer) -> Vec<(usize, usize)> {
    let state = o.state_elements() * o.cfg.state_dtype.size();
    let mut s = vec![
        (o.counters.addr(), 4 * (1 + o.step_counts())),
        (o.m.addr(), state),
        (o.v.addr(), state),
    ];
    if let Kind::Sparse { proj, g, .. } = &o.kind {
        let r = proj.sel.rank * 4;
        s.extend([
            (proj.indices.addr(), r),
            (proj.prev_indices.addr(), r),
            (proj.scales.addr(), r),
            (g.addr(), o.state_elements() * 4),
        ]);
    }
    s
}

pub(crate) fn size(o: &grass_optimizer) -> usize {
    16 * 8 + sections(o).iter().map(|s| s.1).sum::<usize>() + 8
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn export(o: &grass_optimizer, dst: &mut [u8], stream: usize) -> Result<()> {
    let mut at = 0;
    for f in header(o) {
        dst[at..at + 8].copy_from_slice(&f.to_le_bytes());
        at += 8;
    }
    for (addr, bytes) in sections(o) {
        o.context()
            .download(addr, &mut dst[at..at + bytes], stream)?;
        at += bytes;
    }
    let sum = fnv1a(&dst[..at]);
    dst[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

pub(crate) fn import(o: &mut grass_optimizer, src: &[u8], stream: usize) -> Result<()> {
    let need = size(o);
    ensure!(
        src.len() == need,
        BadCheckpoint,
        "bytes = {} but this optimizer's state takes {need}",
        src.len()
    );
    let body = need - 8;
    let sum = u64::from_le_bytes(src[body..].try_into().unwrap());
    ensure!(
        fnv1a(&src[..body]) == sum,
        BadCheckpoint,
        "checksum mismatch: the blob is damaged"
    );
    let mine = header(o);
    let mut theirs = [0u64; 16];
    for (i, t) in theirs.iter_mut().enumerate() {
        *t = u64::from_le_bytes(src[i * 8..i * 8 + 8].try_into().unwrap());
    }
    for i in 0..IDENTITY {
        if mine[i] != theirs[i] {
            bail!(
                BadCheckpoint,
                "field {} is {} in the blob but {} in this optimizer",
                FIELDS[i],
                theirs[i],
                mine[i]
            );
        }
    }
    let counts: Vec<i32> = src[16 * 8..16 * 8 + 4 * (1 + o.step_counts())]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ensure!(
        (GRASS_STEP_APPLIED..=GRASS_STEP_SKIPPED_BAD_STEP_COUNT).contains(&counts[0])
            && counts[1..].iter().all(|&t| t >= 0),
        BadCheckpoint,
        "step counts are out of range"
    );
    if let Kind::Sparse { proj, .. } = &o.kind {
        ensure!(
            theirs[15] <= u32::MAX as u64 && theirs[12] <= u32::MAX as u64 && theirs[14] < 4,
            BadCheckpoint,
            "progress fields are out of range"
        );
        let r = proj.sel.rank;
        let off = 16 * 8 + 4 * (1 + r) + 2 * o.state_elements() * o.cfg.state_dtype.size();
        for part in 0..2 {
            let base = off + part * r * 4;
            let idx: Vec<i32> = src[base..base + r * 4]
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if theirs[14] >> part & 1 == 1 {
                crate::cpu::ops::check_indices("checkpoint indices", &idx, proj.p.d)
                    .map_err(|e| crate::Error::new(crate::ErrorKind::BadCheckpoint, e.message))?;
            }
        }
    }
    let mut at = 16 * 8;
    for (addr, bytes) in sections(o) {
        o.context().upload(addr, &src[at..at + bytes], stream)?;
        at += bytes;
    }
    o.steps = theirs[11];
    if let Kind::Sparse {
        proj, accumulated, ..
    } = &mut o.kind
    {
        proj.refresh_count = theirs[12] as u32;
        proj.steps_since_refresh = theirs[13];
        proj.has_selection = theirs[14] & 1 == 1;
        proj.has_prev = theirs[14] & 2 == 2;
        *accumulated = theirs[15] as u32;
    }
    Ok(())
}
