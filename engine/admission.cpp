#include "engine/admission.hpp"

#include <fmt/format.h>

namespace nbdtunnel::engine {

Admission::Ticket::Ticket(Ticket&& other) noexcept
    : owner_(other.owner_), address_(std::move(other.address_)), handshaking_(other.handshaking_) {
  other.owner_ = nullptr;
}

Admission::Ticket& Admission::Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = other.owner_;
    address_ = std::move(other.address_);
    handshaking_ = other.handshaking_;
    other.owner_ = nullptr;
  }
  return *this;
}

Admission::Ticket::~Ticket() {
  release();
}

void Admission::Ticket::authenticated() {
  if (owner_ == nullptr || !handshaking_) return;
  handshaking_ = false;
  owner_->finish_handshake(address_);
}

void Admission::Ticket::release() {
  if (owner_ == nullptr) return;
  owner_->leave(address_, handshaking_);
  owner_ = nullptr;
}

tunnel::Result<Admission::Ticket> Admission::admit(const std::string& address,
                                                   RefusalLimit* refused_by) {
  std::lock_guard lock(mutex_);
  const auto refuse = [refused_by](RefusalLimit limit, std::string why) {
    if (refused_by != nullptr) *refused_by = limit;
    return tunnel::Error{std::make_error_code(std::errc::too_many_files_open), std::move(why)};
  };
  if (channels_ >= limits_.max_channels) {
    return refuse(RefusalLimit::channels,
                  fmt::format("{} channels are open, the limit (--max-channels)", channels_));
  }
  if (handshakes_ >= limits_.max_handshakes) {
    return refuse(RefusalLimit::handshakes,
                  fmt::format("{} connections are in their handshake, the limit (--max-handshakes)",
                              handshakes_));
  }
  std::size_t& from_address = handshakes_by_address_[address];
  if (from_address >= limits_.max_handshakes_per_address) {
    return refuse(
        RefusalLimit::handshakes_per_address,
        fmt::format(
            "{} connections from this address are in their handshake, the limit per address",
            from_address));
  }
  ++from_address;
  ++handshakes_;
  ++channels_;
  return Ticket(this, address);
}

std::size_t Admission::channels() const {
  std::lock_guard lock(mutex_);
  return channels_;
}

void Admission::finish_handshake(const std::string& address) {
  std::lock_guard lock(mutex_);
  --handshakes_;
  if (auto it = handshakes_by_address_.find(address); it != handshakes_by_address_.end()) {
    if (--it->second == 0) handshakes_by_address_.erase(it);
  }
}

void Admission::leave(const std::string& address, bool handshaking) {
  if (handshaking) finish_handshake(address);
  std::lock_guard lock(mutex_);
  --channels_;
}

}  // namespace nbdtunnel::engine
