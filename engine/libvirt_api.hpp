#pragma once
// A small C++ face on the libvirt C API, as much of it as the libvirt migration engine uses:
// owned connections and domains, typed parameters, job statistics. Every failure throws
// libvirt::Error carrying libvirt's own message. libvirt connections are thread-safe; so is this.

#include <libvirt/libvirt.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace nbdtunnel::engine::libvirt {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// libvirt's "9.0.0" from its packed version number (major * 1,000,000 + minor * 1,000 + micro).
std::string version_string(unsigned long long packed);

// Parameters of virDomainMigrate3 and friends, freed with this object.
class TypedParams {
 public:
  TypedParams() = default;
  TypedParams(const TypedParams&) = delete;
  TypedParams& operator=(const TypedParams&) = delete;
  ~TypedParams();
  void add(const char* name, const std::string& value);  // repeatable (e.g. MIGRATE_DISKS)
  void add(const char* name, unsigned long long value);
  void add(const char* name, int value);
  virTypedParameterPtr data() const { return params_; }
  int size() const { return n_; }

 private:
  virTypedParameterPtr params_ = nullptr;
  int n_ = 0;
  int max_ = 0;
};

// virDomainGetJobStats, the fields the progress report uses (absent ones stay empty).
struct JobStats {
  int type = VIR_DOMAIN_JOB_NONE;
  std::optional<std::uint64_t> disk_processed, disk_total, disk_bps;
  std::optional<std::uint64_t> memory_processed, memory_total, memory_bps;
  std::optional<std::uint64_t> time_elapsed_ms;
};

class Connection {
 public:
  // Opens `uri` read-write; throws Error naming the URI.
  explicit Connection(const std::string& uri);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();
  virConnectPtr get() const { return conn_; }
  const std::string& uri() const { return uri_; }
  std::string type() const;                // "QEMU"
  std::string lib_version() const;         // libvirt's, "9.0.0"
  std::string hypervisor_version() const;  // QEMU's, "7.2.0"
  std::string capabilities() const;        // the capabilities XML
  std::string hostname() const;

 private:
  std::string uri_;
  virConnectPtr conn_ = nullptr;
};

class Domain {
 public:
  // Throws Error if there is no domain `name` on `conn`.
  Domain(const Connection& conn, const std::string& name);
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;
  ~Domain();
  virDomainPtr get() const { return dom_; }
  const std::string& name() const { return name_; }
  int state() const;  // VIR_DOMAIN_RUNNING, ...
  std::string xml() const;
  std::uint64_t disk_capacity(const std::string& target) const;
  JobStats job_stats() const;
  void abort_job() const;
  void set_max_speed(unsigned long mib_per_s) const;

 private:
  std::string name_;
  virDomainPtr dom_ = nullptr;
};

// The last libvirt error of this thread, as libvirt words it ("unknown error" if none).
std::string last_error();

}  // namespace nbdtunnel::engine::libvirt
