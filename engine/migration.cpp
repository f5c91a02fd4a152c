#include "engine/migration.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <optional>
#include <set>

#include "engine/control_server.hpp"
#include "engine/dest_link.hpp"
#include "engine/dest_run_dir.hpp"
#include "engine/host_identity.hpp"
#include "engine/migration_lock.hpp"
#include "engine/migration_protocol.hpp"
#include "engine/private_dir.hpp"
#include "engine/progress.hpp"
#include "engine/source_names.hpp"
#include "qmp/block_jobs.hpp"
#include "qmp/qmp_client.hpp"
#include "qmp/qmp_error.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using json = nlohmann::json;
using namespace std::chrono_literals;

// An error that ends the migration with an exit code; the first one thrown wins.
struct Failure : std::runtime_error {
  Failure(int c, std::string ph, std::string d, const std::string& msg)
      : std::runtime_error(msg), code(c), phase(std::move(ph)), disk(std::move(d)) {}
  int code;
  std::string phase;
  std::string disk;
};

// One source disk being copied: the nodes and job this run adds to the source QEMU, what of
// them exists now, and the copy's progress.
struct DiskCopy {
  DiskSpec spec;
  std::uint64_t size = 0;
  std::string job_id;
  std::string nbd_node;     // NBD client node on the tunnel socket
  std::string target_node;  // raw view of the NBD node, sized like the source disk
  bool nbd_added = false;
  bool node_added = false;
  bool job_started = false;
  bool job_ended = false;
  bool ready = false;
  std::string error;
  std::uint64_t done = 0, total = 0;
  double rate_bps = 0;
  std::chrono::steady_clock::time_point sampled{};
};

// blockdev-add arguments of a raw node showing the first `size` bytes of `file`. Not a coroutine:
// see "Coroutines under GCC 12" in docs/DESIGN-NOTES.md.
json raw_view_args(const std::string& node, const std::string& file, std::uint64_t size) {
  json args = json::object();
  args["driver"] = "raw";
  args["node-name"] = node;
  args["file"] = file;
  args["size"] = size;
  return args;
}

// One `nbdtunnel migrate` run, from connecting to both sides to leaving them clean.
class MigrationRun {
 public:
  MigrationRun(asio::io_context& io, tunnel::Ring& ring, MigrateOptions o,
               std::unique_ptr<ProgressReporter> reporter)
      : io_(io), ring_(ring), o_(std::move(o)), report_(std::move(reporter)), wake_(io) {
    // Names carry the migration id (engine/source_names.hpp).
    for (std::size_t i = 0; i < o_.disks.size(); ++i) {
      DiskCopy d;
      d.spec = o_.disks[i];
      SourceNames names = source_names(tag_, i);
      d.job_id = std::move(names.job);
      d.nbd_node = std::move(names.nbd_node);
      d.target_node = std::move(names.view_node);
      disks_.push_back(std::move(d));
    }
  }

  awaitable<int> run();
  void request_cancel(const std::string& why) {
    if (cancel_requested_) return;
    cancel_requested_ = true;
    cancel_reason_ = why;
    spdlog::info("cancel requested: {}", why);
    wake();
  }
  // Tears down what is left if run() could not (e.g. its coroutine was interrupted).
  void close_channel() {
    if (link_) link_->close("migration over");
  }
  bool channel_done() const { return !link_ || link_->done(); }

