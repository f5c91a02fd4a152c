#include "tests/libvirt/libvirt_host.hpp"

#include <gtest/gtest.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "tests/integration/harness/files.hpp"

namespace nbdtunnel::testing {
namespace {

namespace fs = std::filesystem;

// Where each bind mount's source lives in the side's directory.
struct BindMount {
  const char* inside;
  const char* subdir;
};
constexpr std::array<BindMount, 5> kMounts{{
    {"/run", "run"},
    {"/etc/libvirt", "etc"},
    {"/var/lib/libvirt", "lib"},
    {"/var/cache/libvirt", "cache"},
    {"/var/log/libvirt", "log"},
}};

// tests/libvirt/keeper.sh: the bind mounts, then holds the namespace open (see the script).
constexpr const char* kKeeperScript = NBDTUNNEL_LIBVIRT_KEEPER;

constexpr auto kPoll = std::chrono::milliseconds(250);

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string random_uuid() {
  std::string uuid = read_text("/proc/sys/kernel/random/uuid");
  while (!uuid.empty() && (uuid.back() == '\n' || uuid.back() == ' ')) uuid.pop_back();
  if (uuid.size() != 36) throw std::runtime_error("cannot read a random UUID from /proc");
  return uuid;
}

std::string join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

std::string libvirtd_program() {
  if (auto p = find_program("libvirtd")) return *p;
  return "/usr/sbin/libvirtd";
}

// No TCP, no TLS: clients reach the daemon only through its UNIX socket, as root.
std::string libvirtd_conf(const std::string& host_uuid) {
  return "listen_tls = 0\n"
         "listen_tcp = 0\n"
         "unix_sock_group = \"root\"\n"
         "unix_sock_ro_perms = \"0700\"\n"
         "unix_sock_rw_perms = \"0700\"\n"
         "auth_unix_ro = \"none\"\n"
         "auth_unix_rw = \"none\"\n"
         "host_uuid = \"" +
         host_uuid +
         "\"\n"
         "log_outputs = \"3:stderr\"\n";
}

// QEMU as root with no confinement: nothing on this machine is set up for more.
constexpr const char* kQemuConf =
    "user = \"root\"\n"
    "group = \"root\"\n"
    "dynamic_ownership = 0\n"
    "remember_owner = 0\n"
    "security_driver = \"none\"\n"
    "cgroup_controllers = [ ]\n"
    "namespaces = [ ]\n"
    "stdio_handler = \"file\"\n";

}  // namespace

// Nothing left in either side's /run/nbdtunnel.
::testing::AssertionResult run_dirs_empty(LibvirtPair& pair) {
  for (LibvirtHost* h : {&pair.source(), &pair.destination()}) {
    const std::filesystem::path dir = h->path("/run/nbdtunnel");
    if (!std::filesystem::exists(dir)) continue;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      return ::testing::AssertionFailure() << h->name() << " still has " << entry.path().string();
    }
  }
  return ::testing::AssertionSuccess();
}

bool process_alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  // "pid (comm) S ...": the state follows the last ')'.
  const std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
  const char state = stat[paren + 2];
  return state != 'Z' && state != 'X';
}

LibvirtHost::LibvirtHost(std::string name, fs::path dir, int cpu)
    : name_(std::move(name)), dir_(std::move(dir)), host_uuid_(random_uuid()), cpu_(cpu) {
  for (const auto& m : kMounts) fs::create_directories(dir_ / m.subdir);
  fs::create_directories(dir_ / "lib" / "images");
  fs::create_directories(dir_ / "cmd");
  write_text(dir_ / "etc" / "libvirtd.conf", libvirtd_conf(host_uuid_));
  write_text(dir_ / "etc" / "qemu.conf", kQemuConf);

  keeper_ = std::make_unique<Process>(
      "keeper-" + name_,
      std::vector<std::string>{"unshare", "-m", "--propagation", "private", "--", "setpriv",
                               "--pdeathsig", "TERM", "--", "bash", kKeeperScript, dir_.string()},
      (dir_ / "keeper.log").string());
  if (!keeper_->wait_for_log("namespace ready", Seconds{10})) {
    keeper_->dump_log();
    throw std::runtime_error(name_ + ": the namespace keeper did not come up");
  }
  launch_daemon();
}

LibvirtHost::~LibvirtHost() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    std::cerr << name_ << ": shutdown: " << e.what() << "\n";
  }
}

