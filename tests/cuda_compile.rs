//! Every kernel compiles through NVRTC to CUBIN, without a GPU.
//!
//! libnvrtc is looked for, in order: on the loader's search path (LD_LIBRARY_PATH, the ld.so
//! cache), in the directories of GRASS_CUDA_LIBRARY_PATH, and in the `lib` folders of the
//! Python `nvidia` namespace packages (the pip wheel `nvidia-cuda-nvrtc`, found by running
//! `python3`, or the interpreter named by GRASS_PYTHON). When none is found the test skips,
//! unless GRASS_REQUIRE_NVRTC=1 (as in CI), where it fails.

use std::path::PathBuf;
use std::process::Command;

use grass::cuda::compile;
use grass::cuda::libs::{self, Lib};

mod common;
use common::TempDir;

/// The `lib` folders of the installed `nvidia.*` Python packages.
fn python_nvidia_lib_dirs() -> Vec<PathBuf> {
    let python = std::env::var("GRASS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, nvidia\n\
                  for p in nvidia.__path__:\n    \
                  for s in sorted(os.listdir(p)):\n        \
                  d = os.path.join(p, s, 'lib')\n        \
                  if os.path.isdir(d): print(d)";
    match Command::new(python).arg("-c").arg(script).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// Makes libnvrtc loadable if it is anywhere we know to look.
fn find_nvrtc() -> bool {
    if libs::ensure(Lib::Nvrtc).is_ok() {
        return true;
    }
    for dir in python_nvidia_lib_dirs() {
        libs::preload_dir(&dir);
    }
    libs::present(Lib::Nvrtc)
}

fn nvrtc_or_skip() -> bool {
    if find_nvrtc() {
        return true;
    }
    let why = libs::ensure(Lib::Nvrtc).unwrap_err().message;
    if std::env::var("GRASS_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!(
            "GRASS_REQUIRE_NVRTC=1 but libnvrtc was not found ({why}); install the pip wheel \
             nvidia-cuda-nvrtc or set LD_LIBRARY_PATH / GRASS_CUDA_LIBRARY_PATH"
        );
    }
    println!("SKIPPED: libnvrtc not found ({why}); set GRASS_REQUIRE_NVRTC=1 to make this fail");
    false
}

#[test]
fn every_kernel_compiles_for_sm90_and_sm80() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = compile::nvrtc_version().unwrap();
    let supported = compile::supported_archs().unwrap();
    println!("NVRTC {major}.{minor}, architectures {supported:?}");
    for arch in [90, 80] {
        assert!(
            supported.contains(&arch),
            "NVRTC {major}.{minor} cannot target sm_{arch}"
        );
        let cubins = compile::compile_all(arch / 10, arch % 10)
            .unwrap_or_else(|e| panic!("compiling for sm_{arch}: {e}"));
        assert_eq!(cubins.len(), compile::MODULES.len());
        for c in &cubins {
            assert!(
                c.image.starts_with(b"\x7fELF"),
                "{} for sm_{arch} is not a CUBIN (ELF) image",
                c.name
            );
            println!("sm_{arch} {}: {} bytes", c.name, c.image.len());
        }
    }
}

#[test]
fn an_unsupported_architecture_is_reported_not_panicked() {
    if !nvrtc_or_skip() {
        return;
    }
    let e = compile::compile_all(1, 0).unwrap_err();
    assert_eq!(e.kind, grass::ErrorKind::CudaUnavailable, "{e}");
    assert!(e.message.contains("sm_10"), "{}", e.message);
}

#[test]
fn kernels_include_no_cuda_header() {
    for (name, src) in compile::MODULES.iter().chain(compile::HEADERS.iter()) {
        for line in src.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("#include") {
                let inc = rest.trim();
                assert!(
                    compile::HEADERS
                        .iter()
                        .any(|(h, _)| inc == format!("\"{h}\"")),
                    "kernels/{name} includes {inc}: kernels must only include grass's own headers"
                );
            }
        }
    }
}