 private:
  awaitable<void> connect_source();
  awaitable<void> lock_source();
  awaitable<void> remove_leftovers();
  awaitable<void> unlock_source();
  // Whether `name` (a job or node named nbdtunnel-*) was left by a dead run: its tag's lock is
  // not held, or it carries no tag (an unknown name, which no live engine gives).
  bool left_by_dead_run(const std::string& name);
  awaitable<void> connect_dest();
  awaitable<bool> run_checks();
  awaitable<void> prepare();
  // A PREPARE body for this migration's disks with `flags`.
  std::vector<std::uint8_t> prepare_body(std::uint32_t flags) const {
    Prepare req;
    req.migration_id = o_.migration_id;
    req.flags = flags;
    for (const DiskCopy& d : disks_) req.disks.push_back({d.spec.dest_node, d.size});
    std::vector<std::uint8_t> body;
    encode_prepare(body, req);
    return body;
  }
  void open_tunnel_socket();
  awaitable<void> start_mirrors();
  awaitable<bool> wait_ready();
  awaitable<bool> wait_finish_command();
  awaitable<void> complete();
  awaitable<void> cleanup();
  awaitable<void> detach(std::string node, bool& added);
  awaitable<CallResult> call(MigrationProc proc, std::vector<std::uint8_t> body,
                             std::chrono::milliseconds timeout);
  awaitable<void> poll_progress();
  awaitable<void> nap(std::chrono::milliseconds d);
  awaitable<json> control(const std::string& command, const json& args);
  void on_qmp_event(const json& event);
  void check_failures(const std::string& phase);
  awaitable<std::string> destination_diagnosis();
  void set_phase(const std::string& p) {
    phase_ = p;
    report_->phase(p);
  }
  // Why `mib` cannot be a limit for these disks ("" when it can): QEMU takes a speed of 0 bytes/s
  // for no limit, so a positive value that rounds to 0 per disk would lift the limit instead.
  std::string bandwidth_problem(double mib) const {
    const double per_disk =
        mib * 1024 * 1024 / static_cast<double>(std::max<std::size_t>(1, disks_.size()));
    if (mib > 0 && per_disk < 1) {
      return fmt::format(
          "{} MiB/s is less than 1 byte/s for each of the {} disk(s), which QEMU would take for no "
          "limit: give 0 for no limit, or at least {:.3g} MiB/s",
          mib, disks_.size(), static_cast<double>(disks_.size()) / (1024 * 1024));
    }
    if (!(per_disk < 9.2e18)) return fmt::format("{} MiB/s is beyond what QEMU takes", mib);
    return "";
  }
  std::uint64_t per_disk_speed() const {
    if (bandwidth_mib_ <= 0 || disks_.empty()) return 0;
    return static_cast<std::uint64_t>(bandwidth_mib_ * 1024 * 1024 /
                                      static_cast<double>(disks_.size()));
  }
  void wake() { wake_.cancel(); }
  DiskCopy* disk_by_job(const std::string& job) {
    for (auto& d : disks_) {
      if (d.job_id == job) return &d;
    }
    return nullptr;
  }

  asio::io_context& io_;
  tunnel::Ring& ring_;
  MigrateOptions o_;
  std::string tag_ = name_tag(o_.migration_id);
  std::unique_ptr<ProgressReporter> report_;
  asio::steady_timer wake_;
  std::vector<DiskCopy> disks_;
  std::string phase_ = "connect";
  double bandwidth_mib_ = 0;

  std::unique_ptr<qmp::QmpClient> src_;
  std::unique_ptr<MigrationLocks> locks_;
  std::unique_ptr<DestLink> link_;
  std::string dest_target_;
  bool prepared_ = false;
  PrivateDir tunnel_dir_;
  std::string tunnel_socket_;
  std::unique_ptr<tunnel::Acceptor> acceptor_;
  std::unique_ptr<ControlServer> control_;