pid_t LibvirtHost::ns_pid() const {
  if (!keeper_) throw std::logic_error(name_ + ": the side has been shut down");
  return keeper_->pid();
}

pid_t LibvirtHost::daemon_pid() const {
  return daemon_ ? daemon_->pid() : -1;
}

std::vector<std::string> LibvirtHost::in_ns(std::vector<std::string> argv) const {
  std::vector<std::string> full{"nsenter", "-m", "-t", std::to_string(ns_pid()), "--"};
  full.insert(full.end(), std::make_move_iterator(argv.begin()),
              std::make_move_iterator(argv.end()));
  return full;
}

RunResult LibvirtHost::run(std::vector<std::string> argv, Seconds timeout) const {
  const std::string base = (dir_ / "cmd" / std::to_string(++commands_)).string();
  const std::string err_path = base + ".err";
  const std::string what = argv.empty() ? std::string("command") : argv.front();
  // stdout to the Process log, stderr apart, so that callers can parse stdout.
  std::vector<std::string> full{"sh", "-c", "exec \"$@\" 2>\"$0\"", err_path};
  for (auto& a : in_ns(std::move(argv))) full.push_back(std::move(a));
  Process p(name_ + "-" + what, std::move(full), base + ".out");
  RunResult r;
  if (auto code = p.wait_exit(timeout)) {
    r.exit_code = *code;
  } else {
    p.kill();
    r.exit_code = -1;
  }
  r.out = p.log();
  r.err = read_text(err_path);
  return r;
}

std::string LibvirtHost::virsh(std::vector<std::string> args, Seconds timeout) const {
  std::vector<std::string> argv{"virsh", "-c", uri()};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = run(argv, timeout);
  if (!r.ok()) {
    throw std::runtime_error(name_ + ": `" + join(argv) + "` failed (exit " +
                             std::to_string(r.exit_code) + "): " + r.err + r.out);
  }
  return r.out;
}

Process LibvirtHost::spawn(const std::string& name, std::vector<std::string> argv) const {
  return Process(name, in_ns(std::move(argv)), (dir_ / (name + ".log")).string());
}

std::string LibvirtHost::path(const std::string& inside) const {
  for (const auto& m : kMounts) {
    const std::string prefix = m.inside;
    if (inside == prefix) return (dir_ / m.subdir).string();
    if (inside.size() > prefix.size() && inside.compare(0, prefix.size(), prefix) == 0 &&
        inside[prefix.size()] == '/') {
      return (dir_ / m.subdir).string() + inside.substr(prefix.size());
    }
  }
  return inside;
}

std::string LibvirtHost::disk_path(const std::string& domain, const std::string& target) {
  return "/var/lib/libvirt/images/" + domain + "-" + target + ".raw";
}

void LibvirtHost::create_image(const std::string& inside, std::uint64_t size,
                               std::optional<std::uint64_t> seed) const {
  const std::string real = path(inside);
  fs::create_directories(fs::path(real).parent_path());
  if (seed) {
    make_random_image(real, size, *seed);
  } else {
    make_zero_image(real, size);
  }
}

void LibvirtHost::create_disks(const DomainSpec& spec) const {
  for (const auto& d : spec.disks) create_image(disk_path(spec.name, d.target), d.size);
}

std::string LibvirtHost::domain_xml(const DomainSpec& spec) {
  std::string xml = "<domain type='qemu'>\n  <name>" + spec.name +
                    "</name>\n  <memory unit='MiB'>" + std::to_string(spec.memory_mib) +
                    "</memory>\n  <vcpu>1</vcpu>\n"
                    "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
                    "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n";
  for (const auto& d : spec.disks) {
    xml +=
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
        "      <source file='" +
        disk_path(spec.name, d.target) + "'/>\n      <target dev='" + d.target +
        "' bus='sata'/>\n    </disk>\n";
  }
  xml +=
      "    <video><model type='none'/></video>\n    <memballoon model='none'/>\n"
      "  </devices>\n</domain>\n";
  return xml;
}

void LibvirtHost::start_domain(const DomainSpec& spec) const {
  for (const auto& d : spec.disks) create_image(disk_path(spec.name, d.target), d.size, d.seed);
  // The side's directory is not under a bind mount, so the file is the same path inside.
  const fs::path xml = dir_ / (spec.name + ".xml");
  write_text(xml, domain_xml(spec));
  virsh({"create", xml.string()});
}

