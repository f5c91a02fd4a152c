#pragma once
// Two real privileged libvirtd daemons on one machine, a "source" and a "destination" host, so
// that tests can live-migrate a real libvirt domain between them.
//
// Each side is a mount namespace held open by a small keeper process (`unshare -m`), with a
// directory of the side's own bind-mounted over
//   /run                (so /run/libvirt, /run/libvirtd.pid and /run/nbdtunnel are per side),
//   /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt.
// The whole of /run is replaced rather than /run/libvirt and /run/nbdtunnel: those would need
// mount points on the real /run, libvirtd's pid file is /run/libvirtd.pid, and the host's
// D-Bus socket is better out of the daemons' sight.
// libvirtd, virsh, nbdtunnel and QEMU run in the host's PID and network namespaces, so pids are
// real pids and TCP on 127.0.0.1 connects the two sides.
//
// What libvirt needs for this, learned by running it (libvirt 9.0, QEMU 7.2, Debian 12):
// * libvirt refuses to migrate to the same host: each side's libvirtd.conf has its own
//   host_uuid (`virsh capabilities` shows it; `virsh sysinfo` shows SMBIOS, the same on both).
// * The qemu driver resolves its compiled-in user and group (libvirt-qemu) at start even when
//   qemu.conf says root: scripts/setup.sh creates the accounts (libvirt-daemon-system would,
//   but it also starts a system daemon).
// * /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt must exist on the real root as
//   mount points; the harness creates them empty if missing (libvirt-daemon-system would
//   create them too) and never writes into them. Nothing is created under the real /run.
// * A bare libvirtd logs errors about dnsmasq, D-Bus, udev DMI data and cgroups at start; all
//   harmless.
// * libvirtd probes QEMU's capabilities (qemu-system-x86_64 and qemu-system-i386, ~4 s each)
//   on its first client connection, not at start: the pair polls both sides at once, so that
//   the two probes overlap (~8 s for the pair on 2 cores, ~16 s one after the other). The
//   cache lives in the side's /var/cache/libvirt, but libvirt throws it away when the host's
//   CPUID data differ from the probe's ("Outdated capabilities ...: host cpuid changed" in a
//   debug log), and CPUID (the APIC id) differs from one CPU to the next: each side's libvirtd
//   is pinned to one CPU (source and destination to different ones), so that a restart of a
//   side answers in under a second instead of probing again. libvirt gives QEMU every CPU.
// * HMP `qemu-io` cannot write to a virtio-blk disk: `-d virtio-disk0` names the PCI proxy
//   ("Device does not have a block device backend") and the format node's BlockBackend does
//   not share write permission. A SATA disk (qdev id sata0-0-N) works, so disks are SATA.
//   `virsh qemu-monitor-command` is allowed while a migration job runs, so write_pattern can
//   write while the disks are being copied.
// * QEMU is double-forked by libvirtd: it is not the daemon's child and outlives it. The
//   keeper's watcher (tests/libvirt/keeper.sh) kills the side's QEMUs, by the pid files in
//   /run/libvirt/qemu, whenever the keeper ends, so a test killed by SIGKILL (or ended by
//   abort_test_binary) leaves no QEMU behind.
// * The domain's disk paths must be the same on both sides (copy-storage-all writes into the
//   destination's pre-created image of the same size); /var/lib/libvirt/images/... is the
//   same path and a different file in each namespace.
// * `virsh migrate --live --copy-storage-all --desturi 'qemu+unix:///system?socket=S'
//   --migrateuri unix://M --disks-uri unix://N`, with or without --p2p, works through UNIX
//   sockets alone: the destination QEMU listens on M (-incoming) and N (nbd-server-start),
//   the source QEMU connects to the same paths, which on the source are nbdtunnel's sockets.

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {

// Exit code (-1 on timeout, 128 + signal if killed), stdout and stderr of one command.
struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  bool ok() const { return exit_code == 0; }
};

// One raw disk of a domain: SATA `target` (sda, sdb, ...), `size` bytes, filled from `seed`.
struct DiskSpec {
  std::string target = "sda";
  std::uint64_t size = 64ull << 20;
  std::uint64_t seed = 1;
};

// A TCG guest with no OS, no network, no graphics: enough to migrate memory and disks.
struct DomainSpec {
  std::string name;
  unsigned memory_mib = 128;
  std::vector<DiskSpec> disks{DiskSpec{}};
};

// One side: a mount namespace with its own libvirtd.
class LibvirtHost {
 public:
  // Starts the keeper and libvirtd (pinned to `cpu` unless it is -1); does not wait for the
  // daemon (wait_ready does).
  LibvirtHost(std::string name, std::filesystem::path dir, int cpu = -1);
  ~LibvirtHost();
  LibvirtHost(const LibvirtHost&) = delete;
  LibvirtHost& operator=(const LibvirtHost&) = delete;

  // "source" or "destination".
  const std::string& name() const { return name_; }
  // A process (the keeper) in the side's mount namespace, for nsenter -m -t.
  pid_t ns_pid() const;
  // The libvirtd's pid, or -1 while it is stopped.
  pid_t daemon_pid() const;
  // The host UUID the side's libvirtd.conf gives it.
  const std::string& host_uuid() const { return host_uuid_; }