  bool cancel_requested_ = false;
  std::string cancel_reason_;
  bool finish_requested_ = false;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

awaitable<void> MigrationRun::nap(std::chrono::milliseconds d) {
  wake_.expires_after(d);
  co_await wake_.async_wait(asio::as_tuple(use_awaitable));
}

void MigrationRun::on_qmp_event(const json& event) {
  const std::string name = event.value("event", "");
  if (!event.contains("data") || !event["data"].is_object()) return;
  const json& data = event["data"];
  DiskCopy* d = disk_by_job(data.value("device", ""));
  if (d == nullptr) return;
  if (name == "BLOCK_JOB_READY") {
    if (!d->ready) {
      d->ready = true;
      report_->disk_ready(d->spec.node);
    }
  } else if (name == "BLOCK_JOB_COMPLETED" || name == "BLOCK_JOB_CANCELLED") {
    d->job_ended = true;
    if (data.contains("error") && data["error"].is_string()) {
      d->error = data["error"].get<std::string>();
    } else if (name == "BLOCK_JOB_CANCELLED" && !cancel_requested_ && phase_ != "completing") {
      d->error = "the job was cancelled by someone else";
    }
    if (data.contains("offset") && data["offset"].is_number_unsigned()) {
      d->done = data["offset"].get<std::uint64_t>();
    }
  }
  wake();
}

// Throws the first failure a disk or the channel has reported.
void MigrationRun::check_failures(const std::string& phase) {
  if (src_ && !src_->is_connected()) {
    throw Failure(kMigrateFailed, phase, "",
                  fmt::format("lost the QMP connection to the source QEMU ({}): is it still "
                              "running?",
                              o_.source_qmp));
  }
  // A closed channel is the cause of the disks' failures that follow it (their streams end).
  if (link_ && link_->closed()) {
    throw Failure(
        kMigrateFailed, phase, "",
        fmt::format("channel to {} lost: {}", o_.dest.to_string(), link_->close_reason()));
  }
  for (const DiskCopy& d : disks_) {
    if (!d.error.empty()) {
      // The mirror only writes to the target: no space is the destination's.
      const std::string why = d.error.find("No space left on device") != std::string::npos
                                  ? fmt::format(
                                        "the destination disk '{}' is full ({}): free space on the "
                                        "destination host or give it a larger image",
                                        d.spec.dest_node, d.error)
                                  : d.error;
      throw Failure(kMigrateFailed, phase, d.spec.node,
                    fmt::format("mirror of '{}' failed: {}", d.spec.node, why));
    }
    if (d.job_ended && phase != "completing") {
      throw Failure(kMigrateFailed, phase, d.spec.node,
                    fmt::format("mirror of '{}' ended unexpectedly", d.spec.node));
    }
  }
}

// After a disk failed: what the destination daemon says of its QEMU, as a sentence to append
// ("" when all is well there). A mirror whose destination QEMU died reports only an I/O error.
awaitable<std::string> MigrationRun::destination_diagnosis() {
  if (!link_ || !link_->ready()) co_return "";
  CallResult r = co_await call(MigrationProc::prepare, prepare_body(kPrepareCheckOnly), 10s);
  if (r.ok) co_return "";
  co_return "; the destination daemon reports: " + r.error;
}

awaitable<CallResult> MigrationRun::call(MigrationProc proc, std::vector<std::uint8_t> body,
                                         std::chrono::milliseconds timeout) {
  co_return co_await link_->call(procedure_number(proc), std::move(body), timeout);
}

awaitable<void> MigrationRun::connect_source() {
  src_ = std::make_unique<qmp::QmpClient>(io_.get_executor());
  try {
    co_await src_->connect(o_.source_qmp, 10s);
  } catch (const std::exception& e) {
    throw Failure(kMigrateUsage, "connect", "",
                  fmt::format("source QMP {}: {}", o_.source_qmp, e.what()));
  }
  src_->on_event([this](const json& e) { on_qmp_event(e); });
}

// Holds this migration's lock on the source QEMU (engine/migration_lock.hpp), and the guard
// until remove_leftovers is done; a live run of the same id on this QEMU is refused.
awaitable<void> MigrationRun::lock_source() {
  const std::string key = source_qemu_key(src_->peer_pid(), canonical_qmp_path(o_.source_qmp));
  locks_ = std::make_unique<MigrationLocks>(MigrationLocks::default_stem(::geteuid() == 0), key);
  std::string error;
  // Another run holds the guard only while it starts or ends (seconds, with leftovers to cancel).
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    const MigrationLocks::Take t = locks_->try_guard(error);
    if (t == MigrationLocks::Take::taken) break;
    if (t == MigrationLocks::Take::error) {
      throw Failure(kMigrateFailed, "connect", "", "source QEMU lock: " + error);
    }
    if (cancel_requested_) throw Failure(kMigrateCancelled, "connect", "", cancel_reason_);
    if (std::chrono::steady_clock::now() > deadline) {
      throw Failure(kMigrateFailed, "connect", "",
                    fmt::format("another nbdtunnel migrate on the source QEMU ({}) has been "
                                "starting or ending for 60 s: is it stuck?",
                                o_.source_qmp));
    }
    co_await nap(100ms);
  }
  std::vector<std::string> nodes;
  for (const DiskCopy& d : disks_) nodes.push_back(d.spec.node);
  LockHolder holder;
  switch (locks_->take_own(tag_, nodes, holder, error)) {
    case MigrationLocks::Take::taken:
      co_return;
    case MigrationLocks::Take::busy:
      throw Failure(
          kMigrateUsage, "connect", "",
          fmt::format("migration id {} is already running on this source QEMU{}: give "
                      "another --id, or wait for that one to end",
                      o_.migration_id, holder.pid.empty() ? "" : " (pid " + holder.pid + ")"));
    case MigrationLocks::Take::error:
      throw Failure(kMigrateFailed, "connect", "", "source QEMU lock: " + error);
  }
}

