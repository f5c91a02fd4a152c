#pragma once
// The names a migration gives what it adds to the source QEMU, and the way back from a name to
// the migration that made it: nbdtunnel-mirror-<tag>-<i> (the mirror job), nbdtunnel-n-<tag>-<i>
// (the NBD node), nbdtunnel-t-<tag>-<i> (the raw view), <tag> being the migration id or its hash
// and <i> the disk's index. An id may hold '-' and '.', so a name is parsed by its prefix and its
// final "-<i>".

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace nbdtunnel::engine {

// What this engine adds to the source QEMU is named kSourceNamePrefix…; nothing else is.
inline constexpr std::string_view kSourceNamePrefix = "nbdtunnel-";

// The migration id as it goes into names: itself up to 16 characters, else 16 hex digits of its
// FNV-1a hash (node names are at most 31 characters).
std::string name_tag(const std::string& id);

struct SourceNames {
  std::string job;        // mirror job
  std::string nbd_node;   // NBD client node on the tunnel socket
  std::string view_node;  // raw view of the NBD node, sized like the source disk
};
// The names of disk `index` of the migration whose tag is `tag`.
SourceNames source_names(const std::string& tag, std::size_t index);

// The tag of the migration that made the job or node `name`; nullopt for a name not made so.
std::optional<std::string> tag_of_source_name(std::string_view name);

}  // namespace nbdtunnel::engine
