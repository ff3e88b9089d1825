// Shared declarations of the two translation units of test_hpp_include.
#ifndef GRASS_TEST_HPP_INCLUDE_HPP
#define GRASS_TEST_HPP_INCLUDE_HPP

#include <cstdint>

#include "grass.hpp"

struct tu_addresses {
  void (*check)(grass_status);
  const char* (*version)() noexcept;
  grass::Context (*cpu)();
};

int64_t tu_a_state_elements();
int64_t tu_b_state_elements();
tu_addresses tu_a_addresses();

#endif  // GRASS_TEST_HPP_INCLUDE_HPP
