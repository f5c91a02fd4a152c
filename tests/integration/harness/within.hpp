#pragma once

#include <future>
#include <string>
#include <thread>
#include <utility>

#include "tests/integration/harness/process.hpp"

namespace nbdtunnel::testing {

// Runs `fn` on a helper thread and returns its result (or rethrows its exception). If it takes
// longer than `timeout` — a blocking libnbd call on a tunnel that hangs — the test binary is
// ended via abort_test_binary(), with every child's log printed, instead of hanging until
// ctest kills it without a word.
template <typename Fn>
auto within(Seconds timeout, const std::string& what, Fn&& fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::forward<Fn>(fn));
  auto result = task.get_future();
  std::thread worker(std::move(task));
  if (result.wait_for(timeout) != std::future_status::ready) {
    worker.detach();
    abort_test_binary(what + " did not finish within " + std::to_string(timeout.count()) + " s");
  }
  worker.join();
  return result.get();
}

}  // namespace nbdtunnel::testing
