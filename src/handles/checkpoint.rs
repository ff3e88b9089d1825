//! The optimizer's state blob: a header of little-endian u64 fields that identify the handle,
//! the raw sections in context byte order, and an FNV-1a-64 checksum of everything before it.

use crate::core::codes::{Code, StepOutcome};
use crate::core::config::Side;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::handles::optimizer::{grass_optimizer, Kind};
use crate::{bail, ensure};

const MAGIC: u64 = u64::from_le_bytes(*b"GRASSCK\x01");
/// Format 3 added `layer_id` to the identity; format 2 blobs (without it) still import.
const FORMAT: u64 = 3;
const FORMAT_2: u64 = 2;
const FIELDS: [&str; HEADER] = [
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
    "layer_id",
];
/// Header fields of format 3 (format 2 has the first 16).
const HEADER: usize = 17;
/// Fields 0..IDENTITY, and `layer_id` (field 16), must equal the importing handle's; the rest
/// is progress that the blob restores.
const IDENTITY: usize = 11;
const LAYER_ID: usize = 16;

fn header(o: &grass_optimizer) -> [u64; HEADER] {
    let mut h = [0u64; HEADER];
    h[0] = MAGIC;
    h[1] = FORMAT;
    h[3] = o.w_dtype.code() as u64;
    h[4] = o.cfg.state_dtype.code() as u64;
    h[11] = o.steps;
    match &o.kind {
        Kind::Sparse {
            proj, accumulated, ..
        } => {
            h[2] = 1;
            h[5] = proj.dtype.code() as u64;
            h[6] = proj.p.m as u64;
            h[7] = proj.p.n as u64;
            h[8] = proj.p.side.code() as u64;
            h[9] = proj.sel.rank as u64;
            h[12] = proj.refresh_count as u64;
            h[13] = proj.steps_since_refresh;
            h[14] = proj.has_selection as u64 | (proj.has_prev as u64) << 1;
            h[15] = *accumulated as u64;
            h[16] = proj.sel.layer_id as u64;
        }
        Kind::Dense {
            numel,
            grad_dtype,
            layer_id,
        } => {
            h[5] = grad_dtype.code() as u64;
            h[10] = *numel as u64;
            h[16] = *layer_id as u64;
        }
    }
    h
}

fn dtype_name(code: u64) -> String {
    i32::try_from(code)
        .ok()
        .and_then(Dtype::from_code)
        .map_or_else(|| format!("dtype {code}"), |d| d.label().to_string())
}

/// A handle's identity as a message names it, from header fields (`layer_id` none for a
/// format 2 blob).
fn identity(h: &[u64], layer_id: Option<u64>) -> String {
    if h[2] == 1 {
        let side = i32::try_from(h[8])
            .ok()
            .and_then(Side::from_code)
            .map_or_else(|| format!("side {}", h[8]), |s| s.label().to_string());
        let layer = layer_id.map_or_else(
            || "layer_id not recorded".into(),
            |l| format!("layer_id {l}"),
        );
        format!(
            "GRASS layer {}x{} side {side} rank {} w {} state {} act {}, {layer}",
            h[6],
            h[7],
            h[9],
            dtype_name(h[3]),
            dtype_name(h[4]),
            dtype_name(h[5])
        )
    } else {
        let layer = layer_id.map_or_else(
            || "layer_id not recorded".into(),
            |l| format!("layer_id {l}"),
        );
        format!(
            "dense parameter of {} elements w {} state {} grad {}, {layer}",
            h[10],
            dtype_name(h[3]),
            dtype_name(h[4]),
            dtype_name(h[5])
        )
    }
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
    HEADER * 8 + sections(o).iter().map(|s| s.1).sum::<usize>() + 8
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

/// A blob checked against its optimizer, ready to import.
pub(crate) struct Checked<'a> {
    src: &'a [u8],
    /// Bytes of the blob's header (format 3: HEADER fields; format 2: 16).
    header_bytes: usize,
    theirs: [u64; HEADER],
}

/// Checks a blob against `o` without changing anything: size, checksum, format, identity,
/// and the ranges of its progress fields, step counts and indices.
pub(crate) fn check<'a>(o: &grass_optimizer, src: &'a [u8]) -> Result<Checked<'a>> {
    ensure!(
        src.len() >= 16,
        BadCheckpoint,
        "bytes = {} is too short for a grass optimizer state",
        src.len()
    );
    let word = |i: usize| u64::from_le_bytes(src[i * 8..i * 8 + 8].try_into().unwrap());
    ensure!(
        word(0) == MAGIC,
        BadCheckpoint,
        "the blob does not start with grass's checkpoint magic: not an optimizer state"
    );
    let format = word(1);
    let fields = match format {
        FORMAT => HEADER,
        FORMAT_2 => 16,
        f => bail!(
            BadCheckpoint,
            "format = {f} is not one this library reads ({FORMAT_2}, {FORMAT})"
        ),
    };
    let need = size(o) - (HEADER - fields) * 8;
    let mine = header(o);
    let mut theirs = [0u64; HEADER];
    let readable = src.len() >= fields * 8;
    if readable {
        for (i, t) in theirs.iter_mut().enumerate().take(fields) {
            *t = word(i);
        }
    }
    let their_layer = (fields == HEADER).then_some(theirs[LAYER_ID]);
    let mismatch = || {
        (2..IDENTITY).find(|&i| mine[i] != theirs[i]).or_else(|| {
            their_layer
                .filter(|&l| l != mine[LAYER_ID])
                .map(|_| LAYER_ID)
        })
    };
    let identity_error = |i: usize| {
        crate::Error::new(
            crate::ErrorKind::BadCheckpoint,
            format!(
                "the blob is the state of a {} but this optimizer is a {} ({} differs: {} in the blob, {} here)",
                identity(&theirs, their_layer),
                identity(&mine, Some(mine[LAYER_ID])),
                FIELDS[i],
                theirs[i],
                mine[i]
            ),
        )
    };
    if src.len() != need {
        // a blob of another handle has another size: name both identities when its header
        // says whose it is
        if let Some(i) = readable.then(mismatch).flatten() {
            return Err(identity_error(i));
        }
        bail!(
            BadCheckpoint,
            "bytes = {} but this optimizer's state takes {need} in format {format}",
            src.len()
        );
    }
    let body = need - 8;
    let sum = u64::from_le_bytes(src[body..].try_into().unwrap());
    ensure!(
        fnv1a(&src[..body]) == sum,
        BadCheckpoint,
        "checksum mismatch: the blob is damaged"
    );
    if let Some(i) = mismatch() {
        return Err(identity_error(i));
    }
    let h = fields * 8;
    let counts: Vec<i32> = src[h..h + 4 * (1 + o.step_counts())]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    ensure!(
        StepOutcome::from_code(counts[0]).is_some() && counts[1..].iter().all(|&t| t >= 0),
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
        let off = h + 4 * (1 + r) + 2 * o.state_elements() * o.cfg.state_dtype.size();
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
    Ok(Checked {
        src,
        header_bytes: h,
        theirs,
    })
}

