#include "tunnel/stream_table.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>

namespace nbdtunnel::tunnel {

StreamTable::StreamTable(Poster& poster, std::size_t max_streams)
    : poster_(poster), max_streams_(max_streams) {}

std::uint32_t StreamTable::next_serial() {
  return ++highest_serial_;
}

Status StreamTable::admit(std::uint32_t serial) {
  if (serial <= highest_serial_) {
    return input_error(fmt::format("stream serial {} was already used", serial));
  }
  highest_serial_ = serial;
  if (full()) {
    return input_error(fmt::format("too many streams on this channel (limit {})", max_streams_),
                       std::errc::too_many_files_open);
  }
  return {};
}

Stream& StreamTable::add(std::unique_ptr<Stream> stream) {
  assert(stream->serial() <= highest_serial_ && !open_.contains(stream->serial()));
  Stream& s = *stream;
  open_.emplace(s.serial(), std::move(stream));
  return s;
}

Stream* StreamTable::find(std::uint32_t serial) {
  auto it = open_.find(serial);
  return it == open_.end() ? nullptr : it->second.get();
}

void StreamTable::release(std::uint32_t serial) {
  if (auto it = open_.find(serial); it != open_.end()) {
    released_.push_back(std::move(it->second));
    open_.erase(it);
  }
  if (reap_posted_) return;
  reap_posted_ = true;
  poster_.post([this] { reap(); });
}

void StreamTable::reap() {
  reap_posted_ = false;
  std::erase_if(released_, [](const std::unique_ptr<Stream>& s) { return s->idle(); });
  if (drained() && on_drained_) on_drained_();
}

std::vector<Stream*> StreamTable::open_streams() const {
  std::vector<Stream*> out;
  out.reserve(open_.size());
  for (const auto& [serial, s] : open_) out.push_back(s.get());
  return out;
}

}  // namespace nbdtunnel::tunnel
