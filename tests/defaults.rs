//! The one set of defaults (what the C init functions return), the rank rule
//! (`grass_default_rank`, rank 0 in a config), and the full-rank flag of the info structs,
//! with ABI 3's smaller info structs still accepted.

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;

#[test]
fn the_init_functions_return_the_measured_defaults() {
    let mut pc: grass_projection_config = unsafe { std::mem::zeroed() };
    let mut ac: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe { grass_projection_config_init(&mut pc) }).unwrap();
    check(unsafe {
        grass_adamw_config_init_sized(&mut ac, std::mem::size_of::<grass_adamw_config>())
    })
    .unwrap();
    // the sweep's best configuration (bench/results/sweep_train/sweep.md)
    assert_eq!(
        pc.struct_size,
        std::mem::size_of::<grass_projection_config>()
    );
    assert_eq!(
        (pc.side, pc.rank, pc.method, pc.power, pc.scaling),
        (
            GRASS_SIDE_COLS,
            0,
            GRASS_METHOD_UNIFORM_NR,
            2,
            GRASS_SCALING_NONE
        )
    );
    assert_eq!((pc.refresh_every, pc.seed, pc.layer_id), (50, 0, 0));
    assert_eq!(
        (ac.beta1, ac.beta2, ac.eps, ac.weight_decay),
        (0.9, 0.999, 1e-8, 0.0)
    );
    assert_eq!(
        (ac.decay_mode, ac.alpha, ac.refresh_mode, ac.state_dtype),
        (
            GRASS_DECAY_SELECTED,
            0.177,
            GRASS_REFRESH_RESET,
            GRASS_DTYPE_BF16
        )
    );
    assert_eq!(ac.row_warmup, 10);
}

/// `grass_adamw_config_init`, the symbol ABI 3-5 programs call, fills their 40-byte release
/// (struct_size 40) and nothing past it; `grass_adamw_config_init_sized` fills the release of
/// the size given (grass.h's macro passes sizeof) and refuses an unknown size, writing nothing.
#[test]
fn the_adamw_config_init_fills_the_callers_release() {
    let size = std::mem::size_of::<grass_adamw_config>();
    let mut words = [u64::MAX; 8];
    check(unsafe { grass_adamw_config_init(words.as_mut_ptr().cast()) }).unwrap();
    assert_eq!(words[0], 40);
    assert_eq!(&words[5..], &[u64::MAX; 3], "nothing past ABI 5's struct");
    let old: grass_adamw_config = unsafe { std::ptr::read(words.as_ptr().cast()) };
    let new = grass_adamw_config::defaults();
    assert_eq!(
        (old.beta1, old.alpha, old.state_dtype),
        (new.beta1, new.alpha, new.state_dtype)
    );
    assert_eq!(size, 56, "ABI 7's release");
    for known in [40usize, 48, size] {
        let mut words = [u64::MAX; 8];
        check(unsafe { grass_adamw_config_init_sized(words.as_mut_ptr().cast(), known) }).unwrap();
        assert_eq!(words[0] as usize, known);
        assert_eq!(
            &words[known.div_ceil(8)..],
            &vec![u64::MAX; 8 - known.div_ceil(8)][..]
        );
    }
    // a struct holding other values first, so the init must write every field
    let mut c = grass_adamw_config {
        row_warmup: -7,
        alpha: 9.0,
        ..grass_adamw_config::defaults()
    };
    check(unsafe { grass_adamw_config_init_sized(&mut c, size) }).unwrap();
    let d = grass_adamw_config::defaults();
    assert_eq!((c.row_warmup, c.alpha), (d.row_warmup, d.alpha));
    for bad in [0usize, 8, 44, 52, size + 8] {
        let mut words = [u64::MAX; 8];
        assert_eq!(
            unsafe { grass_adamw_config_init_sized(words.as_mut_ptr().cast(), bad) },
            grass_status::GRASS_ERROR_STRUCT_SIZE
        );
        assert!(
            last_error().contains(&format!("(40, 48, {size})")),
            "{}",
            last_error()
        );
        assert_eq!(words, [u64::MAX; 8], "nothing written for size {bad}");
    }
}

