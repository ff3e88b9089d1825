//! Compiles every kernel ahead of time with the NVRTC found here (GRASS_CUDA_LIBRARY_PATH or the
//! loader's path) into a directory for GRASS_PREBUILT_KERNELS, so that a GPU machine loads them
//! without running NVRTC (src/cuda/compile.rs says when an entry is used):
//!
//!   cargo run --release --example prebuild_kernels -- DIR [ARCH...]     (ARCH e.g. 90; default 90)
//!
//! Prints one line per entry: the file, the NVRTC version, the source hash and the size.

use std::path::PathBuf;

use grass::cuda::compile::{self, CacheKey};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: prebuild_kernels DIR [ARCH...]  (ARCH as 90 for sm_90)");
        std::process::exit(2);
    };
    let mut archs: Vec<i32> = Vec::new();
    for a in args {
        match a.trim_start_matches("sm_").parse() {
            Ok(v) if v >= 10 => archs.push(v),
            _ => {
                eprintln!("ARCH = {a:?} is not an architecture such as 90 or sm_90");
                std::process::exit(2);
            }
        }
    }
    if archs.is_empty() {
        archs.push(90);
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for arch in archs {
        let (major, minor) = (arch / 10, arch % 10);
        let written = compile::write_prebuilt(&dir, major, minor).and_then(|path| {
            let key = CacheKey::new(major, minor)?;
            Ok((path, key))
        });
        match written {
            Ok((path, key)) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!(
                    "{}: sm_{arch}, NVRTC {}.{}, source hash {:016x}, {size} bytes",
                    path.display(),
                    key.nvrtc.0,
                    key.nvrtc.1,
                    key.source_hash
                );
            }
            Err(e) => {
                eprintln!("sm_{arch}: {e}");
                std::process::exit(1);
            }
        }
    }
}
