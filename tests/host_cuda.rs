//! The memcheck of the host stand-in (tests/host_cuda, GRASS_HOST_CUDA=1) catches what it
//! promises: a kernel writing past its output (a few bytes: the guard bytes; further: a fault),
//! a host pointer given to a CUDA op, a use after free, and host code reading device memory.
//! Each case runs in a child process of this test binary with GRASS_HOST_CUDA=1 (a fault ends
//! the process), and the parent checks how it ended and what the stand-in said.
//!
//! The stand-in is built with `make -C tests/host_cuda` (up to date: nothing to do). Without
//! make or a C++ compiler the tests skip, unless GRASS_REQUIRE_CXX=1, where they fail.

#[allow(dead_code)]
#[path = "cuda/gpu.rs"]
mod gpu;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use cudarc::driver::{result, sys};
use gpu::*;
use grass::ffi::*;

const CHILD: &str = "GRASS_HOST_CUDA_TEST_CHILD";

/// In the parent: builds the stand-in and runs test `name` again in a child on it, returning
/// what the child did (None when the stand-in cannot be built and CXX is not required). In the
/// child: runs `body`.
fn in_child(name: &str, body: impl FnOnce()) -> Option<Output> {
    in_child_with(name, &[], body)
}

/// `in_child` with more environment variables for the child.
fn in_child_with(name: &str, env: &[(&str, &str)], body: impl FnOnce()) -> Option<Output> {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Once per process: the tests run on several threads, and two makes must not race.
    static BUILT: OnceLock<Result<std::process::ExitStatus, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        Command::new("make")
            .args(["-s", "-C"])
            .arg(root.join("tests/host_cuda"))
            .status()
            .map_err(|e| e.to_string())
    });
    if !matches!(built, Ok(s) if s.success()) {
        if std::env::var("GRASS_REQUIRE_CXX").as_deref() == Ok("1") {
            panic!("GRASS_REQUIRE_CXX=1 but make -C tests/host_cuda failed: {built:?}");
        }
        println!("SKIPPED: make -C tests/host_cuda failed ({built:?})");
        return None;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("GRASS_HOST_CUDA", "1")
        .env("GRASS_HOST_CUDA_DIR", root.join("target/host_cuda"))
        .envs(env.iter().copied())
        .output()
        .expect("running the child");
    Some(out)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One sparse gradient on the CUDA context (m x n = 64 x 48 by rows, b = 16, r = 8) with the
/// output `g` and the output gradient `dy` (b x m, the gathered operand) given; returns the
/// status and error message, and what the synchronization after it returned (the stand-in,
/// like a GPU, reports a fault of queued work there).
fn sparse_grad_into(g: &Gpu, gout: u64, dy: u64) -> (grass_status, String, bool) {
    let (m, n, b, r) = (64usize, 48usize, 16usize, 8usize);
    let mut rng = Rng::new(5);
    let x = DevBuf::from(&rng.normals(b * n));
    let idx = DevBuf::from(&rng.sorted_indices(r, m));
    let sc = DevBuf::from(&vec![1.5f32; r]);
    let mut wsb = 0usize;
    ok(unsafe {
        grass_sparse_grad_workspace_size(
            g.cuda,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            &mut wsb,
        )
    });
    let ws = DevBuf::poisoned(wsb);
    let st = unsafe {
        grass_sparse_grad(
            g.cuda,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            x.void(),
            dy as usize as *const _,
            idx.ptr(),
            sc.ptr(),
            gout as usize as *mut f32,
            0,
            ws.void(),
            wsb,
            std::ptr::null_mut(),
        )
    };
    let msg = last_error();
    let synced = result::ctx::synchronize().is_ok();
    (st, msg, synced)
}

fn dy_input() -> DevBuf {
    DevBuf::from(&Rng::new(6).normals(16 * 64))
}

#[test]
fn the_stand_in_runs_a_correct_call_cleanly_and_says_so() {
    let Some(out) = in_child(
        "the_stand_in_runs_a_correct_call_cleanly_and_says_so",
        || {
            let g = gpu("stand-in");
            let mut yes = 0;
            let mut why = [0 as std::ffi::c_char; 512];
            ok(unsafe { grass_cuda_available(&mut yes, why.as_mut_ptr(), why.len()) });
            let why = unsafe { std::ffi::CStr::from_ptr(why.as_ptr()) }.to_string_lossy();
            assert!(why.contains("grass host stand-in"), "{why}");
            let (dy, gout) = (dy_input(), DevBuf::poisoned(8 * 48 * 4));
            let (st, msg, synced) = sparse_grad_into(&g, gout.ptr, dy.ptr);
            assert_eq!(st, grass_status::GRASS_OK, "{msg}");
            assert!(synced);
            assert!(gout.f32s().iter().all(|v| v.is_finite()));
        },
    ) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("memcheck"), "{}", stderr(&out));
}