  // argv prefixed with `nsenter -m -t ns_pid() --`: runs it inside the side.
  std::vector<std::string> in_ns(std::vector<std::string> argv) const;
  // Runs argv inside the side to completion (killed beyond `timeout`).
  RunResult run(std::vector<std::string> argv, Seconds timeout = Seconds{60}) const;
  // `virsh -c qemu:///system ARGS` inside the side; throws with its stderr when it fails.
  std::string virsh(std::vector<std::string> args, Seconds timeout = Seconds{60}) const;
  // Starts a long-running argv inside the side (same pid as the command: nsenter execs it);
  // logs to <side dir>/<name>.log.
  Process spawn(const std::string& name, std::vector<std::string> argv) const;

  // The connection URI inside the side.
  static std::string uri() { return "qemu:///system"; }
  // The real path of this side's libvirtd socket, from outside the namespace.
  std::string socket_path() const { return path("/run/libvirt/libvirt-sock"); }
  // The real path, outside, of `inside` (an absolute path under one of the bind mounts;
  // any other path is the same inside and out and is returned unchanged).
  std::string path(const std::string& inside) const;

  // Where a domain's disk lives, inside: /var/lib/libvirt/images/<domain>-<target>.raw.
  static std::string disk_path(const std::string& domain, const std::string& target);
  // Creates the image `inside` of `size` bytes: random from `seed`, or sparse zeros.
  void create_image(const std::string& inside, std::uint64_t size,
                    std::optional<std::uint64_t> seed = std::nullopt) const;
  // Creates zero images for every disk of `spec` (a migration destination's disks).
  void create_disks(const DomainSpec& spec) const;
  // Creates spec's disk images (random from each seed) and starts it as a transient domain.
  void start_domain(const DomainSpec& spec) const;
  // The libvirt domain XML for `spec`.
  static std::string domain_xml(const DomainSpec& spec);
  // Names of the running domains.
  std::vector<std::string> domains() const;
  // An HMP command through `virsh qemu-monitor-command --hmp`; returns its output.
  std::string hmp(const std::string& domain, const std::string& command) const;
  // The qdev id of the disk whose image is `inside` (from HMP `info block`).
  std::string disk_device(const std::string& domain, const std::string& inside) const;
  // Writes `len` bytes of `value` at `offset` into the guest's disk `target`, through QEMU's
  // block layer (HMP qemu-io), as a guest write would.
  void write_pattern(const std::string& domain, const std::string& target, std::uint64_t offset,
                     std::uint64_t len, std::uint8_t value) const;
  // Pids of the side's QEMUs, from /run/libvirt/qemu/<domain>.pid.
  std::vector<pid_t> qemu_pids() const;

  // Waits until `virsh version` answers (the first answer waits for the capability probe);
  // throws (with the daemon's log) past `timeout`.
  void wait_ready(Seconds timeout = Seconds{90});
  // SIGTERM libvirtd and wait for it (its QEMUs keep running, as on a real host).
  void stop_daemon();
  // Starts libvirtd again and waits until it answers.
  void start_daemon();
  // Destroys every domain, stops libvirtd, kills leftover QEMUs, ends the namespace.
  void shutdown();

 private:
  void launch_daemon();

  std::string name_;
  std::filesystem::path dir_;
  std::string host_uuid_;
  int cpu_ = -1;
  std::unique_ptr<Process> keeper_;
  std::unique_ptr<Process> daemon_;
  mutable unsigned commands_ = 0;
};

// The two sides, started once per test binary on first use and shut down at its end.
class LibvirtPair {
 public:
  // Why the pair cannot run here (not root, a program or the libvirt-qemu user missing).
  static std::optional<std::string> missing();
  // The binary's pair, started on first call (both daemons in parallel); throws if it could
  // not start, and throws the same again on later calls.
  static LibvirtPair& shared();
  // Shuts both sides down (also done at the end of the binary); shared() must not be
  // called after it.
  static void shutdown_shared();

  LibvirtHost& source() { return *source_; }
  LibvirtHost& destination() { return *destination_; }
  // Seconds the pair took to come up.
  double startup_seconds() const { return startup_seconds_; }

 private:
  LibvirtPair();
  TempDir dir_;
  std::unique_ptr<LibvirtHost> source_;
  std::unique_ptr<LibvirtHost> destination_;
  double startup_seconds_ = 0;
};

// Nothing left in either side's /run/nbdtunnel.
::testing::AssertionResult run_dirs_empty(LibvirtPair& pair);

// True while `pid` names a process that has not exited (a zombie counts as exited).
bool process_alive(pid_t pid);

}  // namespace nbdtunnel::testing

// At the top of a test body: skips (developer machine) or fails (CI) when the pair cannot run.
#define NBDTUNNEL_REQUIRE_LIBVIRT()                                                     \
  do {                                                                                  \
    if (auto missing_ = ::nbdtunnel::testing::LibvirtPair::missing()) {                 \
      if (::nbdtunnel::testing::running_in_ci()) {                                      \
        FAIL() << *missing_ << "; CI must run every test (did scripts/setup.sh fail?)"; \
      }                                                                                 \
      GTEST_SKIP() << *missing_;                                                        \
    }                                                                                   \
  } while (0)
