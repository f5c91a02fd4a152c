#pragma once
// `--config PATH` for the commands of `nbdtunnel`: a command's options read from an INI or TOML
// file (CLI11's own reader), one `key = value` per line, the keys being the command's long
// options without the dashes:
//
//   listen = "0.0.0.0:49152"
//   target = ["nbd=/run/dst-nbd.sock", "mem=/run/mem.sock"]
//   tls-dir = "/etc/pki/nbdtunnel"
//   insecure = false
//
// An option given on the command line wins over the file (for a repeatable option such as
// --target, the command line's values replace the file's). A key that is not an option of the
// command, a key given twice, or a [section] header is an error naming the file, the line and the
// key. CLI11 2.1 reads config files only for the top-level command, so the file is read there and
// its keys are handed to the command that was named.

#include <CLI/CLI.hpp>
#include <initializer_list>

namespace nbdtunnel::engine {

// The most a config file may hold.
inline constexpr std::size_t kMaxConfigBytes = 1 << 20;

// Gives each of `commands` (subcommands of app) a --config PATH option.
void add_config_option(CLI::App& app, std::initializer_list<CLI::App*> commands);

}  // namespace nbdtunnel::engine
