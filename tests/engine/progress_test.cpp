#include "engine/progress.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace nbdtunnel::engine {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using Verdict = CheckResult::Verdict;

constexpr std::uint64_t kMiB = 1024 * 1024;

// A FILE* writing to memory, so tests can read back what a reporter printed.
class MemFile {
 public:
  MemFile() : file_(::open_memstream(&data_, &size_)) {}
  ~MemFile() {
    std::fclose(file_);
    std::free(data_);
  }
  std::FILE* get() const { return file_; }
  std::string text() {
    std::fflush(file_);
    return {data_, size_};
  }

 private:
  char* data_ = nullptr;
  std::size_t size_ = 0;
  std::FILE* file_;
};

// A clock the test moves by hand.
struct FakeClock {
  std::chrono::steady_clock::time_point now{};
  ProgressReporter::Clock fn() {
    return [this] { return now; };
  }
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> out;
  for (const auto& line : lines_of(text)) {
    auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << "not a JSON object line: " << line;
    EXPECT_TRUE(j["event"].is_string()) << line;
    EXPECT_TRUE(j["time"].is_number()) << line;
    out.push_back(std::move(j));
  }
  return out;
}

DiskProgress disk(std::string name, std::uint64_t done, std::uint64_t total, bool ready = false) {
  return {std::move(name), done, total, 100.0 * kMiB, 65.0, ready};
}

TEST(JsonProgress, EveryLineIsAnObjectWithItsFields) {
  MemFile out;
  FakeClock clock;
  auto r = ProgressReporter::make(true, out.get(), false, clock.fn());
  r->phase("checks");
  r->checks({{"qemu version", Verdict::pass, "7.2.0"},
             {"disk size", Verdict::warn, "rounded"},
             {"space", Verdict::fail, "no room"}});
  clock.now += 1500ms;
  r->phase("mirror");
  r->progress({disk("vda", 512 * kMiB, 1024 * kMiB), {"vdb", 0, 0, 0, std::nullopt, false}});
  r->disk_ready("vda");
  r->ready();
  r->disk_completed("vda");
  r->error("mirror", "vdb", "boom \xff");  // invalid UTF-8 must not break the line
  r->info("hello");
  r->summary("completed", 1024 * kMiB, 2.0);

  const auto lines = json_lines(out.text());
  ASSERT_EQ(lines.size(), 13u);
  EXPECT_EQ(lines[0], json::parse(R"({"event":"phase","time":0.0,"phase":"checks"})"));
  EXPECT_EQ(lines[1]["name"], "qemu version");
  EXPECT_EQ(lines[1]["verdict"], "pass");
  EXPECT_EQ(lines[1]["detail"], "7.2.0");
  EXPECT_EQ(lines[2]["verdict"], "warn");
  EXPECT_EQ(lines[3]["verdict"], "fail");
  EXPECT_EQ(lines[4]["phase"], "mirror");
  EXPECT_DOUBLE_EQ(lines[4]["time"].get<double>(), 1.5);
  const auto& vda = lines[5];
  EXPECT_EQ(vda["event"], "progress");
  EXPECT_EQ(vda["disk"], "vda");
  EXPECT_EQ(vda["done"], 512 * kMiB);
  EXPECT_EQ(vda["total"], 1024 * kMiB);
  EXPECT_DOUBLE_EQ(vda["rate"].get<double>(), 100.0 * kMiB);
  EXPECT_DOUBLE_EQ(vda["eta"].get<double>(), 65.0);
  EXPECT_EQ(lines[6]["disk"], "vdb");
  EXPECT_TRUE(lines[6]["eta"].is_null());
  EXPECT_EQ(lines[7], json::parse(R"({"event":"disk_ready","time":1.5,"disk":"vda"})"));
  EXPECT_EQ(lines[8]["event"], "ready");
  EXPECT_EQ(lines[9]["event"], "disk_completed");
  EXPECT_EQ(lines[10]["event"], "error");
  EXPECT_EQ(lines[10]["phase"], "mirror");
  EXPECT_EQ(lines[10]["disk"], "vdb");
  EXPECT_EQ(lines[11]["message"], "hello");
  const auto& summary = lines[12];
  EXPECT_EQ(summary["result"], "completed");
  EXPECT_EQ(summary["bytes"], 1024 * kMiB);
  EXPECT_DOUBLE_EQ(summary["seconds"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(summary["rate_mib_s"].get<double>(), 512.0);
}

TEST(JsonProgress, IsRateLimitedPerDisk) {
  MemFile out;
  FakeClock clock;
  auto r = ProgressReporter::make(true, out.get(), false, clock.fn());
  // 40 updates per disk over 2 s; at most one report per disk per 250 ms gets through.
  for (int i = 0; i < 40; ++i) {
    r->progress({disk("vda", i * kMiB, 100 * kMiB), disk("vdb", i * kMiB, 100 * kMiB)});
    clock.now += 50ms;
  }
  int vda = 0, vdb = 0;
  for (const auto& j : json_lines(out.text())) (j["disk"] == "vda" ? vda : vdb)++;
  EXPECT_EQ(vda, 8);
  EXPECT_EQ(vdb, 8);
}

TEST(JsonProgress, ReadyAndCompleteAreNeverDropped) {
  MemFile out;
  FakeClock clock;
  auto r = ProgressReporter::make(true, out.get(), false, clock.fn());
  r->progress({disk("vda", 10, 100)});
  r->progress({disk("vda", 20, 100)});         // too soon: dropped
  r->progress({disk("vda", 100, 100)});        // reaches 100 %: reported
  r->progress({disk("vda", 100, 100, true)});  // becomes ready: reported
  r->progress({disk("vda", 100, 100, true)});  // too soon: dropped
  const auto lines = json_lines(out.text());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1]["done"], 100);
  EXPECT_EQ(lines[2]["ready"], true);
}

