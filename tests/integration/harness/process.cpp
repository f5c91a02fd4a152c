#include "tests/integration/harness/process.hpp"

// GCC 12 with -fsanitize=address reports a false -Wmaybe-uninitialized inside <regex>'s
// std::function; this file is the only user of std::regex.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

namespace nbdtunnel::testing {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(20);

// Every live Process, so that abort_test_binary() can dump and kill them.
std::mutex registry_mutex;
std::set<Process*>& registry() {
  static std::set<Process*> live;
  return live;
}

void register_process(Process* p) {
  std::lock_guard lock(registry_mutex);
  registry().insert(p);
}

void unregister_process(Process* p) {
  std::lock_guard lock(registry_mutex);
  registry().erase(p);
}

std::string read_file_from(const std::string& path, std::size_t from) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::size_t>(in.tellg());
  if (from >= size) return {};
  in.seekg(static_cast<std::streamoff>(from));
  std::string out(size - from, '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<std::size_t>(in.gcount()));
  return out;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

Process::Process(std::string name, std::vector<std::string> argv, std::string log_path)
    : name_(std::move(name)), argv_(std::move(argv)), log_path_(std::move(log_path)) {
  if (argv_.empty()) throw std::invalid_argument("Process " + name_ + ": empty argv");
  int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::system_error(errno, std::generic_category(), "open " + log_path_);
  std::vector<char*> cargv;
  for (auto& a : argv_) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = ::getpid();

  pid_ = ::fork();
  if (pid_ < 0) {
    int err = errno;
    ::close(log_fd);
    throw std::system_error(err, std::generic_category(), "fork for " + name_);
  }
  if (pid_ == 0) {
    // Child: only async-signal-safe calls until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);  // keep a terminal's Ctrl-C for the test runner alone
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execvp(cargv[0], cargv.data());
    const char msg[] = "exec failed\n";
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  register_process(this);
}

Process::Process(Process&& other) noexcept
    : name_(std::move(other.name_)),
      argv_(std::move(other.argv_)),
      log_path_(std::move(other.log_path_)),
      pid_(std::exchange(other.pid_, -1)),
      exit_code_(other.exit_code_) {
  unregister_process(&other);
  if (pid_ > 0) register_process(this);
}

Process::~Process() {
  unregister_process(this);
  if (pid_ <= 0) return;
  kill();
  // An exception escaping the test body is recorded as a failure only after this runs.
  if (::testing::Test::HasFailure() || std::uncaught_exceptions() > 0) dump_log();
}

std::string Process::command_line() const {
  std::string s;
  for (const auto& a : argv_) {
    if (!s.empty()) s += ' ';
    s += a;
  }
  return s;
}

std::size_t Process::log_mark() const {
  struct stat st {};
  if (::stat(log_path_.c_str(), &st) != 0) return 0;
  return static_cast<std::size_t>(st.st_size);
}

std::string Process::log() const {
  return read_file_from(log_path_, 0);
}

std::size_t Process::count_in_log(const std::string& regex) const {
  std::regex re(regex);
  std::istringstream in(log());
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) {
    if (std::regex_search(line, re)) ++n;
  }
  return n;
}

std::optional<std::vector<std::string>> Process::wait_for_log(const std::string& regex,
                                                              Seconds timeout, std::size_t from) {
  const std::regex re(regex);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // Check exit before reading so that output printed just before exiting is still seen.
    const bool alive = running();
    const std::string text = read_file_from(log_path_, from);
    std::smatch m;
    if (std::regex_search(text, m, re)) {
      std::vector<std::string> groups;
      for (const auto& g : m) groups.push_back(g.str());
      return groups;
    }
    if (!alive || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPoll);
  }
}

void Process::signal(int sig) const {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, sig);
}

bool Process::running() {
  if (pid_ <= 0 || exit_code_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = decode_status(status);
    return false;
  }
  return true;
}

std::optional<int> Process::wait_exit(Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPoll);
  }
  return exit_code_;
}

void Process::kill() {
  if (pid_ <= 0 || !running()) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_code_ = decode_status(status);
}

void Process::dump_log(std::size_t max_bytes) const {
  std::string text = log();
  std::string cut;
  if (text.size() > max_bytes) {
    cut = "[... " + std::to_string(text.size() - max_bytes) + " bytes cut ...]\n";
    text.erase(0, text.size() - max_bytes);
  }
  std::cerr << "\n----- log of " << name_ << " (pid " << pid_ << "): " << command_line() << "\n"
            << cut << text << (text.empty() || text.back() == '\n' ? "" : "\n") << "----- end of "
            << name_ << " log -----\n";
}

std::optional<int> run_command(const std::string& name, std::vector<std::string> argv,
                               const std::string& log_path, Seconds timeout) {
  Process p(name, std::move(argv), log_path);
  auto code = p.wait_exit(timeout);
  if (!code || *code != 0) p.dump_log();
  return code;
}

std::optional<std::string> find_program(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

void abort_test_binary(const std::string& why) {
  std::cerr << "\nFATAL: " << why << " — killing every child process and exiting\n";
  std::lock_guard lock(registry_mutex);
  for (Process* p : registry()) {
    p->dump_log();
    if (p->pid() > 0) ::kill(p->pid(), SIGKILL);
  }
  std::cerr.flush();
  std::_Exit(1);
}

}  // namespace nbdtunnel::testing
