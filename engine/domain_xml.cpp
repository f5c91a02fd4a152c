#include "engine/domain_xml.hpp"

#include <fmt/format.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstring>
#include <memory>

namespace nbdtunnel::engine {

namespace {

struct DocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

tunnel::Result<Doc> parse(std::string_view xml, const char* what) {
  if (xml.size() > kMaxLibvirtXml) {
    return tunnel::input_error(fmt::format("{} XML is {} bytes, more than the {} allowed", what,
                                           xml.size(), kMaxLibvirtXml));
  }
  // No network, no DTD loading, no entity substitution; libxml2's default depth limit applies.
  Doc doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), nullptr, nullptr,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc) {
    const xmlError* e = xmlGetLastError();
    std::string why = e != nullptr && e->message != nullptr ? e->message : "malformed";
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    return tunnel::input_error(fmt::format("{} XML does not parse: {}", what, why));
  }
  // libvirt never writes a DTD; one could only be there to expand entities.
  if (doc->intSubset != nullptr || doc->extSubset != nullptr) {
    return tunnel::input_error(fmt::format("{} XML has a DOCTYPE, which is not allowed", what));
  }
  return doc;
}

bool named(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE &&
         std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0;
}

const xmlNode* child(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (named(c, name)) return c;
  }
  return nullptr;
}

std::string attr(const xmlNode* n, const char* name) {
  if (n == nullptr) return {};
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  if (v == nullptr) return {};
  std::string out(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return out;
}

std::string text(const xmlNode* n) {
  if (n == nullptr) return {};
  xmlChar* v = xmlNodeGetContent(n);
  if (v == nullptr) return {};
  std::string out(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return out;
}

}  // namespace

tunnel::Result<std::vector<DomainDisk>> parse_domain_disks(std::string_view xml) {
  auto doc = parse(xml, "domain");
  if (!doc) return doc.error();
  const xmlNode* root = xmlDocGetRootElement(doc->get());
  if (root == nullptr || !named(root, "domain")) {
    return tunnel::input_error("domain XML: the root element is not <domain>");
  }
  std::vector<DomainDisk> disks;
  const xmlNode* devices = child(root, "devices");
  if (devices == nullptr) return disks;
  for (const xmlNode* c = devices->children; c != nullptr; c = c->next) {
    if (!named(c, "disk")) continue;
    DomainDisk d;
    d.type = attr(c, "type");
    d.device = attr(c, "device");
    if (d.device.empty()) d.device = "disk";
    d.target = attr(child(c, "target"), "dev");
    const xmlNode* source = child(c, "source");
    d.source = attr(source, "file");
    if (d.source.empty()) d.source = attr(source, "dev");
    d.format = attr(child(c, "driver"), "type");
    d.readonly = child(c, "readonly") != nullptr;
    d.shareable = child(c, "shareable") != nullptr;
    if (d.target.empty()) return tunnel::input_error("domain XML: a <disk> has no <target dev>");
    disks.push_back(std::move(d));
  }
  return disks;
}

tunnel::Result<std::string> parse_host_uuid(std::string_view capabilities_xml) {
  auto doc = parse(capabilities_xml, "capabilities");
  if (!doc) return doc.error();
  const xmlNode* root = xmlDocGetRootElement(doc->get());
  const xmlNode* host =
      root != nullptr && named(root, "capabilities") ? child(root, "host") : nullptr;
  std::string uuid = text(host != nullptr ? child(host, "uuid") : nullptr);
  if (uuid.empty()) return tunnel::input_error("capabilities XML has no <host><uuid>");
  return uuid;
}

}  // namespace nbdtunnel::engine