// Lets go of this migration's lock, removing its file if the guard comes within 5 s.
awaitable<void> MigrationRun::unlock_source() {
  if (!locks_) co_return;
  locks_->release_guard();
  std::string error;
  bool guarded = false;
  for (int i = 0; i < 50 && !guarded; ++i) {
    const MigrationLocks::Take t = locks_->try_guard(error);
    guarded = t == MigrationLocks::Take::taken;
    if (t == MigrationLocks::Take::error) break;
    if (!guarded) co_await nap(100ms);
  }
  locks_->release_own(guarded);
  locks_->release_guard();
}

bool MigrationRun::left_by_dead_run(const std::string& name) {
  if (!name.starts_with(kSourceNamePrefix)) return false;
  const std::optional<std::string> tag = tag_of_source_name(name);
  if (!tag || *tag == tag_) return true;  // ours: this run holds the lock and has made nothing
  std::string error;
  const std::optional<bool> held = locks_->held(*tag, error);
  if (!held) {
    spdlog::warn("leaving '{}' in the source QEMU: cannot tell whether its migration runs: {}",
                 name, error);
    return false;
  }
  return !*held;
}

// A migration whose engine died (SIGKILL, a crash) leaves its job and nodes in the source QEMU,
// and they would block the next one. A job or node named like ours whose migration's lock no live
// run holds is such a leftover (other engines may be migrating other disks of this QEMU, each on
// a monitor of its own): its jobs are cancelled, then the raw views go, then the NBD nodes under
// them. Runs under the guard, so no run starts meanwhile and no other removes the same names.
awaitable<void> MigrationRun::remove_leftovers() {
  try {
    std::vector<qmp::BlockJobInfo> jobs = co_await qmp::query_block_jobs(*src_);
    std::set<std::string> cancelled;
    for (const auto& j : jobs) {
      if (!left_by_dead_run(j.id)) continue;
      co_await qmp::block_job_cancel(*src_, j.id, true);
      report_->info(fmt::format(
          "cancelled job '{}' in the source QEMU, left by a migration that did not end", j.id));
      cancelled.insert(j.id);
    }
    for (int i = 0; !cancelled.empty() && i < 100; ++i) {
      jobs = co_await qmp::query_block_jobs(*src_);
      const bool waiting = std::any_of(jobs.begin(), jobs.end(), [&](const qmp::BlockJobInfo& j) {
        return cancelled.count(j.id) != 0;
      });
      if (!waiting) break;
      co_await nap(100ms);
    }
    const std::vector<qmp::BlockNodeInfo> nodes = co_await qmp::query_named_block_nodes(*src_);
    for (const char* driver : {"raw", "nbd"}) {
      for (const auto& n : nodes) {
        if (n.driver != driver || !left_by_dead_run(n.node_name)) continue;
        co_await qmp::blockdev_del(*src_, n.node_name);
        report_->info(fmt::format(
            "removed node '{}' from the source QEMU, left by a migration that did not end",
            n.node_name));
      }
    }
    // Dead runs' lock files too (the kernel let go of the locks; the files stay).
    locks_->remove_unheld();
  } catch (const std::exception& e) {
    throw Failure(
        kMigrateFailed, "connect", "",
        fmt::format("source QEMU: removing what an earlier migration left: {}", e.what()));
  }
  locks_->release_guard();
}

awaitable<void> MigrationRun::connect_dest() {
  DestLinkOptions lo;
  lo.dest = o_.dest;
  lo.connect_timeout = o_.connect_timeout;
  lo.channel = o_.channel;
  lo.tls = o_.tls;
  lo.tls_verify_host = o_.tls_verify_host;
  DestLinkEvents events;
  events.on_change = [this] { wake(); };
  events.on_lost = [this](const std::string& reason) { report_->channel_lost(reason); };
  events.on_resumed = [this](double outage) { report_->channel_resumed(outage); };
  link_ = std::make_unique<DestLink>(io_, ring_, std::move(lo), std::move(events));
  try {
    co_await link_->connect();
  } catch (const DestUnreachable& e) {
    throw Failure(kMigrateUsage, "connect", "", e.what());
  }
}

