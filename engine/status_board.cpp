#include "engine/status_board.hpp"

#include <boost/asio/post.hpp>
#include <future>
#include <memory>
#include <vector>

namespace nbdtunnel::engine {

using nlohmann::json;

void StatusBoard::attach(const void* key, boost::asio::any_io_executor ex, Describe describe) {
  std::lock_guard lock(mutex_);
  entries_[key] = Entry{std::move(ex), std::move(describe)};
}

void StatusBoard::detach(const void* key) {
  std::lock_guard lock(mutex_);
  entries_.erase(key);
}

json StatusBoard::collect(std::chrono::milliseconds timeout) const {
  std::vector<std::future<json>> answers;
  {
    // Posted under the lock: a thread detaches (under it) before its objects go, so nothing is
    // posted to a servant that is gone. Posted work left behind by a stopping thread is dropped
    // with its io_context, never run.
    std::lock_guard lock(mutex_);
    for (const auto& [key, entry] : entries_) {
      auto promise = std::make_shared<std::promise<json>>();
      answers.push_back(promise->get_future());
      boost::asio::post(entry.ex, [promise, describe = entry.describe] {
        try {
          promise->set_value(describe());
        } catch (...) {
          promise->set_exception(std::current_exception());
        }
      });
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  json threads = json::array();
  for (auto& answer : answers) {
    if (answer.wait_until(deadline) != std::future_status::ready) {
      threads.push_back({{"error", "this daemon thread did not answer in time"}});
      continue;
    }
    try {
      threads.push_back(answer.get());
    } catch (const std::exception& e) {
      threads.push_back({{"error", e.what()}});
    }
  }
  return threads;
}

}  // namespace nbdtunnel::engine
