// Second translation unit of test_hpp_include: grass.h first, then grass.hpp. Linking both
// proves the header defines nothing with external linkage outside `inline`, and the inline
// functions have one address program-wide (no `static` copies per translation unit).
#include "grass.h"
#include "grass.hpp"

#include <cstdio>

#include "test_hpp_include.hpp"

int64_t tu_b_state_elements() {
  auto ctx = grass::Context::cpu();
  auto opt = grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(3), grass::AdamWConfig(),
                                      8, 5, 4, grass::Dtype::F32, grass::Dtype::F32);
  return opt.info().state_elements;
}

int main() {
  int failures = 0;
  if (tu_a_state_elements() != 7) {
    std::printf("FAIL: dense optimizer from TU a\n");
    ++failures;
  }
  if (tu_b_state_elements() != 3 * 8) {  // the default side, columns: states are rank x m
    std::printf("FAIL: sparse optimizer from TU b\n");
    ++failures;
  }
  tu_addresses a = tu_a_addresses();
  tu_addresses b{&grass::check, &grass::version, &grass::Context::cpu};
  if (a.check != b.check || a.version != b.version || a.cpu != b.cpu) {
    std::printf("FAIL: an inline function of grass.hpp has two addresses\n");
    ++failures;
  }
  std::printf("test_hpp_include: %s\n", failures ? "failed" : "all checks passed");
  return failures ? 1 : 0;
}
