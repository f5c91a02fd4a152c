#pragma once
// Tests that need an external program (QEMU, nbdkit, nbdcopy, ...). On a developer machine
// without it the test skips loudly; under CI (the CI variable is set) scripts/setup.sh has
// installed every program, so a missing one fails the test instead of hiding behind a skip.

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/harness/process.hpp"

namespace nbdtunnel::testing {

// A message naming the first of `programs` that is not installed, or nullopt.
inline std::optional<std::string> missing_tool(const std::vector<std::string>& programs) {
  for (const auto& p : programs) {
    if (!find_program(p)) return p + " is not installed (scripts/setup.sh installs it)";
  }
  return std::nullopt;
}

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && *ci != '\0';
}

}  // namespace nbdtunnel::testing

// Use at the top of a test body or SetUp(): skips (developer machine) or fails (CI).
#define NBDTUNNEL_REQUIRE_TOOLS(...)                                                    \
  do {                                                                                  \
    if (auto missing_ = ::nbdtunnel::testing::missing_tool({__VA_ARGS__})) {            \
      if (::nbdtunnel::testing::running_in_ci()) {                                      \
        FAIL() << *missing_ << "; CI must run every test (did scripts/setup.sh fail?)"; \
      }                                                                                 \
      GTEST_SKIP() << *missing_;                                                        \
    }                                                                                   \
  } while (0)