/// A caller built against ABI 3-5 passes a 40-byte grass_adamw_config (ending at
/// `state_dtype`): accepted, and `row_warmup`, which it lacks, takes its default; the bytes past
/// its struct are never read (here -1, which the library would refuse as a warm-up).
#[test]
fn an_abi_5_adamw_config_gets_the_default_row_warmup() {
    let ctx = Ctx::cpu();
    let mut old = grass_adamw_config {
        row_warmup: -1,
        ..grass_adamw_config::defaults()
    };
    old.struct_size = 40;
    assert_eq!(std::mem::offset_of!(grass_adamw_config, row_warmup), 40);
    let (m, n) = (4usize, 3usize);
    let (mut w, mut ms, mut vs, mut steps) =
        (vec![1f32; m * n], vec![0f32; 6], vec![0f32; 6], vec![0; 2]);
    sparse_adamw_step(
        &ctx,
        &old,
        (m, n),
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        w.as_mut_ptr().cast(),
        &[0, 3],
        &[1.0, 1.0],
        &[0.5; 6],
        (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
        &mut steps,
        1e-2,
        ptr::null_mut(),
    );
    assert_eq!(steps, vec![1, 1]);
    assert_ne!(w, vec![1f32; m * n]);
}

/// An independent statement of the rule: the multiple of 8 nearest to d/2 (ties up), at least
/// 8, at most d.
fn rule(d: i64) -> i64 {
    let r = ((d as f64 / 16.0) + 0.5).floor() as i64 * 8;
    r.max(8).min(d)
}

#[test]
fn default_rank_is_half_of_d_in_multiples_of_8() {
    for d in (1..3000).chain([4096, 5120, 11008, 13824, i32::MAX as i64]) {
        let mut r = -1;
        check(unsafe { grass_default_rank(d, &mut r) }).unwrap();
        assert_eq!(r, rule(d), "d = {d}");
    }
    let mut r = -1;
    check(unsafe { grass_default_rank(128, &mut r) }).unwrap();
    assert_eq!(r, 64, "the trainer's cpu preset: r = 64 on d = 128");
    for d in [0i64, -3, i32::MAX as i64 + 1] {
        let mut r = -1;
        assert_eq!(
            unsafe { grass_default_rank(d, &mut r) },
            grass_status::GRASS_ERROR_INVALID_VALUE
        );
        assert!(
            last_error().contains(&format!("d = {d}")),
            "{}",
            last_error()
        );
        assert_eq!(r, -1);
    }
    assert_eq!(
        unsafe { grass_default_rank(64, ptr::null_mut()) },
        grass_status::GRASS_ERROR_NULL_POINTER
    );
    assert!(
        last_error().contains("rank_out is NULL"),
        "{}",
        last_error()
    );
}

fn create(
    ctx: &Ctx,
    pc: &grass_projection_config,
    m: i64,
    n: i64,
) -> Result<*mut grass_optimizer, (grass_status, String)> {
    sparse_optimizer(ctx, pc, &grass_adamw_config::defaults(), m, n, 4)
}

fn infos(o: *mut grass_optimizer) -> (grass_optimizer_info, grass_projection_info) {
    let mut oi: grass_optimizer_info = unsafe { std::mem::zeroed() };
    oi.struct_size = std::mem::size_of::<grass_optimizer_info>();
    check(unsafe { grass_optimizer_get_info(o, &mut oi) }).unwrap();
    let mut proj = ptr::null_mut();
    check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
    let mut pi: grass_projection_info = unsafe { std::mem::zeroed() };
    pi.struct_size = std::mem::size_of::<grass_projection_info>();
    check(unsafe { grass_projection_get_info(proj, &mut pi) }).unwrap();
    (oi, pi)
}

#[test]
fn rank_zero_follows_the_rule_and_full_rank_is_reported() {
    let ctx = Ctx::cpu();
    let pc = grass_projection_config::defaults();
    // the default side is cols: d = n
    for (m, n) in [(128i64, 128i64), (256, 768), (768, 256), (40, 6)] {
        let o = create(&ctx, &pc, m, n).unwrap();
        let (oi, pi) = infos(o);
        assert_eq!(pi.d, n);
        assert_eq!(pi.rank, rule(n), "{m} x {n}");
        assert_eq!(oi.state_elements, rule(n) * m);
        let full = (rule(n) == n) as i32;
        assert_eq!((oi.full_rank, pi.full_rank), (full, full), "{m} x {n}");
        unsafe { grass_optimizer_destroy(o) };
    }
    // an explicit rank equal to d: created, flagged; above d: refused naming both numbers
    let mut full = pc;
    full.rank = 64;
    full.side = GRASS_SIDE_ROWS;
    let o = create(&ctx, &full, 64, 100).unwrap();
    let (oi, pi) = infos(o);
    assert_eq!((oi.full_rank, pi.full_rank, pi.rank, pi.d), (1, 1, 64, 64));
    unsafe { grass_optimizer_destroy(o) };
    full.rank = 65;
    let (st, msg) = create(&ctx, &full, 64, 100).unwrap_err();
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(
        msg.contains("rank = 65") && msg.contains("projected dimension 64"),
        "{msg}"
    );
    full.rank = -1;
    let (st, msg) = create(&ctx, &full, 64, 100).unwrap_err();
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(msg.contains("config->rank = -1 must be 0"), "{msg}");
    // a dense optimizer is never flagged
    let mut d = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_dense(
            ctx.0,
            &grass_adamw_config::defaults(),
            10,
            GRASS_DTYPE_F32,
            GRASS_DTYPE_F32,
            &mut d,
        )
    })
    .unwrap();
    let mut oi: grass_optimizer_info = unsafe { std::mem::zeroed() };
    oi.struct_size = std::mem::size_of::<grass_optimizer_info>();
    oi.full_rank = 7;
    check(unsafe { grass_optimizer_get_info(d, &mut oi) }).unwrap();
    assert_eq!((oi.is_sparse, oi.full_rank), (0, 0));
    unsafe { grass_optimizer_destroy(d) };
}

