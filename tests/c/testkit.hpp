// C++ additions to testkit.h for the tests that go through grass.hpp.
#ifndef GRASS_TESTKIT_HPP
#define GRASS_TESTKIT_HPP

#include <cstring>
#include <exception>
#include <string>

#include "grass.hpp"
#include "testkit.h"

// `f()` must throw grass::Error with `want` and a message containing `needle`.
template <typename F>
void tk_expect_error(F&& f, grass_status want, const char* needle, const char* file, int line,
                     const char* what) {
  try {
    f();
    tk_fail_at(file, line, what);
    std::printf("     expected grass::Error with status %d, but nothing was thrown\n",
                static_cast<int>(want));
  } catch (const grass::Error& e) {
    if (e.status() != want) {
      tk_fail_at(file, line, what);
      std::printf("     expected status %d (%s), got %d (%s): %s\n", static_cast<int>(want),
                  grass::status_string(want), static_cast<int>(e.status()), e.status_string(),
                  e.what());
    } else if (needle != nullptr && std::strstr(e.what(), needle) == nullptr) {
      tk_fail_at(file, line, what);
      std::printf("     message does not mention \"%s\": %s\n", needle, e.what());
    }
  } catch (const std::exception& e) {
    tk_fail_at(file, line, what);
    std::printf("     expected grass::Error, got another exception: %s\n", e.what());
  }
}

#define TK_THROWS(expr, status, needle) \
  tk_expect_error([&]() { (void)(expr); }, (status), (needle), __FILE__, __LINE__, #expr)

// Runs a test body, turning an unexpected exception into a failure.
template <typename F>
void tk_run(const char* name, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    tk_fail_at(__FILE__, __LINE__, name);
    std::printf("     unexpected exception: %s\n", e.what());
  }
}

#endif  // GRASS_TESTKIT_HPP
