#include "engine/source_names.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "engine/run_dir.hpp"

namespace nbdtunnel::engine {

std::string name_tag(const std::string& id) {
  if (id.size() <= 16) return id;
  return hash16(id);
}

SourceNames source_names(const std::string& tag, std::size_t index) {
  return SourceNames{fmt::format("{}mirror-{}-{}", kSourceNamePrefix, tag, index),
                     fmt::format("{}n-{}-{}", kSourceNamePrefix, tag, index),
                     fmt::format("{}t-{}-{}", kSourceNamePrefix, tag, index)};
}

std::optional<std::string> tag_of_source_name(std::string_view name) {
  if (!name.starts_with(kSourceNamePrefix)) return std::nullopt;
  name.remove_prefix(kSourceNamePrefix.size());
  bool kind = false;
  for (std::string_view k : {"mirror-", "n-", "t-"}) {
    if (name.starts_with(k)) {
      name.remove_prefix(k.size());
      kind = true;
      break;
    }
  }
  const std::size_t dash = name.rfind('-');
  if (!kind || dash == std::string_view::npos || dash == 0) return std::nullopt;
  const std::string_view index = name.substr(dash + 1);
  if (index.empty() ||
      !std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::string(name.substr(0, dash));
}

}  // namespace nbdtunnel::engine
