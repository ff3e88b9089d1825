"""Builds the XLA FFI handlers (csrc/) against jaxlib's headers and libgrass, and ships
libgrass.so inside the package so that the installed package needs no environment variables.

Where libgrass comes from:
  GRASS_LIB_DIR      folder holding libgrass.so   (default: <repo>/target/release)
  GRASS_INCLUDE_DIR  folder holding grass.h       (default: <repo>/include)
Build libgrass first: `cargo build --release` at the repository root.
"""

import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIB_DIR = Path(os.environ.get("GRASS_LIB_DIR", REPO / "target" / "release")).resolve()
INCLUDE_DIR = Path(os.environ.get("GRASS_INCLUDE_DIR", REPO / "include")).resolve()
HANDLERS = "libgrass_jax_ffi.so"


class BuildHandlers(build_ext):
    """Compiles the handlers as a plain shared library (loaded with ctypes, not imported) and
    copies libgrass.so beside it; the handlers find it through their $ORIGIN runpath."""

    def get_ext_filename(self, ext_name):
        return os.path.join(*ext_name.split(".")[:-1], HANDLERS)

    def run(self):
        lib = LIB_DIR / "libgrass.so"
        if not lib.is_file():
            raise SystemExit(
                f"grass-jax: {lib} not found. Run `cargo build --release` at the repository "
                "root first, or set GRASS_LIB_DIR to the folder holding libgrass.so."
            )
        if not (INCLUDE_DIR / "grass.h").is_file():
            raise SystemExit(f"grass-jax: grass.h not found in {INCLUDE_DIR} (GRASS_INCLUDE_DIR)")
        import jax.ffi

        for ext in self.extensions:
            ext.extra_compile_args += ["-isystem", jax.ffi.include_dir()]
        super().run()
        dest = Path(self.get_ext_fullpath("grass_jax._ffi")).parent
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest / "libgrass.so")


handlers = Extension(
    "grass_jax._ffi",
    sources=[str(p.relative_to(HERE)) for p in sorted((HERE / "csrc").glob("*.cc"))],
    include_dirs=[str(INCLUDE_DIR), "csrc"],
    # rebuilt when the C header changes (a struct or a macro of grass.h), not only the sources
    depends=[str(INCLUDE_DIR / "grass.h")] + [str(p) for p in sorted((HERE / "csrc").glob("*.h"))],
    library_dirs=[str(LIB_DIR)],
    libraries=["grass"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", "-Wno-attributes"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"],
)

setup(ext_modules=[handlers], cmdclass={"build_ext": BuildHandlers})