std::vector<std::string> LibvirtHost::domains() const {
  std::istringstream in(virsh({"list", "--name"}));
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) names.push_back(line);
  }
  return names;
}

std::string LibvirtHost::hmp(const std::string& domain, const std::string& command) const {
  return virsh({"qemu-monitor-command", domain, "--hmp", command});
}

std::string LibvirtHost::disk_device(const std::string& domain, const std::string& inside) const {
  // "libvirt-1-format: /var/lib/libvirt/images/g-sda.raw (raw)"
  // "    Attached to:      sata0-0-0"
  std::istringstream in(hmp(domain, "info block"));
  bool in_disk = false;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.front() != ' ') {
      const auto colon = line.find(": ");
      in_disk = colon != std::string::npos &&
                line.compare(colon + 2, inside.size() + 1, inside + " ") == 0;
      continue;
    }
    const std::string key = "Attached to:";
    const auto at = line.find(key);
    if (!in_disk || at == std::string::npos) continue;
    std::string id = line.substr(line.find_first_not_of(' ', at + key.size()));
    // A device without an id shows its QOM path, /machine/peripheral/ID/...
    const std::string peripheral = "/machine/peripheral/";
    if (id.compare(0, peripheral.size(), peripheral) == 0) {
      id = id.substr(peripheral.size(), id.find('/', peripheral.size()) - peripheral.size());
    }
    return id;
  }
  throw std::runtime_error(name_ + ": no device of domain " + domain + " has " + inside);
}

void LibvirtHost::write_pattern(const std::string& domain, const std::string& target,
                                std::uint64_t offset, std::uint64_t len, std::uint8_t value) const {
  const std::string device = disk_device(domain, disk_path(domain, target));
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02x", value);
  const std::string out =
      hmp(domain, "qemu-io -d " + device + " \"write -P " + byte + " " + std::to_string(offset) +
                      " " + std::to_string(len) + "\"");
  // qemu-io prints its own results to QEMU's stdout; the monitor only shows errors.
  if (out.find_first_not_of(" \r\n") != std::string::npos) {
    throw std::runtime_error(name_ + ": qemu-io write on " + domain + "/" + device + ": " + out);
  }
}

std::vector<pid_t> LibvirtHost::qemu_pids() const {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(path("/run/libvirt/qemu"), ec)) {
    // driver.pid is the qemu driver's own lock file, holding libvirtd's pid.
    if (e.path().extension() != ".pid" || e.path().filename() == "driver.pid") continue;
    try {
      pids.push_back(static_cast<pid_t>(std::stol(read_text(e.path()))));
    } catch (const std::exception&) {
      // Being written or removed right now: the domain is starting or gone.
    }
  }
  return pids;
}

void LibvirtHost::launch_daemon() {
  std::vector<std::string> argv{libvirtd_program(), "--pid-file", "/run/libvirtd.pid"};
  if (cpu_ >= 0) argv.insert(argv.begin(), {"taskset", "-c", std::to_string(cpu_)});
  daemon_ = std::make_unique<Process>("libvirtd-" + name_, in_ns(std::move(argv)),
                                      (dir_ / "libvirtd.log").string());
}

void LibvirtHost::wait_ready(Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (!daemon_ || !daemon_->running()) {
      if (daemon_) daemon_->dump_log();
      throw std::runtime_error(
          name_ + ": libvirtd is not running (log: " + (dir_ / "libvirtd.log").string() + ")");
    }
    if (run({"virsh", "-c", uri(), "version"}, Seconds{10}).ok()) return;
    if (std::chrono::steady_clock::now() >= deadline) {
      daemon_->dump_log();
      throw std::runtime_error(name_ + ": libvirtd did not answer `virsh version` within " +
                               std::to_string(timeout.count()) + " s");
    }
    std::this_thread::sleep_for(kPoll);
  }
}

void LibvirtHost::stop_daemon() {
  if (!daemon_) return;
  daemon_->signal(SIGTERM);
  if (!daemon_->wait_exit(Seconds{20})) {
    std::cerr << name_ << ": libvirtd ignored SIGTERM for 20 s; killing it\n";
    daemon_->kill();
  }
  daemon_.reset();
}