awaitable<bool> MigrationRun::run_checks() {
  set_phase("checks");
  CheckInputs in;
  for (const DiskCopy& d : disks_) in.disks.push_back(d.spec);
  in.destination = o_.dest.to_string();
  in.source_host_id = o_.channel.host_id;
  in.source_qemu_version = src_->qemu_version();
  in.dest_hello = link_->channel()->peer_hello();
  try {
    in.source_nodes = co_await qmp::query_named_block_nodes(*src_);
    in.source_jobs = co_await qmp::query_block_jobs(*src_);
  } catch (const std::exception& e) {
    throw Failure(kMigrateFailed, "checks", "", fmt::format("source QEMU: {}", e.what()));
  }
  // Jobs named after another migration are a live one's: the leftovers are gone.
  for (const auto& j : in.source_jobs) {
    const std::optional<std::string> tag = tag_of_source_name(j.id);
    if (!tag || *tag == tag_) continue;
    in.other_migrations.push_back({j.id, *tag, locks_->holder(*tag)});
  }
  for (DiskCopy& d : disks_) {
    auto size = source_size(in, d.spec.node);
    if (!size) {
      throw Failure(kMigrateUsage, "checks", d.spec.node,
                    fmt::format("unknown disk '{}': no such node in the source QEMU ({})",
                                d.spec.node, o_.source_qmp));
    }
    d.size = *size;
  }
  CallResult r = co_await call(MigrationProc::prepare, prepare_body(kPrepareCheckOnly), 30s);
  if (r.ok) {
    tunnel::Result<PrepareResult> pr = decode_prepare_result(r.body);
    if (!pr) {
      in.dest_error = "bad PREPARE reply: " + pr.error().message;
    } else {
      in.dest = std::move(*pr);
    }
  } else {
    in.dest_error = "destination: " + r.error;
  }
  const std::vector<CheckResult> results = evaluate_checks(in);
  report_->checks(results);
  const bool any_fail = std::any_of(results.begin(), results.end(), [](const CheckResult& c) {
    return c.verdict == CheckResult::Verdict::fail;
  });
  const bool any_warn = std::any_of(results.begin(), results.end(), [](const CheckResult& c) {
    return c.verdict == CheckResult::Verdict::warn;
  });
  if (any_fail) {
    throw Failure(kMigrateChecksFailed, "checks", "", "pre-migration checks failed");
  }
  if (any_warn && !o_.force) {
    throw Failure(kMigrateChecksFailed, "checks", "",
                  "pre-migration checks gave warnings; rerun with --force to go ahead");
  }
  co_return true;
}

awaitable<void> MigrationRun::prepare() {
  set_phase("prepare");
  CallResult r = co_await call(MigrationProc::prepare, prepare_body(0), 60s);
  if (!r.ok) throw Failure(kMigrateFailed, "prepare", "", "destination: " + r.error);
  tunnel::Result<PrepareResult> pr = decode_prepare_result(r.body);
  if (!pr || pr->target.empty()) {
    throw Failure(kMigrateFailed, "prepare", "",
                  "bad PREPARE reply from the destination: " + (pr ? "" : pr.error().message));
  }
  prepared_ = true;
  dest_target_ = pr->target;
}

void MigrationRun::open_tunnel_socket() {
  std::string error;
  if (!tunnel_dir_.create("nbdtunnel-migrate", error)) {
    throw Failure(kMigrateFailed, "prepare", "", error);
  }
  tunnel_socket_ = tunnel_dir_.path() + "/nbd.sock";
  tunnel::Result<tunnel::unique_fd> fd = tunnel::listen_unix(tunnel_socket_, 0600);
  if (!fd) throw Failure(kMigrateFailed, "prepare", "", fd.error().message);
  acceptor_ = std::make_unique<tunnel::Acceptor>(
      ring_, std::move(*fd), [this](tunnel::Result<tunnel::unique_fd> c) {
        if (!c) return;
        if (!link_->ready() || cancel_requested_) return;  // closes *c
        link_->channel()->open_stream(std::move(*c), dest_target_, tunnel_socket_);
      });
  acceptor_->start();
}

