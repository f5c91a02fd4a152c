#pragma once
// Which new connections a destination daemon takes on: a bounded number of channels, and of
// connections still in their handshake (in total and per source address), so that a flood of
// strangers costs a fixed, small amount and never crowds out the channels that matter. Shared by
// all of a daemon's threads.

#include <cstddef>
#include <map>
#include <mutex>
#include <string>

#include "engine/metrics.hpp"
#include "tunnel/result.hpp"

namespace nbdtunnel::engine {

struct AdmissionLimits {
  std::size_t max_channels = 64;               // connections open, authenticated or not
  std::size_t max_handshakes = 32;             // connections not yet through the handshake
  std::size_t max_handshakes_per_address = 8;  // of those, from one source address
};

class Admission {
 public:
  // A connection's place; gives it back when destroyed.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& other) noexcept;
    Ticket& operator=(Ticket&& other) noexcept;
    ~Ticket();
    // The connection completed its handshake: it no longer counts against the handshake limits.
    void authenticated();

   private:
    friend class Admission;
    Ticket(Admission* owner, std::string address) : owner_(owner), address_(std::move(address)) {}
    void release();
    Admission* owner_ = nullptr;
    std::string address_;
    bool handshaking_ = true;
  };

  explicit Admission(AdmissionLimits limits) : limits_(limits) {}
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  // A place for a new connection from address (an IP, no port), or why there is none (and,
  // if refused_by is given, which limit).
  tunnel::Result<Ticket> admit(const std::string& address, RefusalLimit* refused_by = nullptr);
  const AdmissionLimits& limits() const { return limits_; }
  std::size_t channels() const;

 private:
  void finish_handshake(const std::string& address);
  void leave(const std::string& address, bool handshaking);

  const AdmissionLimits limits_;
  mutable std::mutex mutex_;
  std::size_t channels_ = 0;
  std::size_t handshakes_ = 0;
  std::map<std::string, std::size_t> handshakes_by_address_;
};

}  // namespace nbdtunnel::engine
