//! `grass_context_create_cuda` reports a machine without a usable GPU with
//! GRASS_ERROR_CUDA_UNAVAILABLE and a message saying why, and never crashes.

use std::ffi::{c_char, CStr};

use grass::ffi::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(grass_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn availability() -> (bool, String) {
    let mut ok = -1;
    let mut why = [0 as c_char; 512];
    let st = unsafe { grass_cuda_available(&mut ok, why.as_mut_ptr(), why.len()) };
    assert_eq!(st, grass_status::GRASS_OK);
    let why = unsafe { CStr::from_ptr(why.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (ok == 1, why)
}

#[test]
fn create_cuda_reports_why_cuda_is_unavailable() {
    let (available, why) = availability();
    let mut ctx: *mut grass_context = std::ptr::dangling_mut();
    let sentinel = ctx;
    let st = unsafe { grass_context_create_cuda(0, &mut ctx) };
    if available {
        println!("a CUDA device is usable here ({why}): checking that the context opens");
        assert_eq!(st, grass_status::GRASS_OK, "{}", last_error());
        let mut kind = -1;
        assert_eq!(
            unsafe { grass_context_device_kind(ctx, &mut kind) },
            grass_status::GRASS_OK
        );
        assert_eq!(kind, GRASS_DEVICE_CUDA);
        unsafe { grass_context_destroy(ctx) };
        return;
    }
    assert_eq!(st, grass_status::GRASS_ERROR_CUDA_UNAVAILABLE);
    assert_eq!(ctx, sentinel, "ctx_out must not be written on failure");
    let msg = last_error();
    println!("grass_cuda_available: {why}\ngrass_context_create_cuda: {msg}");
    assert!(msg.starts_with("grass_context_create_cuda: "), "{msg}");
    assert!(
        msg.contains(why.as_str()),
        "the failure should give the same reason as grass_cuda_available: {msg:?} vs {why:?}"
    );
    assert!(!why.is_empty());
}

#[test]
fn create_cuda_rejects_a_negative_ordinal() {
    let mut ctx: *mut grass_context = std::ptr::null_mut();
    let st = unsafe { grass_context_create_cuda(-1, &mut ctx) };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(last_error().contains("ordinal"), "{}", last_error());
    assert!(ctx.is_null());
}
