#pragma once

#include <cstdint>
#include <string>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {

// True once something accepts connections on the UNIX socket at `path`.
bool wait_for_unix_listener(const std::string& path, Seconds timeout);

// `nbdkit memory SIZE` serving every export name on a UNIX socket (thread model: parallel).
Process start_nbdkit_memory(const TempDir& dir, const std::string& socket, std::uint64_t bytes,
                            const std::string& name = "nbdkit");

// `qemu-nbd` exporting a raw image, writable, as `export_name`, to up to 16 clients at a time.
Process start_qemu_nbd(const TempDir& dir, const std::string& socket, const std::string& image,
                       const std::string& export_name, const std::string& name = "qemu-nbd");

}  // namespace nbdtunnel::testing