#[test]
fn a_kernel_writing_just_past_its_output_is_reported() {
    let Some(out) = in_child("a_kernel_writing_just_past_its_output_is_reported", || {
        let g = gpu("stand-in");
        // One f32 short: the last element lands in the guard bytes after the allocation.
        let (dy, gout) = (dy_input(), DevBuf::poisoned(8 * 48 * 4 - 4));
        let (st, msg, synced) = sparse_grad_into(&g, gout.ptr, dy.ptr);
        assert_eq!(st, grass_status::GRASS_OK, "{msg}"); // the launch itself is valid
        assert!(
            !synced,
            "the synchronization after the bad kernel succeeded"
        );
    }) else {
        return;
    };
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("memcheck: scale_rows wrote past the end of allocation"),
        "{err}"
    );
}

#[test]
fn a_kernel_reaching_far_past_its_output_faults() {
    let Some(out) = in_child("a_kernel_reaching_far_past_its_output_faults", || {
        let g = gpu("stand-in");
        // Half the rows: the writes run onto the inaccessible page after the allocation.
        let (dy, gout) = (dy_input(), DevBuf::poisoned(4 * 48 * 4));
        sparse_grad_into(&g, gout.ptr, dy.ptr);
        unreachable!("the kernel's write past the allocation did not fault");
    }) else {
        return;
    };
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("memcheck: scale_rows (block (")
            && err.contains("accessed device memory it may not")
            && err.contains("past the end of allocation"),
        "{err}"
    );
}

#[test]
fn a_host_pointer_given_as_device_memory_is_reported() {
    let Some(out) = in_child("a_host_pointer_given_as_device_memory_is_reported", || {
        let g = gpu("stand-in");
        let host_dy = Rng::new(6).normals(16 * 64);
        let gout = DevBuf::poisoned(8 * 48 * 4);
        let (st, msg, _) = sparse_grad_into(&g, gout.ptr, host_dy.as_ptr() as u64);
        assert_ne!(st, grass_status::GRASS_OK);
        assert!(msg.contains("gather_cols"), "{msg}");
    }) else {
        return;
    };
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("memcheck: gather_cols: parameter 0") && err.contains("not device memory"),
        "{err}"
    );
}

#[test]
fn a_use_after_free_is_reported() {
    let Some(out) = in_child("a_use_after_free_is_reported", || {
        let g = gpu("stand-in");
        let dy = dy_input();
        let freed = unsafe { result::malloc_sync(8 * 48 * 4) }.unwrap();
        unsafe { result::free_sync(freed) }.unwrap();
        let (st, msg, _) = sparse_grad_into(&g, freed, dy.ptr);
        assert_ne!(st, grass_status::GRASS_OK);
        assert!(msg.contains("scale_rows"), "{msg}");
    }) else {
        return;
    };
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("memcheck: scale_rows: parameter 4") && err.contains("freed by cuMemFree"),
        "{err}"
    );
}

#[test]
fn host_code_reading_device_memory_faults() {
    let Some(out) = in_child("host_code_reading_device_memory_faults", || {
        let _g = gpu("stand-in");
        let dy = dy_input();
        // SAFETY: none, on purpose: device memory read as host memory.
        let v = unsafe { std::ptr::read_volatile(dy.ptr as usize as *const f32) };
        unreachable!("read {v} from device memory on the host");
    }) else {
        return;
    };
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("memcheck: host code (outside any CUDA call) accessed device memory"),
        "{err}"
    );
}

#[test]
fn work_on_another_stream_without_a_wait_has_not_happened() {
    // Lazy order: waiting for b runs only b's work and what it waits for. (The default order
    // interleaves the streams' ready work, so whether a's fill ran first would depend on the
    // order the streams take turns in.)
    let Some(out) = in_child_with(
        "work_on_another_stream_without_a_wait_has_not_happened",
        &[("GRASS_HOST_CUDA_ORDER", "lazy")],
        || {
            let _g = gpu("stand-in");
            let (a, b) = (Stream::new(), Stream::new());
            let read_on_b = |buf: &DevBuf| {
                let mut v = [0u8; 4];
                unsafe { result::memcpy_dtoh_async(&mut v, buf.ptr, b.0) }.unwrap();
                b.sync();
                v
            };
            // Without a wait, b's copy does not see a's fill (on a GPU: a race).
            let buf = DevBuf::poisoned(4);
            unsafe { result::memset_d8_async(buf.ptr, 1, 4, a.0) }.unwrap();
            assert_eq!(read_on_b(&buf), [0xFF; 4]);
            a.sync();
            // With one, it does.
            let buf = DevBuf::poisoned(4);
            unsafe { result::memset_d8_async(buf.ptr, 1, 4, a.0) }.unwrap();
            let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).unwrap();
            unsafe {
                result::event::record(event, a.0).unwrap();
                result::stream::wait_event(
                    b.0,
                    event,
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
                .unwrap();
            }
            assert_eq!(read_on_b(&buf), [1; 4]);
            unsafe { result::event::destroy(event) }.unwrap();
        },
    ) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
}
