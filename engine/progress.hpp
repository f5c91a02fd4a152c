#pragma once
// Progress of a storage migration, for a person at a terminal or for a program reading JSON lines.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nbdtunnel::engine {

struct CheckResult {
  enum class Verdict { pass, warn, fail };
  std::string name;
  Verdict verdict = Verdict::pass;
  std::string detail;
};

struct DiskProgress {
  std::string disk;
  std::uint64_t done = 0, total = 0;
  double rate_bps = 0;
  std::optional<double> eta_s;
  bool ready = false;
};

// Reports one migration. Not thread-safe: call it from one thread (the engine's executor).
class ProgressReporter {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  // Minimum time between two progress reports of one disk (JSON) or two redraws (terminal, TTY).
  static constexpr std::chrono::milliseconds kProgressInterval{250};
  // Minimum time between two plain progress blocks on a terminal that is not a TTY (a log file).
  static constexpr std::chrono::seconds kPlainInterval{5};

  virtual ~ProgressReporter() = default;

  // json: one JSON object per line on `out` and nothing else on it. Otherwise human output: bars
  // redrawn in place when `out_is_tty`, else plain lines at most every kPlainInterval; errors
  // go to `err`. `clock` defaults to std::chrono::steady_clock::now (tests inject their own).
  static std::unique_ptr<ProgressReporter> make(bool json, std::FILE* out, bool out_is_tty,
                                                Clock clock = {}, std::FILE* err = stderr);

  // "checks", "prepare", "mirror", "ready", "completing", "finishing", "cancelling", "done".
  virtual void phase(std::string_view name) = 0;
  virtual void checks(const std::vector<CheckResult>& results) = 0;
  // Rate-limited inside: call it as often as you like.
  virtual void progress(const std::vector<DiskProgress>& disks) = 0;
  virtual void disk_ready(std::string_view disk) = 0;
  virtual void disk_completed(std::string_view disk) = 0;
  // Every disk is synchronised.
  virtual void ready() = 0;
  // `phase` and `disk` may be empty.
  virtual void error(std::string_view phase, std::string_view disk, std::string_view message) = 0;
  // result: "completed", "ready", "cancelled" or "failed".
  virtual void summary(std::string_view result, std::uint64_t bytes, double seconds) = 0;
  virtual void info(std::string_view message) = 0;
  // The channel's connection was lost (the channel waits to be resumed), and it is back after
  // `outage_s`. The summary counts the losses.
  virtual void channel_lost(std::string_view reason) = 0;
  virtual void channel_resumed(double outage_s) = 0;
};

const char* to_string(CheckResult::Verdict verdict);  // "pass", "warn", "fail"

// "512 B", "12.0 KiB", "512.0 MiB", "1.2 GiB".
std::string format_bytes(std::uint64_t bytes);
// "45s", "1m05s", "2h03m".
std::string format_duration(double seconds);

}  // namespace nbdtunnel::engine
