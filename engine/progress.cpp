#include "engine/progress.hpp"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

namespace nbdtunnel::engine {

namespace {

using TimePoint = std::chrono::steady_clock::time_point;
using ojson = nlohmann::ordered_json;  // keeps "event" and "time" first on every line

constexpr double kMiB = 1024.0 * 1024.0;

double mib_per_s(double bytes, double seconds) {
  return seconds > 0 ? bytes / kMiB / seconds : 0.0;
}

// One JSON object per line; `out` carries nothing else.
class JsonReporter final : public ProgressReporter {
 public:
  JsonReporter(std::FILE* out, Clock clock) : out_(out), clock_(std::move(clock)) {
    start_ = clock_();
  }

  void phase(std::string_view name) override { emit("phase", {{"phase", name}}); }

  void checks(const std::vector<CheckResult>& results) override {
    for (const auto& r : results) {
      emit("check", {{"name", r.name}, {"verdict", to_string(r.verdict)}, {"detail", r.detail}});
    }
  }

  void progress(const std::vector<DiskProgress>& disks) override {
    const auto now = clock_();
    for (const auto& d : disks) {
      const bool complete = d.total > 0 && d.done >= d.total;
      auto [it, first] = shown_.try_emplace(d.disk);
      Shown& s = it->second;
      // Due by time, or a one-off transition a reader must not miss (100 %, ready).
      const bool due = first || now - s.at >= kProgressInterval || (complete && !s.complete) ||
                       (d.ready && !s.ready);
      if (!due) continue;
      s = {now, complete, d.ready};
      ojson eta = d.eta_s ? ojson(*d.eta_s) : ojson(nullptr);
      emit("progress", {{"disk", d.disk},
                        {"done", d.done},
                        {"total", d.total},
                        {"rate", d.rate_bps},
                        {"eta", std::move(eta)},
                        {"ready", d.ready}});
    }
  }

  void disk_ready(std::string_view disk) override { emit("disk_ready", {{"disk", disk}}); }
  void disk_completed(std::string_view disk) override { emit("disk_completed", {{"disk", disk}}); }
  void ready() override { emit("ready", ojson::object()); }

  void error(std::string_view phase, std::string_view disk, std::string_view message) override {
    emit("error", {{"phase", phase}, {"disk", disk}, {"message", message}});
  }

  void summary(std::string_view result, std::uint64_t bytes, double seconds) override {
    emit("summary", {{"result", result},
                     {"bytes", bytes},
                     {"seconds", seconds},
                     {"rate_mib_s", mib_per_s(static_cast<double>(bytes), seconds)},
                     {"channel_losses", losses_}});
  }

  void info(std::string_view message) override { emit("info", {{"message", message}}); }
  void channel_lost(std::string_view reason) override {
    ++losses_;
    emit("channel-lost", {{"reason", reason}});
  }
  void channel_resumed(double outage_s) override {
    emit("channel-resumed", {{"outage", outage_s}});
  }

 private:
  struct Shown {
    TimePoint at;
    bool complete = false;
    bool ready = false;
  };

  void emit(std::string_view event, const ojson& fields) {
    const double t = std::chrono::duration<double>(clock_() - start_).count();
    ojson line = {{"event", event}, {"time", std::round(t * 1000) / 1000}};
    for (const auto& [key, value] : fields.items()) line[key] = value;
    // Replace invalid UTF-8 (a disk name from QEMU) rather than throw.
    const auto text = line.dump(-1, ' ', false, ojson::error_handler_t::replace);
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
  }

