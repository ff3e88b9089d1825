//! Selection on the device gives the host's indices and scales bit for bit.

use grass::ffi::*;

use crate::gpu::*;

const METHODS: [grass_method; 5] = [
    GRASS_METHOD_TOP_R,
    GRASS_METHOD_MULTINOMIAL,
    GRASS_METHOD_MULTINOMIAL_NR,
    GRASS_METHOD_UNIFORM,
    GRASS_METHOD_UNIFORM_NR,
];

/// Scores of one kind: 0 random, 1 ties with NaN, infinities, negatives and zeros, 2 zeros.
fn scores(rng: &mut Rng, d: usize, kind: usize) -> Vec<f32> {
    (0..d)
        .map(|_| match kind {
            0 => rng.normal().abs() * 3.0,
            1 => match rng.below(8) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => -1.0,
                3 => 0.0,
                4 => 2.0,
                _ => 0.5,
            },
            _ => 0.0,
        })
        .collect()
}

fn select_ws(ctx: *const grass_context, d: usize, r: usize) -> usize {
    let mut bytes = 0;
    ok(unsafe { grass_select_workspace_size(ctx, d as i64, r as i64, &mut bytes) });
    bytes
}

fn check(g: &Gpu, cfg: &grass_projection_config, s: &[f32], refresh: u32) {
    let (d, r) = (s.len(), cfg.rank as usize);
    let mut want_idx = vec![0i32; r];
    let mut want_sc = vec![0f32; r];
    let mut ws = vec![0u8; select_ws(g.cpu, d, r)];
    ok(unsafe {
        grass_select(
            g.cpu,
            cfg,
            d as i64,
            refresh,
            std::ptr::null(),
            s.as_ptr(),
            want_idx.as_mut_ptr(),
            want_sc.as_mut_ptr(),
            ws.as_mut_ptr().cast(),
            ws.len(),
            std::ptr::null_mut(),
        )
    });
    let wsb = select_ws(g.cuda, d, r);
    let ds = DevBuf::from(s);
    // the device reads the refresh index from its own memory; the by-value one is ignored
    let dref = DevBuf::from(&[refresh]);
    let (idx, sc, dws) = (
        DevBuf::poisoned(r * 4),
        DevBuf::poisoned(r * 4),
        DevBuf::poisoned(wsb),
    );
    ok(unsafe {
        grass_select(
            g.cuda,
            cfg,
            d as i64,
            refresh.wrapping_add(1000),
            dref.ptr(),
            ds.ptr(),
            idx.ptr(),
            sc.ptr(),
            dws.void(),
            wsb,
            std::ptr::null_mut(),
        )
    });
    let what = format!(
        "method {} power {} scaling {} d={d} r={r} seed {} layer {} refresh {refresh}",
        cfg.method, cfg.power, cfg.scaling, cfg.seed, cfg.layer_id
    );
    assert_same_bits(
        &format!("indices, {what}"),
        &idx.bytes(),
        as_bytes(&want_idx),
        4,
    );
    assert_same_bits(
        &format!("scales, {what}"),
        &sc.bytes(),
        as_bytes(&want_sc),
        4,
    );
}

fn config(
    method: grass_method,
    power: i32,
    scaling: grass_scaling,
    r: usize,
    seed: u64,
) -> grass_projection_config {
    let mut cfg = std::mem::MaybeUninit::<grass_projection_config>::uninit();
    ok(unsafe { grass_projection_config_init(cfg.as_mut_ptr()) });
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.method = method;
    cfg.power = power;
    cfg.scaling = scaling;
    cfg.rank = r as i64;
    cfg.seed = seed;
    cfg.layer_id = (seed % 7) as u32;
    cfg
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_method_selects_the_hosts_rows() {
    let g = gpu("every_method_selects_the_hosts_rows");
    let mut rng = Rng::new(4);
    let shapes = [
        (1usize, 1usize),
        (7, 3),
        (7, 7),
        (100, 1),
        (100, 33),
        (1000, 250),
        (3001, 1000),
        (3001, 3001),
    ];
    let mut seed = 0;
    for &(d, r) in &shapes {
        for kind in 0..3 {
            let s = scores(&mut rng, d, kind);
            for method in METHODS {
                for power in [1, 2] {
                    for scaling in [GRASS_SCALING_UNBIASED, GRASS_SCALING_NONE] {
                        seed += 1;
                        let cfg = config(method, power, scaling, r, seed * 0x9E37_79B9);
                        check(&g, &cfg, &s, (seed % 5) as u32);
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn large_selections_match_the_host() {
    let g = gpu("large_selections_match_the_host");
    let mut rng = Rng::new(5);
    for &(d, r) in &[(13824usize, 1024usize), (20000, 256)] {
        let s = scores(&mut rng, d, 0);
        for method in METHODS {
            check(&g, &config(method, 2, GRASS_SCALING_UNBIASED, r, 42), &s, 3);
        }
    }
}
