#pragma once
// Runs work on an io_context after the handler that is running now, unless the Poster (and so
// its owner) is gone by then. Reaping, flushing and yielding all go through one of these.

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <functional>
#include <memory>

namespace nbdtunnel::tunnel {

class Poster {
 public:
  explicit Poster(boost::asio::io_context& io) : io_(io) {}
  Poster(const Poster&) = delete;
  Poster& operator=(const Poster&) = delete;

  void post(std::function<void()> f) {
    boost::asio::post(io_, [alive = std::weak_ptr<bool>(alive_), f = std::move(f)] {
      if (!alive.expired()) f();
    });
  }
  // Expires when the Poster is destroyed.
  std::weak_ptr<bool> liveness() const { return alive_; }

 private:
  boost::asio::io_context& io_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace nbdtunnel::tunnel