/// (kernel, PTX types of its parameters) of every `.entry` in a PTX text.
fn entries(ptx: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let Some(pos) = line.find(".entry ") else {
            continue;
        };
        let name = line[pos + 7..].trim_end_matches('(').trim().to_string();
        let mut types = Vec::new();
        for l in lines.by_ref() {
            let l = l.trim();
            if l.starts_with(')') {
                break;
            }
            if let Some(rest) = l.strip_prefix(".param ") {
                types.push(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        out.push((name, types));
    }
    out
}

#[test]
fn launch_signatures_match_the_kernels_parameters() {
    if !nvrtc_or_skip() {
        return;
    }
    let sigs = grass::cuda::kernels::SIGNATURES;
    let mut seen = 0;
    for (module, src) in compile::MODULES {
        let ptx = compile::ptx(module, src, 9, 0).unwrap();
        for (name, types) in entries(&ptx) {
            let Some(&(m, _, params)) = sigs.iter().find(|s| s.1 == name) else {
                panic!("kernel {name} of {module} has no entry in kernels::SIGNATURES");
            };
            assert_eq!(
                m, module,
                "{name} is listed under {m} but lives in {module}"
            );
            let want: Vec<&str> = params
                .chars()
                .map(|c| match c {
                    'p' | 'l' | 'q' => ".u64",
                    'i' | 'u' => ".u32",
                    'f' => ".f32",
                    _ => panic!("unknown parameter letter {c} for {name}"),
                })
                .collect();
            assert_eq!(types, want, "parameters of {name} ({params})");
            seen += 1;
        }
    }
    assert_eq!(seen, sigs.len(), "every listed kernel exists");
}

// ---- the cache of compiled kernels ----

use compile::{CacheKey, KernelCache};

fn images(cubins: &[compile::Cubin]) -> Vec<(&'static str, Vec<u8>)> {
    cubins.iter().map(|c| (c.name, c.image.clone())).collect()
}

#[test]
fn a_second_compile_for_the_same_arch_hits_the_cache() {
    if !nvrtc_or_skip() {
        return;
    }
    let cache = KernelCache::new(None);
    let first = cache.get(9, 0).unwrap();
    assert_eq!(cache.compiles(), compile::MODULES.len() as u64);
    let second = cache.get(9, 0).unwrap();
    assert_eq!(
        cache.compiles(),
        compile::MODULES.len() as u64,
        "NVRTC ran again"
    );
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    // contexts opened on other threads at the same time share one compilation too
    let shared = KernelCache::new(None);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| shared.get(9, 0).unwrap());
        }
    });
    assert_eq!(shared.compiles(), compile::MODULES.len() as u64);
}

#[test]
fn different_archs_have_different_keys_and_entries() {
    if !nvrtc_or_skip() {
        return;
    }
    let (k90, k80) = (CacheKey::new(9, 0).unwrap(), CacheKey::new(8, 0).unwrap());
    assert_ne!(k90, k80);
    assert_ne!(k90.file_name(), k80.file_name());
    assert_eq!(
        k90,
        CacheKey::new(9, 0).unwrap(),
        "the key is a function of its inputs"
    );
    assert_eq!(k90.nvrtc, compile::nvrtc_version().unwrap());
    let dir = TempDir::new("kernel-cache-archs");
    let cache = KernelCache::new(Some(dir.0.clone()));
    let a = cache.get(9, 0).unwrap();
    let b = cache.get(8, 0).unwrap();
    assert_eq!(cache.compiles(), 2 * compile::MODULES.len() as u64);
    assert_ne!(images(&a), images(&b), "sm_90 and sm_80 share CUBINs");
    assert!(cache.path(&k90).unwrap().is_file());
    assert!(cache.path(&k80).unwrap().is_file());
}

#[test]
fn the_disk_cache_serves_a_new_process_and_damaged_entries_are_rewritten() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = TempDir::new("kernel-cache-disk");
    let n = compile::MODULES.len() as u64;
    let writer = KernelCache::new(Some(dir.0.clone()));
    let compiled = images(&writer.get(9, 0).unwrap());
    assert_eq!(writer.compiles(), n);
    let key = CacheKey::new(9, 0).unwrap();
    let path = writer.path(&key).unwrap();
    let good = std::fs::read(&path).unwrap();

    // A new cache (another process) reads the file instead of compiling.
    let reader = KernelCache::new(Some(dir.0.clone()));
    assert_eq!(images(&reader.get(9, 0).unwrap()), compiled);
    assert_eq!((reader.compiles(), reader.disk_hits()), (0, 1));

    // Damaged or foreign entries are ignored, compiled afresh and replaced by a good file.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let k80 = CacheKey::new(8, 0).unwrap();
    let foreign = KernelCache::new(Some(dir.0.clone()));
    foreign.get(8, 0).unwrap();
    let other_key = std::fs::read(foreign.path(&k80).unwrap()).unwrap();
    // (each costs a compilation: three kinds of damage)
    let damaged: [(&str, Vec<u8>); 3] = [
        ("a flipped bit", flipped),
        ("a truncated file", good[..good.len() - 100].to_vec()),
        ("another key's entry", other_key),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let cache = KernelCache::new(Some(dir.0.clone()));
        assert_eq!(images(&cache.get(9, 0).unwrap()), compiled, "{what}");
        assert_eq!(
            (cache.compiles(), cache.disk_hits()),
            (n, 0),
            "{what} was used"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "{what} was not rewritten"
        );
    }
    // Every write went through a temporary file that was renamed: none is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![k80.file_name(), key.file_name()]);
}

#[test]
fn a_cache_directory_that_cannot_be_written_only_costs_the_disk_cache() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = TempDir::new("kernel-cache-blocked");
    let blocked = dir.0.join("a-file-not-a-directory");
    std::fs::write(&blocked, b"").unwrap();
    let cache = KernelCache::new(Some(blocked.join("kernels")));
    cache.get(9, 0).unwrap();
    cache.get(9, 0).unwrap();
    assert_eq!(cache.compiles(), compile::MODULES.len() as u64);
}