TEST(TerminalProgress, ChecksAreAnAlignedTable) {
  MemFile out;
  auto r = ProgressReporter::make(false, out.get(), false);
  r->checks({{"qemu version", Verdict::pass, "7.2.0"},
             {"size", Verdict::warn, "rounded up"},
             {"free space on destination", Verdict::fail, ""}});
  const auto lines = lines_of(out.text());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0].find("CHECK"), 0u);
  const auto column = lines[0].find("RESULT");
  ASSERT_NE(column, std::string::npos);
  EXPECT_EQ(lines[1].find("PASS"), column) << lines[1];
  EXPECT_EQ(lines[2].find("WARN"), column) << lines[2];
  EXPECT_EQ(lines[3].find("FAIL"), column) << lines[3];
  EXPECT_EQ(lines[1].find("7.2.0"), lines[0].find("DETAIL"));
  EXPECT_EQ(lines[3].back(), 'L') << "no trailing blanks after an empty detail";
  EXPECT_EQ(lines[4], "checks: 1 passed, 1 warning(s), 1 failed");
}

TEST(TerminalProgress, PlainLinesUseHumanUnitsAndComeEveryFewSeconds) {
  MemFile out, err;
  FakeClock clock;
  auto r = ProgressReporter::make(false, out.get(), false, clock.fn(), err.get());
  const auto vda = disk("vda", 512 * kMiB, 1229 * kMiB);
  r->progress({vda});
  clock.now += 1s;
  r->progress({vda});  // within kPlainInterval: not printed
  clock.now += ProgressReporter::kPlainInterval;
  r->progress({disk("vda", 600 * kMiB, 1229 * kMiB, true)});
  r->error("mirror", "vda", "boom");
  r->error("prepare", "", "no NBD server");
  r->summary("completed", 2048 * kMiB, 10.0);

  const auto text = out.text();
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << "no escape sequences when not a TTY";
  const auto lines = lines_of(text);
  ASSERT_EQ(lines.size(), 3u) << text;
  EXPECT_EQ(lines[0], "progress: vda   41.7%  512.0 MiB / 1.2 GiB  100.0 MiB/s  ETA 1m05s");
  EXPECT_NE(lines[1].find("READY"), std::string::npos) << lines[1];
  EXPECT_EQ(lines[2], "result: completed, 2.0 GiB in 10.0s (204.8 MiB/s)");
  // Errors go to stderr, so that stdout holds the table and the progress alone.
  const auto errors = lines_of(err.text());
  ASSERT_EQ(errors.size(), 2u) << err.text();
  EXPECT_EQ(errors[0], "error: mirror: vda: boom");
  EXPECT_EQ(errors[1], "error: prepare: no NBD server");
}