awaitable<void> MigrationRun::start_mirrors() {
  set_phase("mirror");
  for (DiskCopy& d : disks_) {
    if (cancel_requested_) co_return;
    try {
      // No reconnect-delay: after cleanup cuts the socket, blockdev-del of the node would block
      // the source QEMU for that long (docs/DESIGN-NOTES.md, "reconnect-delay").
      co_await qmp::blockdev_add_nbd(*src_, d.nbd_node, tunnel_socket_, d.spec.dest_node);
      d.nbd_added = true;
      // blockdev-mirror wants equal sizes: a larger destination is written through a raw view
      // of exactly the source's size, and its tail is left alone.
      json view = raw_view_args(d.target_node, d.nbd_node, d.size);
      co_await src_->execute("blockdev-add", std::move(view));
      d.node_added = true;
      co_await qmp::blockdev_mirror(*src_, d.job_id, d.spec.node, d.target_node,
                                    o_.shallow ? qmp::MirrorSync::top : qmp::MirrorSync::full,
                                    per_disk_speed());
      d.job_started = true;
    } catch (const std::exception& e) {
      throw Failure(kMigrateFailed, "mirror", d.spec.node,
                    fmt::format("starting the mirror of '{}': {}", d.spec.node, e.what()));
    }
  }
}

awaitable<void> MigrationRun::poll_progress() {
  std::vector<qmp::BlockJobInfo> jobs;
  try {
    jobs = co_await qmp::query_block_jobs(*src_);
  } catch (const std::exception& e) {
    spdlog::debug("query-block-jobs: {}", e.what());
    co_return;
  }
  const auto now = std::chrono::steady_clock::now();
  std::vector<DiskProgress> out;
  for (DiskCopy& d : disks_) {
    for (const auto& j : jobs) {
      if (j.id != d.job_id) continue;
      if (d.sampled != std::chrono::steady_clock::time_point{} && j.offset >= d.done) {
        const double dt = std::chrono::duration<double>(now - d.sampled).count();
        if (dt > 0) {
          const double inst = static_cast<double>(j.offset - d.done) / dt;
          d.rate_bps = d.rate_bps == 0 ? inst : 0.7 * d.rate_bps + 0.3 * inst;
        }
      }
      d.done = j.offset;
      d.total = j.len;
      d.sampled = now;
    }
    DiskProgress p;
    p.disk = d.spec.node;
    p.done = d.done;
    p.total = d.total;
    p.rate_bps = d.rate_bps;
    p.ready = d.ready;
    if (d.rate_bps > 1 && d.total >= d.done) {
      p.eta_s = static_cast<double>(d.total - d.done) / d.rate_bps;
    }
    out.push_back(p);
  }
  report_->progress(out);
}

awaitable<bool> MigrationRun::wait_ready() {
  for (;;) {
    if (cancel_requested_) co_return false;
    check_failures("mirror");
    if (std::all_of(disks_.begin(), disks_.end(), [](const DiskCopy& d) { return d.ready; })) {
      co_await poll_progress();
      co_return true;
    }
    co_await poll_progress();
    co_await nap(250ms);
  }
}

awaitable<bool> MigrationRun::wait_finish_command() {
  set_phase("ready");
  report_->ready();
  report_->info(control_ ? fmt::format("disks are in sync; send \"finish\" or \"cancel\" on {}",
                                       o_.control_socket)
                         : "disks are in sync; press Ctrl-C to cancel");
  while (!finish_requested_) {
    if (cancel_requested_) co_return false;
    check_failures("ready");
    co_await poll_progress();
    co_await nap(500ms);
  }
  co_return true;
}