/// Restores a blob that [`check`] accepted for this same optimizer.
pub(crate) fn restore(o: &mut grass_optimizer, c: &Checked<'_>, stream: usize) -> Result<()> {
    let (src, theirs) = (c.src, &c.theirs);
    let mut at = c.header_bytes;
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

pub(crate) fn import(o: &mut grass_optimizer, src: &[u8], stream: usize) -> Result<()> {
    let c = check(o, src)?;
    restore(o, &c, stream)
}

/// A file of several optimizers' states: a header of little-endian u64 fields (magic, format,
/// count, then each state's bytes), the states as `export` writes them, in order, and an
/// FNV-1a-64 checksum of everything before it.
const SET_MAGIC: u64 = u64::from_le_bytes(*b"GRASSSET");
const SET_FORMAT: u64 = 1;

/// The file's bytes for these optimizers.
pub(crate) fn save_set(optimizers: &[&grass_optimizer], stream: usize) -> Result<Vec<u8>> {
    let sizes: Vec<usize> = optimizers.iter().map(|o| size(o)).collect();
    let head = 8 * (3 + sizes.len());
    let mut out = vec![0u8; head + sizes.iter().sum::<usize>() + 8];
    let mut fields = vec![SET_MAGIC, SET_FORMAT, sizes.len() as u64];
    fields.extend(sizes.iter().map(|&s| s as u64));
    for (i, f) in fields.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
    }
    let mut at = head;
    for (o, &n) in optimizers.iter().zip(&sizes) {
        export(o, &mut out[at..at + n], stream)?;
        at += n;
    }
    let sum = fnv1a(&out[..at]);
    out[at..].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Checks a whole file against these optimizers (count, checksum, every state's identity and
/// contents), and only then restores every one.
pub(crate) fn load_set(
    optimizers: &mut [&mut grass_optimizer],
    file: &[u8],
    stream: usize,
) -> Result<()> {
    let word = |i: usize| -> Option<u64> {
        file.get(i * 8..i * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    ensure!(
        word(0) == Some(SET_MAGIC),
        BadCheckpoint,
        "the file is not a grass checkpoint (its first 8 bytes are not the magic \"GRASSSET\")"
    );
    match word(1) {
        Some(SET_FORMAT) => {}
        f => bail!(
            BadCheckpoint,
            "format = {} is not one this library reads ({SET_FORMAT})",
            f.map_or("missing".into(), |f| f.to_string())
        ),
    }
    let count = word(2).unwrap_or(u64::MAX);
    ensure!(
        count == optimizers.len() as u64,
        BadCheckpoint,
        "the file holds {count} optimizer states but count = {} optimizers were given",
        optimizers.len()
    );
    let head = 8 * (3 + optimizers.len());
    ensure!(
        file.len() >= head + 8,
        BadCheckpoint,
        "the file is truncated: {} bytes, its header alone takes {}",
        file.len(),
        head + 8
    );
    let sizes: Vec<u64> = (0..optimizers.len())
        .map(|i| word(3 + i).unwrap())
        .collect();
    let total = sizes
        .iter()
        .try_fold(head as u64 + 8, |a, &s| a.checked_add(s))
        .unwrap_or(u64::MAX);
    ensure!(
        total == file.len() as u64,
        BadCheckpoint,
        "the file has {} bytes but its header says {total}: it is truncated or damaged",
        file.len()
    );
    let body = file.len() - 8;
    let sum = u64::from_le_bytes(file[body..].try_into().unwrap());
    ensure!(
        fnv1a(&file[..body]) == sum,
        BadCheckpoint,
        "checksum mismatch: the file is damaged"
    );
    let mut checked = Vec::with_capacity(optimizers.len());
    let mut at = head;
    for (i, (o, &n)) in optimizers.iter().zip(&sizes).enumerate() {
        let blob = &file[at..at + n as usize];
        at += n as usize;
        checked.push(
            check(o, blob).map_err(|e| {
                crate::Error::new(e.kind, format!("optimizers[{i}]: {}", e.message))
            })?,
        );
    }
    for (o, c) in optimizers.iter_mut().zip(&checked) {
        restore(o, c, stream)?;
    }
    Ok(())
}
