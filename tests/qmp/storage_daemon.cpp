#include "storage_daemon.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nbdtunnel::qmp::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// waitpid() with a deadline; true once the child is reaped.
bool reap_within(int pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  do {
    const int r = ::waitpid(pid, nullptr, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    std::this_thread::sleep_for(10ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

}  // namespace

std::string StorageDaemon::find_binary() {
  const char* path_env = std::getenv("PATH");
  std::stringstream dirs(path_env ? path_env : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const auto candidate = fs::path(dir) / "qemu-storage-daemon";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

StorageDaemon::StorageDaemon(const std::string& dir, const std::vector<std::string>& blockdev_args)
    : qmp_socket_(dir + "/qmp.sock"), log_path_(dir + "/qsd.log") {
  const std::string binary = find_binary();
  if (binary.empty()) throw std::runtime_error("qemu-storage-daemon not found in PATH");
  std::vector<std::string> args = {binary, "--chardev",
                                   "socket,path=" + qmp_socket_ + ",server=on,wait=off,id=m",
                                   "--monitor", "chardev=m"};
  args.insert(args.end(), blockdev_args.begin(), blockdev_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
    const int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!fs::exists(qmp_socket_)) {
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("qemu-storage-daemon exited at start-up: " + log());
    }
    if (std::chrono::steady_clock::now() > deadline) {
      stop();
      throw std::runtime_error("qemu-storage-daemon did not create " + qmp_socket_ +
                               " within 10 s: " + log());
    }
    std::this_thread::sleep_for(10ms);
  }
}

StorageDaemon::~StorageDaemon() {
  stop();
}

void StorageDaemon::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!reap_within(pid_, 5s)) {
    ::kill(pid_, SIGKILL);
    reap_within(pid_, 5s);
  }
  pid_ = -1;
}

std::string StorageDaemon::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/qmp-qsd-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

}  // namespace nbdtunnel::qmp::test
