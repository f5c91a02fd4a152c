#pragma once
// Runs work on the ring's thread after the handler that is running now, unless the Poster (and
// so its owner) is gone by then. Reaping, flushing and yielding all go through one of these.

#include <functional>
#include <memory>

#include "tunnel/ring.hpp"

namespace nbdtunnel::tunnel {

class Poster {
 public:
  explicit Poster(Ring& ring) : ring_(ring) {}
  Poster(const Poster&) = delete;
  Poster& operator=(const Poster&) = delete;

  void post(std::function<void()> f) {
    ring_.defer([alive = std::weak_ptr<bool>(alive_), f = std::move(f)] {
      if (!alive.expired()) f();
    });
  }
  // Expires when the Poster is destroyed.
  std::weak_ptr<bool> liveness() const { return alive_; }

 private:
  Ring& ring_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace nbdtunnel::tunnel