/// A caller built against ABI 3 passes the info structs' ABI 3 sizes (48 and 88 bytes, ending
/// at `memory_bytes`): accepted, and nothing past them is written.
#[test]
fn abi_3_info_structs_are_still_accepted() {
    let ctx = Ctx::cpu();
    let mut pc = grass_projection_config::defaults();
    pc.rank = 8;
    let o = create(&ctx, &pc, 16, 8).unwrap(); // rank == d: full_rank would be 1
    let mut words = [u64::MAX; 8];
    words[0] = 48;
    check(unsafe { grass_optimizer_get_info(o, words.as_mut_ptr().cast()) }).unwrap();
    assert_eq!(words[0], 48);
    assert_eq!(
        words[5] as i64,
        infos(o).0.memory_bytes,
        "memory_bytes written"
    );
    assert_eq!(&words[6..], &[u64::MAX; 2], "nothing past ABI 3's struct");
    let mut proj = ptr::null_mut();
    check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
    let mut words = [u64::MAX; 14];
    words[0] = 88;
    check(unsafe { grass_projection_get_info(proj, words.as_mut_ptr().cast()) }).unwrap();
    assert_eq!(words[6] as i64, 8, "rank");
    assert_eq!(words[10] as i64, infos(o).1.memory_bytes);
    assert_eq!(&words[11..], &[u64::MAX; 3], "nothing past ABI 3's struct");
    for bad in [56usize - 4, 100] {
        let mut words = [0u64; 16];
        words[0] = bad as u64;
        assert_eq!(
            unsafe { grass_optimizer_get_info(o, words.as_mut_ptr().cast()) },
            grass_status::GRASS_ERROR_STRUCT_SIZE
        );
        assert!(last_error().contains("(48, 56)"), "{}", last_error());
    }
    unsafe { grass_optimizer_destroy(o) };
}

/// ABI 7: a dense optimizer keeps the moments of `dense_state_dtype` (f32 by default, while the
/// GRASS layers' `state_dtype` defaults to bf16); an ABI 6 caller's 48-byte config, which has
/// no such field, keeps its rule (dense moments of `state_dtype`) whatever its padding holds;
/// a bad `dense_state_dtype` or a nonzero `reserved` is refused, naming the field.
#[test]
fn dense_optimizers_keep_the_moments_of_dense_state_dtype() {
    let ctx = Ctx::cpu();
    let d = grass_adamw_config::defaults();
    assert_eq!(
        (d.state_dtype, d.dense_state_dtype, d.reserved),
        (GRASS_DTYPE_BF16, GRASS_DTYPE_F32, 0)
    );
    let dense_bytes = |cfg: &grass_adamw_config| -> Result<usize, String> {
        let mut o = ptr::null_mut();
        let st = unsafe {
            grass_optimizer_create_dense(ctx.0, cfg, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &mut o)
        };
        if st != grass_status::GRASS_OK {
            assert!(o.is_null());
            return Err(last_error());
        }
        let mut bytes = 0usize;
        check(unsafe { grass_optimizer_state_size(o, &mut bytes) }).unwrap();
        unsafe { grass_optimizer_destroy(o) };
        Ok(bytes)
    };
    let f32_bytes = dense_bytes(&d).unwrap();
    let bf16 = grass_adamw_config {
        dense_state_dtype: GRASS_DTYPE_BF16,
        ..d
    };
    assert_eq!(f32_bytes - dense_bytes(&bf16).unwrap(), 2 * 10 * 2);
    // ABI 6: 48 bytes, the padding after row_warmup (where dense_state_dtype now is) garbage
    let abi6 = grass_adamw_config {
        struct_size: 48,
        state_dtype: GRASS_DTYPE_BF16,
        dense_state_dtype: 0x7777,
        reserved: 0x7777,
        ..d
    };
    assert_eq!(dense_bytes(&abi6).unwrap(), dense_bytes(&bf16).unwrap());
    let abi6_f32 = grass_adamw_config {
        state_dtype: GRASS_DTYPE_F32,
        ..abi6
    };
    assert_eq!(dense_bytes(&abi6_f32).unwrap(), f32_bytes);
    let f16 = grass_adamw_config {
        dense_state_dtype: GRASS_DTYPE_F16,
        ..d
    };
    let msg = dense_bytes(&f16).unwrap_err();
    assert!(msg.contains("dense_state_dtype = f16"), "{msg}");
    let reserved = grass_adamw_config { reserved: 3, ..d };
    let msg = dense_bytes(&reserved).unwrap_err();
    assert!(msg.contains("config->reserved = 3 must be 0"), "{msg}");
    // the GRASS layers keep state_dtype's moments whatever dense_state_dtype says
    let pc = grass_projection_config {
        rank: 8,
        ..grass_projection_config::defaults()
    };
    let sparse = |cfg: &grass_adamw_config| {
        let o = sparse_optimizer(&ctx, &pc, cfg, 16, 32, 4).unwrap();
        let mut bytes = 0usize;
        check(unsafe { grass_optimizer_state_size(o, &mut bytes) }).unwrap();
        unsafe { grass_optimizer_destroy(o) };
        bytes
    };
    assert_eq!(sparse(&d), sparse(&bf16));
}
