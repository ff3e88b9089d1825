// First translation unit of test_hpp_include: grass.hpp included twice (the include guard makes
// the second a no-op), then grass.h again.
#include "grass.hpp"
#include "grass.hpp"
#include "grass.h"

#include "test_hpp_include.hpp"

int64_t tu_a_state_elements() {
  auto ctx = grass::Context::cpu();
  auto opt = grass::Optimizer::dense(ctx, grass::AdamWConfig(), 7, grass::Dtype::F32,
                                     grass::Dtype::Bf16);
  return opt.info().state_elements;
}

tu_addresses tu_a_addresses() {
  return tu_addresses{&grass::check, &grass::version, &grass::Context::cpu};
}
