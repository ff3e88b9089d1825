//! Kernels compiled ahead of time (GRASS_PREBUILT_KERNELS, src/cuda/compile.rs): an entry made
//! from this build's sources for the architecture asked for is used without NVRTC, whichever
//! NVRTC made it; an entry from other sources (a stale build), for another architecture, or
//! damaged is refused, and the kernels are compiled as without a prebuilt directory. The
//! matching needs no NVRTC (the entries here hold stand-in ELF images); the round trip through
//! `write_prebuilt` does, and skips without one unless GRASS_REQUIRE_NVRTC=1.

use grass::cuda::compile::{self, CacheKey, Cubin, KernelCache};
use grass::cuda::libs::{self, Lib};

mod common;
use common::TempDir;

/// One stand-in module image per module: an ELF header and bytes that name the module and
/// `tag`, so that a test can tell which entry was used.
fn stand_ins(tag: &str) -> Vec<Cubin> {
    compile::MODULES
        .iter()
        .map(|&(name, _)| Cubin {
            name,
            image: [b"\x7fELF".as_slice(), name.as_bytes(), tag.as_bytes()].concat(),
        })
        .collect()
}

fn images(cubins: &[Cubin]) -> Vec<Vec<u8>> {
    cubins.iter().map(|c| c.image.clone()).collect()
}

#[test]
fn a_matching_entry_is_used_without_nvrtc_whichever_nvrtc_made_it() {
    let dir = TempDir::new("prebuilt-match");
    // made by an NVRTC other than any this process may load
    let key = CacheKey::with_nvrtc(9, 0, (12, 4));
    compile::write_prebuilt_entry(&dir.0, &key, &stand_ins("ahead")).unwrap();
    let cache = KernelCache::with_prebuilt(None, Some(dir.0.clone()));
    let got = cache.get(9, 0).unwrap();
    assert_eq!(images(&got), images(&stand_ins("ahead")));
    assert_eq!((cache.prebuilt_hits(), cache.compiles()), (1, 0));
    assert!(cache.is_prebuilt(9, 0));
    // the second context of the process takes it from memory
    assert!(std::sync::Arc::ptr_eq(&got, &cache.get(9, 0).unwrap()));
    assert_eq!(cache.prebuilt_hits(), 1);
}

/// The prebuilt directory holds only entries that must be refused: `get` never takes one (it
/// compiles, or fails where no NVRTC is found; either way no prebuilt entry is used).
fn refused(dir: &std::path::Path, what: &str) {
    let cache = KernelCache::with_prebuilt(None, Some(dir.to_path_buf()));
    let got = cache.get(9, 0);
    assert_eq!(cache.prebuilt_hits(), 0, "{what} was used");
    assert!(!cache.is_prebuilt(9, 0), "{what} was used");
    match got {
        Ok(c) => {
            assert_ne!(images(&c), images(&stand_ins("stale")), "{what} was used");
            assert_eq!(cache.compiles(), compile::MODULES.len() as u64, "{what}");
        }
        Err(e) => assert_eq!(e.kind, grass::ErrorKind::CudaUnavailable, "{what}: {e}"),
    }
}

