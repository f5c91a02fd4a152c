#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace nbdtunnel::testing {

using Seconds = std::chrono::duration<double>;

// One child process started with fork/exec. stdout and stderr go to a log file; stdin is
// /dev/null. The child gets SIGKILL if the test process dies (PR_SET_PDEATHSIG), and the
// destructor kills and reaps it, so no test leaves a process behind even when it fails.
// If the current test has failed (or is unwinding), the destructor prints the log so CI shows
// what happened.
// Start processes from the main test thread: PDEATHSIG fires when the forking thread exits.
class Process {
 public:
  Process(std::string name, std::vector<std::string> argv, std::string log_path);
  ~Process();
  Process(Process&& other) noexcept;
  Process& operator=(Process&&) = delete;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Waits until `regex` (ECMAScript) matches the log at or after byte `from` and returns the
  // whole match followed by its groups. Gives up (nullopt) at the timeout or when the process
  // exits without having printed it.
  std::optional<std::vector<std::string>> wait_for_log(const std::string& regex, Seconds timeout,
                                                       std::size_t from = 0);
  // Current log size: pass it as `from` to wait for a line printed after this point.
  std::size_t log_mark() const;
  std::string log() const;
  // Counts the lines of the log that match `regex`.
  std::size_t count_in_log(const std::string& regex) const;

  void signal(int sig) const;
  bool running();
  // Waits for the exit: the exit code, or 128 + signal number; nullopt at the timeout.
  std::optional<int> wait_exit(Seconds timeout);
  // SIGKILL and reap (no-op when already reaped).
  void kill();

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  const std::string& log_path() const { return log_path_; }
  // The command line, for messages.
  std::string command_line() const;
  // Prints the last `max_bytes` of the log to stderr, headed by the name and the command line.
  void dump_log(std::size_t max_bytes = 64 * 1024) const;

 private:
  std::string name_;
  std::vector<std::string> argv_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// Runs a command to completion (bounded by `timeout`; killed beyond it) and returns its exit
// code, or nullopt on timeout. Output goes to log_path.
std::optional<int> run_command(const std::string& name, std::vector<std::string> argv,
                               const std::string& log_path, Seconds timeout);

// Full path of `program` found in $PATH, or nullopt.
std::optional<std::string> find_program(const std::string& program);

// Kills every live Process and ends the test binary (exit 1) after printing their logs. For a
// step that hung: a clear failure beats a ctest timeout with no output.
[[noreturn]] void abort_test_binary(const std::string& why);

}  // namespace nbdtunnel::testing