awaitable<void> MigrationRun::complete() {
  set_phase("completing");
  for (DiskCopy& d : disks_) {
    try {
      co_await qmp::block_job_cancel(*src_, d.job_id, false);
    } catch (const std::exception& e) {
      throw Failure(kMigrateFailed, "completing", d.spec.node,
                    fmt::format("completing the mirror of '{}': {}", d.spec.node, e.what()));
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (
      !std::all_of(disks_.begin(), disks_.end(), [](const DiskCopy& d) { return d.job_ended; })) {
    check_failures("completing");
    if (std::chrono::steady_clock::now() > deadline) {
      throw Failure(kMigrateFailed, "completing", "", "mirror jobs did not complete in 120 s");
    }
    co_await nap(100ms);
  }
  check_failures("completing");
  for (DiskCopy& d : disks_) {
    d.job_started = false;
    report_->disk_completed(d.spec.node);
  }
  set_phase("finishing");
  for (DiskCopy& d : disks_) {
    try {
      co_await qmp::blockdev_del(*src_, d.target_node);
      d.node_added = false;
      co_await qmp::blockdev_del(*src_, d.nbd_node);
      d.nbd_added = false;
    } catch (const std::exception& e) {
      throw Failure(kMigrateFailed, "finishing", d.spec.node,
                    fmt::format("detaching the target of '{}': {}", d.spec.node, e.what()));
    }
  }
  std::vector<std::uint8_t> body;
  encode_finish(body, Finish{o_.migration_id, 0});
  CallResult r = co_await call(MigrationProc::finish, std::move(body), 60s);
  if (!r.ok) throw Failure(kMigrateFailed, "finishing", "", "destination FINISH: " + r.error);
  prepared_ = false;
}

// Removes a node this migration added to the source QEMU; a failure is only logged.
awaitable<void> MigrationRun::detach(std::string node, bool& added) {
  if (!added) co_return;
  try {
    co_await qmp::blockdev_del(*src_, node);
    added = false;
  } catch (const std::exception& e) {
    spdlog::warn("cleanup: detaching node {}: {}", node, e.what());
  }
}

// Leaves both hosts clean: tunnel sockets first, then the jobs, the nodes, the exports.
awaitable<void> MigrationRun::cleanup() {
  if (acceptor_) acceptor_->stop();
  if (link_ && link_->ready()) link_->channel()->abort_streams("migration cancelled");
  if (src_ && src_->is_connected()) {
    for (DiskCopy& d : disks_) {
      if (!d.job_started || d.job_ended) continue;
      try {
        co_await qmp::block_job_cancel(*src_, d.job_id, true);
      } catch (const std::exception& e) {
        spdlog::warn("cleanup: cancelling job {}: {}", d.job_id, e.what());
      }
    }
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline &&
           std::any_of(disks_.begin(), disks_.end(),
                       [](const DiskCopy& d) { return d.job_started && !d.job_ended; })) {
      co_await nap(100ms);
    }
    for (DiskCopy& d : disks_) {
      co_await detach(d.target_node, d.node_added);
      co_await detach(d.nbd_node, d.nbd_added);
    }
  }
  if (prepared_ && link_ && link_->ready()) {
    std::vector<std::uint8_t> body;
    encode_finish(body, Finish{o_.migration_id, kFinishAbort});
    CallResult r = co_await call(MigrationProc::finish, std::move(body), 30s);
    if (!r.ok) spdlog::warn("cleanup: destination FINISH (abort): {}", r.error);
    prepared_ = false;
  }
}

awaitable<json> MigrationRun::control(const std::string& command, const json& args) {
  if (command == "query-migration") {
    std::vector<DiskProgress> rows;
    for (const DiskCopy& d : disks_) {
      DiskProgress p;
      p.disk = d.spec.node;
      p.done = d.done;
      p.total = d.total;
      p.ready = d.ready;
      rows.push_back(p);
    }
    co_return query_migration_reply(phase_, o_.migration_id, bandwidth_mib_, rows);
  }
  if (command == "set-bandwidth") {
    if (!args.contains("mib-per-sec") || !args["mib-per-sec"].is_number() ||
        args["mib-per-sec"].get<double>() < 0) {
      throw ControlError("GenericError", "set-bandwidth needs \"mib-per-sec\": a number >= 0");
    }
    if (const std::string why = bandwidth_problem(args["mib-per-sec"].get<double>());
        !why.empty()) {
      throw ControlError("GenericError", "set-bandwidth: " + why);
    }
    bandwidth_mib_ = args["mib-per-sec"].get<double>();
    for (DiskCopy& d : disks_) {
      if (d.job_started && !d.job_ended) {
        co_await qmp::block_job_set_speed(*src_, d.job_id, per_disk_speed());
      }
    }
    report_->info(fmt::format("bandwidth set to {} MiB/s", bandwidth_mib_));
    co_return json::object();
  }
  if (command == "cancel") {
    request_cancel("cancel command on the control socket");
    co_return json::object();
  }
  if (command == "finish") {
    if (!o_.finish_sync) {
      throw ControlError("GenericError", "finish applies only to --finish sync migrations");
    }
    if (phase_ != "ready") {
      throw ControlError("GenericError",
                         fmt::format("the disks are not in sync yet (phase '{}')", phase_));
    }
    finish_requested_ = true;
    wake();
    co_return json::object();
  }
  throw ControlError("CommandNotFound", fmt::format("unknown command '{}'", command));
}

awaitable<int> MigrationRun::run() {
  bandwidth_mib_ = o_.bandwidth_mib;
  int code = kMigrateDone;
  std::string result = "completed";
  std::optional<Failure> failure;
  try {
    if (const std::string why = bandwidth_problem(bandwidth_mib_); !why.empty()) {
      throw Failure(kMigrateUsage, "connect", "", "--bandwidth: " + why);
    }
    if (!o_.control_socket.empty()) {
      control_ = std::make_unique<ControlServer>(
          io_.get_executor(), o_.control_socket,
          [this](const std::string& c, const json& a) { return control(c, a); });
      try {
        control_->start();
      } catch (const std::exception& e) {
        throw Failure(kMigrateUsage, "connect", "", e.what());
      }
    }
    co_await connect_source();
    co_await lock_source();
    co_await remove_leftovers();
    co_await connect_dest();
    co_await run_checks();
    if (o_.check_only) {
      report_->summary("checked", 0, 0);
      co_await unlock_source();
      co_return kMigrateDone;
    }
    if (cancel_requested_) throw Failure(kMigrateCancelled, phase_, "", cancel_reason_);
    co_await prepare();
    open_tunnel_socket();
    co_await start_mirrors();
    if (!co_await wait_ready()) throw Failure(kMigrateCancelled, phase_, "", cancel_reason_);
    if (o_.finish_sync) {
      if (!co_await wait_finish_command()) {
        throw Failure(kMigrateCancelled, phase_, "", cancel_reason_);
      }
    }
    co_await complete();
  } catch (const Failure& f) {
    failure.emplace(f);
  } catch (const std::exception& e) {
    failure.emplace(kMigrateFailed, phase_, "", e.what());
  }
  if (locks_) locks_->release_guard();  // if remove_leftovers failed
  if (failure) {
    code = failure->code;
    result = code == kMigrateCancelled ? "cancelled" : "failed";
    std::string message = failure->what();
    if (code == kMigrateCancelled) {
      message = "cancelled: " + message;
    } else if (!failure->disk.empty()) {
      message += co_await destination_diagnosis();
    }
    report_->error(failure->phase, failure->disk, message);
  }
  if (code != kMigrateDone) {
    set_phase("cancelling");
    co_await cleanup();
  }
  std::uint64_t bytes = 0;
  for (const DiskCopy& d : disks_) bytes += d.done;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  set_phase("done");
  report_->summary(result, bytes, seconds);
  co_await unlock_source();
  if (control_) control_->stop();
  if (acceptor_) acceptor_->stop();
  if (src_) src_->close();
  close_channel();
  co_return code;
}

}  // namespace

