#pragma once
// The data plane's one error convention. An Error pairs a std::error_code (for the program to
// branch on) with a message (for the operator: what failed, on which object). Result<T> holds a
// value or an Error; Status (Result<void>) is success or an Error. No exceptions on the data
// plane: codecs, endpoints, sockets, the ring and the channel all return these.

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>

namespace nbdtunnel::tunnel {

struct Error {
  std::error_code code;
  std::string message;
};

// An error from an errno value: "<what>: <strerror(err)>", code in the system category.
Error system_error(int err, std::string_view what);
// Malformed input from a peer or a user: code std::errc::bad_message (or the one given).
Error input_error(std::string message, std::errc code = std::errc::bad_message);

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}

  bool ok() const { return !error_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    assert(!ok());
    return *error_;
  }

 private:
  std::optional<Error> error_;
};

using Status = Result<void>;

}  // namespace nbdtunnel::tunnel
