//! Generates the C header from src/ffi with the pinned cbindgen into `$OUT_DIR/grass.h`. A
//! build never writes into the source tree: tests/abi.rs compares the committed
//! include/grass.h with this fresh copy and fails on any difference, and
//! `scripts/regen_header.sh` copies it over the committed one.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // A SONAME lets programs record the library's name rather than the path it was linked from.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgrass.so");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("grass.h");
    let config =
        cbindgen::Config::from_file(Path::new(&dir).join("cbindgen.toml")).expect("cbindgen.toml");
    match cbindgen::generate_with_config(&dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(&out);
        }
        Err(e) => {
            // The crate's own errors are reported by rustc; the header test then shows this.
            println!("cargo:warning=cbindgen failed: {e}");
            std::fs::write(&out, format!("/* cbindgen failed: {e} */\n")).unwrap();
        }
    }
}
