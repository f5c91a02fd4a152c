#pragma once
// The streams of one channel: serials, the rules for opening one, lookup by serial, and reaping.
// A stream that has closed leaves the table at once (its serial no longer finds it) and is
// destroyed after the current completion batch, once none of its operations, posted work or
// lent buffers is outstanding.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "tunnel/poster.hpp"
#include "tunnel/result.hpp"
#include "tunnel/stream.hpp"

namespace nbdtunnel::tunnel {

class StreamTable {
 public:
  StreamTable(Poster& poster, std::size_t max_streams);
  StreamTable(const StreamTable&) = delete;
  StreamTable& operator=(const StreamTable&) = delete;

  // Initiator: the serial for a new call or stream (they share the serial space, as in libvirt).
  std::uint32_t next_serial();
  // Responder: whether the peer may open a stream on serial now. Serials must grow (a serial is
  // never reused) and at most max_streams may be open at once.
  Status admit(std::uint32_t serial);
  // Whether this side may open another stream now.
  bool full() const { return open_.size() >= max_streams_; }
  Stream& add(std::unique_ptr<Stream> stream);
  Stream* find(std::uint32_t serial);
  // A serial this channel used for a stream, now closed or not: packets for it may still be in
  // flight and are dropped quietly.
  bool used(std::uint32_t serial) const { return serial != 0 && serial <= highest_serial_; }

  // The stream has closed (or an operation of a closed stream finished): take it out of the
  // table and reap it once idle. Idempotent.
  void release(std::uint32_t serial);
  // Streams still in the table, in serial order (a copy: the caller may release them).
  std::vector<Stream*> open_streams() const;
  std::size_t size() const { return open_.size(); }
  // Nothing open and nothing left to reap.
  bool drained() const { return open_.empty() && released_.empty(); }
  // Called once every released stream is destroyed, if the table is empty then.
  void on_drained(std::function<void()> f) { on_drained_ = std::move(f); }

 private:
  void reap();

  Poster& poster_;
  const std::size_t max_streams_;
  std::uint32_t highest_serial_ = 0;
  std::map<std::uint32_t, std::unique_ptr<Stream>> open_;
  std::vector<std::unique_ptr<Stream>> released_;
  bool reap_posted_ = false;
  std::function<void()> on_drained_;
};

}  // namespace nbdtunnel::tunnel