#[test]
fn a_stale_foreign_or_damaged_entry_is_refused() {
    let now = CacheKey::with_nvrtc(9, 0, (13, 0));
    let cases: Vec<(&str, CacheKey, Option<&str>)> = vec![
        // sources changed since the entry was made: its hash (name and contents) differs
        (
            "an entry of other sources",
            CacheKey {
                source_hash: now.source_hash ^ 1,
                ..now
            },
            None,
        ),
        // another architecture's entry, whatever its file is called
        (
            "an sm_80 entry",
            CacheKey::with_nvrtc(8, 0, (13, 0)),
            Some("kernels-sm90-nvrtc13.0"),
        ),
        // named for this build but holding another build's kernels
        (
            "an entry renamed to this build's hash",
            CacheKey {
                source_hash: now.source_hash ^ 1,
                ..now
            },
            Some("kernels-sm90-nvrtc13.0"),
        ),
    ];
    for (what, key, rename) in cases {
        let dir = TempDir::new("prebuilt-stale");
        let path = compile::write_prebuilt_entry(&dir.0, &key, &stand_ins("stale")).unwrap();
        if let Some(stem) = rename {
            let to = dir.0.join(format!("{stem}-{:016x}.bin", now.source_hash));
            std::fs::rename(&path, to).unwrap();
        }
        refused(&dir.0, what);
    }
    // a matching entry with one bit flipped (its checksum no longer holds)
    let dir = TempDir::new("prebuilt-damaged");
    let path = compile::write_prebuilt_entry(&dir.0, &now, &stand_ins("stale")).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    refused(&dir.0, "a damaged entry");
    // no directory at all
    refused(&dir.0.join("absent"), "a missing directory");
}

#[test]
fn prebuilt_kernels_the_driver_refuses_are_compiled_instead() {
    let dir = TempDir::new("prebuilt-refuse");
    let key = CacheKey::with_nvrtc(9, 0, (99, 9));
    compile::write_prebuilt_entry(&dir.0, &key, &stand_ins("ahead")).unwrap();
    let cache = KernelCache::with_prebuilt(None, Some(dir.0.clone()));
    cache.get(9, 0).unwrap();
    // what Device::open does when cuModuleLoadData refuses an image
    cache.refuse_prebuilt(9, 0);
    assert!(!cache.is_prebuilt(9, 0));
    match cache.get(9, 0) {
        Ok(c) => {
            assert_ne!(images(&c), images(&stand_ins("ahead")));
            assert_eq!(cache.compiles(), compile::MODULES.len() as u64);
        }
        Err(e) => assert_eq!(e.kind, grass::ErrorKind::CudaUnavailable, "{e}"),
    }
    assert_eq!(
        cache.prebuilt_hits(),
        1,
        "the refused entry was taken again"
    );
}

fn nvrtc_found() -> bool {
    if libs::ensure(Lib::Nvrtc).is_ok() {
        return true;
    }
    let python = std::env::var("GRASS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, nvidia\n\
                  for p in nvidia.__path__:\n    \
                  for s in sorted(os.listdir(p)):\n        \
                  d = os.path.join(p, s, 'lib')\n        \
                  if os.path.isdir(d): print(d)";
    if let Ok(out) = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .output()
    {
        for d in String::from_utf8_lossy(&out.stdout).lines() {
            libs::preload_dir(std::path::Path::new(d));
        }
    }
    if libs::present(Lib::Nvrtc) {
        return true;
    }
    assert_ne!(
        std::env::var("GRASS_REQUIRE_NVRTC").as_deref(),
        Ok("1"),
        "GRASS_REQUIRE_NVRTC=1 but libnvrtc was not found"
    );
    println!("SKIPPED: libnvrtc not found; set GRASS_REQUIRE_NVRTC=1 to make this fail");
    false
}

#[test]
fn write_prebuilt_round_trips_what_nvrtc_compiles() {
    if !nvrtc_found() {
        return;
    }
    let dir = TempDir::new("prebuilt-roundtrip");
    let path = compile::write_prebuilt(&dir.0, 9, 0).unwrap();
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        CacheKey::new(9, 0).unwrap().file_name()
    );
    let cache = KernelCache::with_prebuilt(None, Some(dir.0.clone()));
    let got = cache.get(9, 0).unwrap();
    assert_eq!((cache.prebuilt_hits(), cache.compiles()), (1, 0));
    let fresh = compile::compile_all(9, 0).unwrap();
    assert_eq!(images(&got), images(&fresh), "NVRTC is deterministic");
    // a prebuilt directory is a valid cache directory too
    let as_cache = KernelCache::new(Some(dir.0.clone()));
    as_cache.get(9, 0).unwrap();
    assert_eq!((as_cache.disk_hits(), as_cache.compiles()), (1, 0));
}
