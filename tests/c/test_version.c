/* The version agrees everywhere it is stated: Cargo.toml (passed in by CMake as
 * GRASS_CARGO_VERSION), the macros of grass.h, and grass_version() at run time; and the
 * library implements the ABI generation this header was written for. */
#include "testkit.h"

#ifndef GRASS_CARGO_VERSION
#error "CMake passes the version of Cargo.toml as GRASS_CARGO_VERSION"
#endif

int main(void) {
  char header[64];
  snprintf(header, sizeof header, "%d.%d.%d", GRASS_VERSION_MAJOR, GRASS_VERSION_MINOR,
           GRASS_VERSION_PATCH);
  const char* runtime = grass_version();
  printf("Cargo.toml %s, grass.h %s, grass_version() %s, ABI %u (header %d)\n",
         GRASS_CARGO_VERSION, header, runtime, grass_abi_version(), GRASS_ABI_VERSION);
  TK_CHECK(runtime != NULL);
  TK_CHECK(strcmp(header, GRASS_CARGO_VERSION) == 0);
  TK_CHECK(runtime != NULL && strcmp(runtime, GRASS_CARGO_VERSION) == 0);
  TK_CHECK(grass_abi_version() == GRASS_ABI_VERSION);
  TK_CHECK(grass_version() == runtime); /* static storage: the same pointer every time */
  return tk_report("test_version");
}