void LibvirtHost::start_daemon() {
  if (daemon_) return;
  launch_daemon();
  wait_ready();
}

void LibvirtHost::shutdown() {
  if (!keeper_) return;
  if (daemon_ && daemon_->running()) {
    try {
      for (const auto& d : domains()) virsh({"destroy", d});
    } catch (const std::exception& e) {
      std::cerr << name_ << ": destroying domains: " << e.what() << "\n";
    }
  }
  const std::vector<pid_t> qemus = qemu_pids();
  stop_daemon();
  for (pid_t pid : qemus) {
    if (process_alive(pid)) ::kill(pid, SIGKILL);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (pid_t pid : qemus) {
    while (process_alive(pid) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  // Its watcher, told by the kernel, kills whatever QEMU is left and ends the namespace.
  keeper_->kill();
  keeper_.reset();
}

namespace {

std::unique_ptr<LibvirtPair>& shared_pair() {
  static std::unique_ptr<LibvirtPair> pair;
  return pair;
}

std::optional<std::string>& shared_failure() {
  static std::optional<std::string> failure;
  return failure;
}

// Shuts the pair down after the last test, on the main thread.
class PairEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { LibvirtPair::shutdown_shared(); }
};

[[maybe_unused]] ::testing::Environment* const kPairEnvironment =
    ::testing::AddGlobalTestEnvironment(new PairEnvironment);

}  // namespace

std::optional<std::string> LibvirtPair::missing() {
  if (::geteuid() != 0) return "needs root (mount namespaces and privileged libvirtd daemons)";
  if (::access(libvirtd_program().c_str(), X_OK) != 0) {
    return "libvirtd is not installed (scripts/setup.sh installs it)";
  }
  if (auto m =
          missing_tool({"virsh", "nsenter", "unshare", "setpriv", "bash", "qemu-system-x86_64"})) {
    return m;
  }
  if (::getpwnam("libvirt-qemu") == nullptr) {
    return "the libvirt-qemu user does not exist (scripts/setup.sh creates it)";
  }
  return std::nullopt;
}

LibvirtPair::LibvirtPair() {
  const std::string base = dir_.path().string();
  for (const auto& m : kMounts) {
    const std::string prefix = std::string(m.inside) + "/";
    if (base.compare(0, prefix.size(), prefix) == 0) {
      throw std::runtime_error("the test directory " + base + " is under " + m.inside +
                               ", which each side replaces: set TMPDIR elsewhere");
    }
  }
  // One CPU each (see the header), different ones where there are two.
  std::vector<int> cpus;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
    for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c) {
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    }
  }
  const int source_cpu = cpus.empty() ? -1 : cpus.front();
  const int destination_cpu = cpus.empty() ? -1 : cpus.back();
  const auto start = std::chrono::steady_clock::now();
  source_ = std::make_unique<LibvirtHost>("source", dir_.path() / "source", source_cpu);
  destination_ =
      std::make_unique<LibvirtHost>("destination", dir_.path() / "destination", destination_cpu);
  // libvirtd probes QEMU's capabilities (~8 s) on its first connection: wait for both sides
  // at once so that the two probes run in parallel.
  std::exception_ptr destination_failed;
  std::thread destination_wait([this, &destination_failed] {
    try {
      destination_->wait_ready();
    } catch (...) {
      destination_failed = std::current_exception();
    }
  });
  try {
    source_->wait_ready();
  } catch (...) {
    destination_wait.join();
    throw;
  }
  destination_wait.join();
  if (destination_failed) std::rethrow_exception(destination_failed);
  startup_seconds_ = Seconds(std::chrono::steady_clock::now() - start).count();
}

LibvirtPair& LibvirtPair::shared() {
  if (shared_failure()) throw std::runtime_error(*shared_failure());
  if (!shared_pair()) {
    try {
      shared_pair().reset(new LibvirtPair());
    } catch (const std::exception& e) {
      shared_failure() = std::string("the libvirt pair did not start: ") + e.what();
      throw std::runtime_error(*shared_failure());
    }
  }
  return *shared_pair();
}

void LibvirtPair::shutdown_shared() {
  if (auto& pair = shared_pair()) {
    pair->destination_->shutdown();
    pair->source_->shutdown();
    pair.reset();
  }
  shared_failure() = "the libvirt pair has been shut down";
}

}  // namespace nbdtunnel::testing
