//! Generates include/grass.h from src/ffi with the pinned cbindgen. The file is committed; it is
//! rewritten only when its content changes, and tests/abi.rs (committed_header_matches_cbindgen)
//! fails when it drifts.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // A SONAME lets programs record the library's name rather than the path it was linked from.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgrass.so");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let config =
        cbindgen::Config::from_file(Path::new(&dir).join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = match cbindgen::generate_with_config(&dir, config) {
        Ok(b) => b,
        Err(e) => {
            println!("cargo:warning=cbindgen failed, include/grass.h not regenerated: {e}");
            return;
        }
    };
    let out = Path::new(&dir).join("include").join("grass.h");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    bindings.write_to_file(out);
}