std::string new_migration_id() {
  return fmt::format("{:x}{:x}", static_cast<unsigned>(::getpid()),
                     static_cast<unsigned>(
                         std::chrono::steady_clock::now().time_since_epoch().count() & 0xffffff));
}

int run_migration(MigrateOptions options) {
  // This thread's loop: the ring waits in io_uring_enter and runs Asio's handlers (QMP, the
  // control socket, timers, signals) from there (Ring::Driver::self, as the daemon's threads do).
  asio::io_context io{1};
  std::unique_ptr<tunnel::Ring> ring;
  try {
    ring = std::make_unique<tunnel::Ring>(io, 1024, tunnel::Ring::Driver::self);
  } catch (const std::exception& e) {
    spdlog::error("cannot set up io_uring: {}", e.what());
    return kMigrateFailed;
  }
  if (options.migration_id.empty()) options.migration_id = new_migration_id();
  std::FILE* out = stdout;
  auto reporter = ProgressReporter::make(options.json, out, ::isatty(::fileno(out)) != 0);
  MigrationRun m(io, *ring, std::move(options), std::move(reporter));

  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        m.request_cancel(sig == SIGINT ? "SIGINT" : "SIGTERM");
        signals.async_wait(on_signal);
      };
  signals.async_wait(on_signal);

  std::optional<int> code;
  asio::co_spawn(io, m.run(), [&](std::exception_ptr e, int rc) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("migration aborted: {}", ex.what());
      }
      rc = kMigrateFailed;
    }
    code = rc;
  });
  while (!code) ring->run_once(200ms);
  signals.cancel();
  // Let the channel and the ring finish their I/O (bounded).
  m.close_channel();
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while ((!m.channel_done() || ring->in_flight() > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    ring->run_once(100ms);
  }
  std::fflush(stdout);
  return *code;
}

}  // namespace nbdtunnel::engine
