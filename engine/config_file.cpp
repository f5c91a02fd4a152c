#include "engine/config_file.hpp"

#include <fmt/format.h>

#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace nbdtunnel::engine {

namespace {

// The line (1-based) that sets `key`, or 0 if no line does (the key came from a form this scan
// does not know).
std::size_t line_of(const std::string& text, const std::string& key, std::size_t after = 0) {
  std::istringstream in(text);
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (n <= after) continue;
    const std::size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line.compare(start, key.size(), key) != 0) continue;
    const std::size_t rest = line.find_first_not_of(" \t", start + key.size());
    if (rest != std::string::npos && (line[rest] == '=' || line[rest] == ':')) return n;
  }
  return 0;
}

// The first [section] header's line, or 0.
std::size_t first_section(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    const std::size_t start = line.find_first_not_of(" \t");
    if (start != std::string::npos && line[start] == '[') return n;
  }
  return 0;
}

std::string where(const std::string& file, std::size_t line) {
  return line > 0 ? fmt::format("{} line {}", file, line) : file;
}

// Reads the file with CLI11's TOML/INI reader, checks every key against the options of the
// command given on the command line, and hands the items to that command.
class CommandConfigReader final : public CLI::ConfigTOML {
 public:
  explicit CommandConfigReader(CLI::App& app) : app_(app) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::string text;
    char buf[4096];
    while (input.read(buf, sizeof buf) || input.gcount() > 0) {
      text.append(buf, static_cast<std::size_t>(input.gcount()));
      if (text.size() > kMaxConfigBytes) {
        throw CLI::ConfigError(
            fmt::format("{}: larger than {} bytes", file(), std::size_t{kMaxConfigBytes}));
      }
    }
    std::vector<CLI::App*> named = app_.get_subcommands();
    if (named.empty()) throw CLI::ConfigError("--config goes with a command, e.g. `dest --config`");
    CLI::App* command = named.front();
    std::istringstream copy(text);
    std::vector<CLI::ConfigItem> parsed = CLI::ConfigTOML::from_config(copy);
    std::vector<CLI::ConfigItem> out;
    for (CLI::ConfigItem& item : parsed) {
      if (!item.parents.empty() || item.name == "++" || item.name == "--") {
        throw CLI::ConfigError(fmt::format(
            "{}: [section] headers are not used: write the options of `nbdtunnel {}` at the top "
            "level, one `key = value` per line",
            where(file(), first_section(text)), command->get_name()));
      }
      const CLI::Option* option = command->get_option_no_throw("--" + item.name);
      if (option == nullptr || item.name == "config" || item.name == "help" ||
          !option->get_configurable()) {
        throw CLI::ConfigError(fmt::format(
            "{}: unknown key '{}': the keys are the long options of `nbdtunnel {}` without "
            "the dashes (see `nbdtunnel {} --help`)",
            where(file(), line_of(text, item.name)), item.name, command->get_name(),
            command->get_name()));
      }
      // CLI11 merges a key given on several lines: only a repeatable option may have that.
      if (item.inputs.size() > 1 && option->get_items_expected_max() <= 1) {
        const std::size_t first = line_of(text, item.name);
        const std::size_t again = line_of(text, item.name, first);
        throw CLI::ConfigError(fmt::format(
            "{}: '{}' takes one value{}", where(file(), again), item.name,
            again > 0 ? fmt::format(" (first given on line {})", first) : std::string()));
      }
      item.parents = {command->get_name()};
      out.push_back(std::move(item));
    }
    return out;
  }

  void set_file(std::string path) { file_ = std::move(path); }

 private:
  const std::string& file() const { return file_; }

  CLI::App& app_;
  std::string file_;
};

}  // namespace

void add_config_option(CLI::App& app, std::initializer_list<CLI::App*> commands) {
  auto reader = std::make_shared<CommandConfigReader>(app);
  app.config_formatter(reader);
  // The top-level option CLI11 reads config files for; hidden: users give --config after the
  // command, whose option hands the path over as soon as it is parsed.
  CLI::Option* top = app.set_config("--config-file", "", "", false);
  top->group("");
  for (CLI::App* command : commands) {
    command
        ->add_option_function<std::string>(
            "--config",
            [top, reader](const std::string& path) {
              reader->set_file(path);
              top->clear();
              top->add_result(path);
            },
            "read options from this file: `key = value` lines (INI or TOML), the keys being the "
            "long options without the dashes; options given on the command line win")
        ->type_name("PATH")
        ->configurable(false)
        ->trigger_on_parse();
  }
}

}  // namespace nbdtunnel::engine
