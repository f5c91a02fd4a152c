#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nbdtunnel::testing {

// Writes `bytes` of pseudo-random data (xoshiro256**, seeded) to `path`; ~1 GiB/s.
void make_random_image(const std::string& path, std::uint64_t bytes, std::uint64_t seed = 1);

// Creates (or truncates) a sparse, all-zero file of `bytes`.
void make_zero_image(const std::string& path, std::uint64_t bytes);

// Pseudo-random bytes from the same generator, for in-memory payloads.
std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed);

// Success when both files have the same size and bytes; otherwise says where they differ.
::testing::AssertionResult files_identical(const std::string& a, const std::string& b);

// Success when the file holds `len` bytes equal to `value` at `offset`.
::testing::AssertionResult file_has_pattern(const std::string& path, std::uint64_t offset,
                                            std::size_t len, std::byte value);

}  // namespace nbdtunnel::testing
