#pragma once
// Crash recovery of `dest --qmp`: at start, before serving, remove from the destination QEMU
// what a dead daemon recorded in the run directory this one has taken over.

#include <chrono>
#include <string>

#include "engine/dest_run_dir.hpp"

namespace nbdtunnel::engine {

// Removes the recorded exports (named nbdtunnel-*) and, when no export is left on it, the
// recorded NBD server, logging each; then forgets the records. Runs its own event loop, at most
// `timeout`. A QEMU that cannot be reached is logged: its exports went with it, or the first
// PREPARE meets them (and removes nbdtunnel-* ones).
void recover_dest_qemu(const std::string& qmp_path, DestRunDir& dir,
                       std::chrono::milliseconds timeout);

}  // namespace nbdtunnel::engine