  std::FILE* out_;
  Clock clock_;
  TimePoint start_;
  std::map<std::string, Shown, std::less<>> shown_;
  unsigned losses_ = 0;
};

// Columns of a terminal, or 80 when `out` is not one.
std::size_t terminal_width(std::FILE* out) {
  winsize ws{};
  if (::ioctl(::fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

const char* label(CheckResult::Verdict verdict) {
  switch (verdict) {
    case CheckResult::Verdict::pass:
      return "PASS";
    case CheckResult::Verdict::warn:
      return "WARN";
    case CheckResult::Verdict::fail:
      return "FAIL";
  }
  return "?";
}

// Human output. On a TTY the bars stay at the bottom and other lines scroll above them.
class TerminalReporter final : public ProgressReporter {
 public:
  TerminalReporter(std::FILE* out, std::FILE* err, bool tty, Clock clock)
      : out_(out), err_(err), tty_(tty), clock_(std::move(clock)) {}

  void phase(std::string_view name) override { line(fmt::format("phase: {}", name)); }

  void checks(const std::vector<CheckResult>& results) override {
    std::size_t width = 5;  // "CHECK"
    int counts[3] = {0, 0, 0};
    for (const auto& r : results) {
      width = std::max(width, r.name.size());
      ++counts[static_cast<int>(r.verdict)];
    }
    line(fmt::format("{:<{}}  RESULT  DETAIL", "CHECK", width));
    for (const auto& r : results) {
      auto row = fmt::format("{:<{}}  {:<6}  {}", r.name, width, label(r.verdict), r.detail);
      row.erase(row.find_last_not_of(' ') + 1);
      line(row);
    }
    line(fmt::format("checks: {} passed, {} warning(s), {} failed", counts[0], counts[1],
                     counts[2]));
  }

  void progress(const std::vector<DiskProgress>& disks) override {
    const auto now = clock_();
    const std::chrono::milliseconds interval = tty_ ? kProgressInterval : kPlainInterval;
    const bool due = !last_draw_ || now - *last_draw_ >= interval || (tty_ && drawn_ == 0);
    disks_ = disks;
    if (!due) return;
    last_draw_ = now;
    if (tty_) {
      erase_bars();
      draw_bars();
    } else {
      for (const auto& d : disks_) std::fprintf(out_, "progress: %s\n", describe(d, 0).c_str());
    }
    std::fflush(out_);
  }

  void disk_ready(std::string_view disk) override {
    line(fmt::format("{}: synchronised, mirror ready", disk));
  }
  void disk_completed(std::string_view disk) override { line(fmt::format("{}: completed", disk)); }
  void ready() override { line("all disks synchronised: the migration is ready to complete"); }

  void error(std::string_view phase, std::string_view disk, std::string_view message) override {
    std::string text = "error: ";
    if (!phase.empty()) text += fmt::format("{}: ", phase);
    if (!disk.empty()) text += fmt::format("{}: ", disk);
    text += message;
    // On stderr; on a TTY the bars (on stdout) are taken down first and drawn again after.
    const bool redraw = tty_ && drawn_ > 0;
    erase_bars();
    std::fflush(out_);
    std::fprintf(err_, "%s\n", text.c_str());
    std::fflush(err_);
    if (redraw) draw_bars();
    std::fflush(out_);
  }

  void summary(std::string_view result, std::uint64_t bytes, double seconds) override {
    // The final bars stay on screen above the summary.
    drawn_ = 0;
    disks_.clear();
    if (bytes == 0 && seconds <= 0) {
      line(fmt::format("result: {}", result));  // nothing was copied (e.g. checks only)
    } else {
      line(fmt::format("result: {}, {} in {:.1f}s ({:.1f} MiB/s)", result, format_bytes(bytes),
                       seconds, mib_per_s(static_cast<double>(bytes), seconds)));
    }
  }

  void info(std::string_view message) override { line(message); }
  void channel_lost(std::string_view reason) override {
    line(fmt::format("channel lost: {}; resuming", reason));
  }
  void channel_resumed(double outage_s) override {
    line(fmt::format("channel resumed after {:.1f}s", outage_s));
  }

 private:
  // "vda  [#####-----]  45.2%  512.0 MiB / 1.1 GiB  123.4 MiB/s  ETA 1m05s"; bar omitted if 0.
  static std::string describe(const DiskProgress& d, std::size_t bar) {
    const double frac =
        d.total > 0 ? std::min(1.0, static_cast<double>(d.done) / static_cast<double>(d.total))
                    : 0.0;
    std::string text = d.disk + "  ";
    if (bar > 0) {
      const auto filled = static_cast<std::size_t>(frac * static_cast<double>(bar));
      text += '[';
      text.append(filled, '#');
      text.append(bar - filled, '-');
      text += "]  ";
    }
    text += d.total > 0 ? fmt::format("{:5.1f}%", frac * 100) : std::string("  --%");
    text += fmt::format("  {} / {}  {:.1f} MiB/s  ", format_bytes(d.done), format_bytes(d.total),
                        d.rate_bps / kMiB);
    text += d.ready ? std::string("READY") : "ETA " + (d.eta_s ? format_duration(*d.eta_s) : "--");
    return text;
  }

  // One line per disk; the bars share the width the longest line leaves free (up to 30).
  void draw_bars() {
    std::size_t name_width = 0;
    for (const auto& d : disks_) name_width = std::max(name_width, d.disk.size());
    std::size_t longest = 0;
    for (auto d : disks_) {
      d.disk.resize(name_width, ' ');
      longest = std::max(longest, describe(d, 0).size());
    }
    const std::size_t width = terminal_width(out_);
    // A bar costs "[" "]" and two blanks; keep the last column free so no line wraps.
    const std::size_t room = width > longest + 5 ? width - longest - 5 : 0;
    const std::size_t bar = room >= 10 ? std::min<std::size_t>(room, 30) : 0;
    for (auto d : disks_) {
      d.disk.resize(name_width, ' ');
      auto text = describe(d, bar);
      if (text.size() >= width) text.resize(width - 1);  // a wrapped line breaks cursor-up
      std::fprintf(out_, "%s\n", text.c_str());
    }
    drawn_ = disks_.size();
  }

  void erase_bars() {
    if (drawn_ == 0) return;
    std::fprintf(out_, "\x1b[%zuA\r\x1b[J", drawn_);
    drawn_ = 0;
  }

  // A line of output; on a TTY it goes above the bars, which are then redrawn.
  void line(std::string_view text) {
    const bool redraw = tty_ && drawn_ > 0;
    erase_bars();
    std::fprintf(out_, "%.*s\n", static_cast<int>(text.size()), text.data());
    if (redraw) draw_bars();
    std::fflush(out_);
  }

  std::FILE* out_;
  std::FILE* err_;
  bool tty_;
  Clock clock_;
  std::vector<DiskProgress> disks_;  // the latest state reported
  std::size_t drawn_ = 0;            // bar lines on screen below the cursor's line (TTY)
  std::optional<TimePoint> last_draw_;
};

}  // namespace

std::unique_ptr<ProgressReporter> ProgressReporter::make(bool json, std::FILE* out, bool out_is_tty,
                                                         Clock clock, std::FILE* err) {
  if (!clock) clock = [] { return std::chrono::steady_clock::now(); };
  if (json) return std::make_unique<JsonReporter>(out, std::move(clock));
  return std::make_unique<TerminalReporter>(out, err, out_is_tty, std::move(clock));
}

const char* to_string(CheckResult::Verdict verdict) {
  switch (verdict) {
    case CheckResult::Verdict::pass:
      return "pass";
    case CheckResult::Verdict::warn:
      return "warn";
    case CheckResult::Verdict::fail:
      return "fail";
  }
  return "unknown";
}

std::string format_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  std::size_t unit = 0;
  // 1023.96 MiB would print as "1024.0 MiB"; move up a unit before rounding gets there.
  while (value >= 1023.95 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const auto s = static_cast<long long>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
}

}  // namespace nbdtunnel::engine
