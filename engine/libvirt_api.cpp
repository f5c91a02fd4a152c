#include "engine/libvirt_api.hpp"

#include <fmt/format.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <mutex>

namespace nbdtunnel::engine::libvirt {

namespace {

// libvirt prints every error on stderr unless told otherwise: the engine reports them itself.
void quiet(void*, virErrorPtr) {}

void initialise() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, quiet);
  });
}

// Takes ownership of a string libvirt allocated.
std::string take(char* s) {
  if (s == nullptr) return {};
  std::string out(s);
  std::free(s);
  return out;
}

std::optional<std::uint64_t> ull(virTypedParameterPtr params, int n, const char* name) {
  unsigned long long v = 0;
  if (virTypedParamsGetULLong(params, n, name, &v) == 1) return v;
  return std::nullopt;
}

}  // namespace

std::string last_error() {
  const char* m = virGetLastErrorMessage();
  return m != nullptr ? m : "unknown error";
}

std::string version_string(unsigned long long packed) {
  return fmt::format("{}.{}.{}", packed / 1000000, (packed / 1000) % 1000, packed % 1000);
}

TypedParams::~TypedParams() {
  if (params_ != nullptr) virTypedParamsFree(params_, n_);
}

void TypedParams::add(const char* name, const std::string& value) {
  if (virTypedParamsAddString(&params_, &n_, &max_, name, value.c_str()) < 0) {
    throw Error(fmt::format("parameter {}: {}", name, last_error()));
  }
}

void TypedParams::add(const char* name, unsigned long long value) {
  if (virTypedParamsAddULLong(&params_, &n_, &max_, name, value) < 0) {
    throw Error(fmt::format("parameter {}: {}", name, last_error()));
  }
}

void TypedParams::add(const char* name, int value) {
  if (virTypedParamsAddInt(&params_, &n_, &max_, name, value) < 0) {
    throw Error(fmt::format("parameter {}: {}", name, last_error()));
  }
}

Connection::Connection(const std::string& uri) : uri_(uri) {
  initialise();
  conn_ = virConnectOpen(uri.c_str());
  if (conn_ == nullptr) throw Error(fmt::format("cannot connect to {}: {}", uri, last_error()));
}

Connection::~Connection() {
  if (conn_ != nullptr) virConnectClose(conn_);
}

std::string Connection::type() const {
  const char* t = virConnectGetType(conn_);
  if (t == nullptr) throw Error(fmt::format("{}: hypervisor type: {}", uri_, last_error()));
  return t;
}

std::string Connection::lib_version() const {
  unsigned long v = 0;
  if (virConnectGetLibVersion(conn_, &v) < 0) {
    throw Error(fmt::format("{}: libvirt version: {}", uri_, last_error()));
  }
  return version_string(v);
}

std::string Connection::hypervisor_version() const {
  unsigned long v = 0;
  if (virConnectGetVersion(conn_, &v) < 0) {
    throw Error(fmt::format("{}: hypervisor version: {}", uri_, last_error()));
  }
  return version_string(v);
}

std::string Connection::capabilities() const {
  char* c = virConnectGetCapabilities(conn_);
  if (c == nullptr) throw Error(fmt::format("{}: capabilities: {}", uri_, last_error()));
  return take(c);
}

std::string Connection::hostname() const {
  char* h = virConnectGetHostname(conn_);
  if (h == nullptr) throw Error(fmt::format("{}: host name: {}", uri_, last_error()));
  return take(h);
}

Domain::Domain(const Connection& conn, const std::string& name) : name_(name) {
  dom_ = virDomainLookupByName(conn.get(), name.c_str());
  if (dom_ == nullptr) {
    throw Error(fmt::format("domain '{}' on {}: {}", name, conn.uri(), last_error()));
  }
}

Domain::~Domain() {
  if (dom_ != nullptr) virDomainFree(dom_);
}

int Domain::state() const {
  int state = 0, reason = 0;
  if (virDomainGetState(dom_, &state, &reason, 0) < 0) {
    throw Error(fmt::format("domain '{}': state: {}", name_, last_error()));
  }
  return state;
}

std::string Domain::xml() const {
  char* x = virDomainGetXMLDesc(dom_, 0);
  if (x == nullptr) throw Error(fmt::format("domain '{}': XML: {}", name_, last_error()));
  return take(x);
}

std::uint64_t Domain::disk_capacity(const std::string& target) const {
  virDomainBlockInfo info{};
  if (virDomainGetBlockInfo(dom_, target.c_str(), &info, 0) < 0) {
    throw Error(fmt::format("domain '{}': disk {}: {}", name_, target, last_error()));
  }
  return info.capacity;
}

JobStats Domain::job_stats() const {
  JobStats s;
  virTypedParameterPtr params = nullptr;
  int n = 0;
  if (virDomainGetJobStats(dom_, &s.type, &params, &n, 0) < 0) {
    throw Error(fmt::format("domain '{}': job statistics: {}", name_, last_error()));
  }
  s.disk_processed = ull(params, n, VIR_DOMAIN_JOB_DISK_PROCESSED);
  s.disk_total = ull(params, n, VIR_DOMAIN_JOB_DISK_TOTAL);
  s.disk_bps = ull(params, n, VIR_DOMAIN_JOB_DISK_BPS);
  s.memory_processed = ull(params, n, VIR_DOMAIN_JOB_MEMORY_PROCESSED);
  s.memory_total = ull(params, n, VIR_DOMAIN_JOB_MEMORY_TOTAL);
  s.memory_bps = ull(params, n, VIR_DOMAIN_JOB_MEMORY_BPS);
  s.time_elapsed_ms = ull(params, n, VIR_DOMAIN_JOB_TIME_ELAPSED);
  virTypedParamsFree(params, n);
  return s;
}

void Domain::abort_job() const {
  if (virDomainAbortJob(dom_) < 0) {
    throw Error(fmt::format("domain '{}': abort: {}", name_, last_error()));
  }
}

void Domain::set_max_speed(unsigned long mib_per_s) const {
  if (virDomainMigrateSetMaxSpeed(dom_, mib_per_s, 0) < 0) {
    throw Error(fmt::format("domain '{}': set speed: {}", name_, last_error()));
  }
}

}  // namespace nbdtunnel::engine::libvirt
