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