// The bar of `disk` in the last drawing in `text`, e.g. "#####-----".
std::string bar_of(const std::string& text, const std::string& disk) {
  const auto line = text.rfind(disk + " ");
  const auto open = text.find('[', line);
  return text.substr(open + 1, text.find(']', open) - open - 1);
}

TEST(TerminalProgress, TtyRedrawsBarsInPlaceBelowOtherLines) {
  MemFile out;
  FakeClock clock;
  auto r = ProgressReporter::make(false, out.get(), true, clock.fn());
  r->progress({disk("vda", 0, 100 * kMiB), disk("vdb1", 0, 100 * kMiB)});
  const auto first = out.text();
  EXPECT_EQ(first.find('\x1b'), std::string::npos) << "nothing to erase on the first draw";
  EXPECT_EQ(first.find("vda   ["), 0u) << "names padded to one width: " << first;
  const auto empty = bar_of(first, "vda");
  EXPECT_GE(empty.size(), 10u);
  EXPECT_EQ(empty, std::string(empty.size(), '-'));
  for (const auto& line : lines_of(first)) EXPECT_LT(line.size(), 80u) << "no wrapping: " << line;

  clock.now += 100ms;
  r->progress({disk("vda", 50 * kMiB, 100 * kMiB), disk("vdb1", 0, 100 * kMiB)});
  EXPECT_EQ(out.text(), first) << "a redraw within 250 ms is skipped";

  clock.now += 200ms;
  r->progress({disk("vda", 50 * kMiB, 100 * kMiB), disk("vdb1", 0, 100 * kMiB)});
  auto text = out.text().substr(first.size());
  EXPECT_EQ(text.find("\x1b[2A\r\x1b[J"), 0u) << "cursor up over both bars, then clear";
  const auto half = bar_of(text, "vda");
  EXPECT_EQ(half,
            std::string(half.size() / 2, '#') + std::string(half.size() - half.size() / 2, '-'));
  EXPECT_NE(text.find("]   50.0%  50.0 MiB / 100.0 MiB  100.0 MiB/s  ETA 1m05s"), std::string::npos)
      << text;

  const auto before = out.text().size();
  r->info("vda: 1 GiB to go");
  text = out.text().substr(before);
  EXPECT_EQ(text.find("\x1b[2A\r\x1b[J"
                      "vda: 1 GiB to go\n"),
            0u)
      << text;
  EXPECT_NE(text.find("\nvdb1  [--"), std::string::npos) << "bars redrawn below the line: " << text;
}

TEST(Format, Bytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(512 * kMiB), "512.0 MiB");
  EXPECT_EQ(format_bytes(1229 * kMiB), "1.2 GiB");
  EXPECT_EQ(format_bytes(1024 * kMiB - 1), "1.0 GiB");
  EXPECT_EQ(format_bytes(5ull << 40), "5.0 TiB");
}

TEST(Format, Duration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(45.4), "45s");
  EXPECT_EQ(format_duration(65), "1m05s");
  EXPECT_EQ(format_duration(3600 + 180 + 5), "1h03m");
  EXPECT_EQ(format_duration(-1), "--");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "--");
}

}  // namespace
}  // namespace nbdtunnel::engine
