#pragma once

// Runs one coroutine on a test's io_context with a hard time limit, so a stuck client fails the
// test instead of hanging it.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>

namespace nbdtunnel::qmp::test {

inline void run_bounded(boost::asio::io_context& io, boost::asio::awaitable<void> op,
                        std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  struct State {
    bool done = false;
    std::exception_ptr error;
  };
  auto state = std::make_shared<State>();
  boost::asio::co_spawn(io, std::move(op), [state](std::exception_ptr e) {
    state->error = e;
    state->done = true;
  });
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!state->done && std::chrono::steady_clock::now() < deadline) {
    io.run_one_for(std::chrono::milliseconds(50));
  }
  if (!state->done) throw std::runtime_error("test coroutine did not finish in time");
  if (state->error) std::rethrow_exception(state->error);
}

}  // namespace nbdtunnel::qmp::test
