#include "engine/libvirt_migration.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "engine/control_server.hpp"
#include "engine/domain_xml.hpp"
#include "engine/libvirt_api.hpp"
#include "engine/libvirt_checks.hpp"
#include "engine/migration.hpp"
#include "engine/migration_protocol.hpp"
#include "engine/progress.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

namespace {

namespace asio = boost::asio;
using json = nlohmann::json;
using namespace std::chrono_literals;

// An error that ends the migration with an exit code; the first one thrown wins.
struct Failure : std::runtime_error {
  Failure(int c, std::string ph, const std::string& msg)
      : std::runtime_error(msg), code(c), phase(std::move(ph)) {}
  int code;
  std::string phase;
};

// The sockets of a run directory: the name of each in RUN_DIR/<id>/ and the target it reaches.
constexpr const char* kLibvirtSocket = "libvirt";
constexpr const char* kMemorySocket = "memory";
constexpr const char* kNbdSocket = "nbd";

// One disk to copy, and its progress.
struct DiskRow {
  LibvirtDiskFacts facts;
  DiskProgress progress;
  std::chrono::steady_clock::time_point sampled{};
};

// Exponentially smoothed rate from two samples of a byte counter.
void sample(DiskProgress& p, std::uint64_t done, std::uint64_t total,
            std::chrono::steady_clock::time_point& sampled) {
  const auto now = std::chrono::steady_clock::now();
  if (sampled != std::chrono::steady_clock::time_point{} && done >= p.done) {
    const double dt = std::chrono::duration<double>(now - sampled).count();
    if (dt > 0) {
      const double inst = static_cast<double>(done - p.done) / dt;
      p.rate_bps = p.rate_bps == 0 ? inst : 0.7 * p.rate_bps + 0.3 * inst;
    }
  }
  p.done = done;
  p.total = total;
  sampled = now;
  p.eta_s.reset();
  if (p.rate_bps > 1 && total >= done) p.eta_s = static_cast<double>(total - done) / p.rate_bps;
}

class LibvirtRun {
 public:
  LibvirtRun(LibvirtMigrateOptions o, std::unique_ptr<ProgressReporter> report)
      : o_(std::move(o)), report_(std::move(report)) {}
  ~LibvirtRun() { stop_io(); }

  int run();

 private:
  // The io thread: the channel, the run directory's listeners, the control socket, signals.
  void start_io();
  void stop_io();
  template <class T>
  T on_io(asio::awaitable<T> work) {
    return asio::co_spawn(io_, std::move(work), asio::use_future).get();
  }
  void on_io(std::function<void()> fn) {
    std::promise<void> done;
    asio::post(io_, [&] {
      fn();
      done.set_value();
    });
    done.get_future().get();
  }

  void connect();
  void open_sockets();
  void run_checks();
  void prepare();
  void perform();
  void watch(std::future<std::string>& performed);
  void poll_progress();
  void cleanup(bool failed);
  CallResult call(MigrationProc proc, const std::vector<std::uint8_t>& body,
                  std::chrono::milliseconds timeout);
  std::vector<LibvirtDiskFacts> list_disks(LibvirtCheckInputs& in);
  asio::awaitable<json> control(const std::string& command, const json& args);
  void set_phase(const std::string& p) {
    if (phase_ == p) return;
    {
      std::lock_guard lock(mu_);
      phase_ = p;
    }
    report_->phase(p);
  }
  void request_cancel(const std::string& why) {
    std::lock_guard lock(mu_);
    if (cancel_) return;
    cancel_reason_ = why;
    cancel_ = true;
  }

  LibvirtMigrateOptions o_;
  std::unique_ptr<ProgressReporter> report_;
  // The io thread's loop: the ring waits in io_uring_enter and runs Asio's handlers from there
  // (Ring::Driver::self, as the daemon's threads do), until io_stopped_.
  asio::io_context io_{1};
  std::unique_ptr<tunnel::Ring> ring_;
  std::thread io_thread_;
  bool io_stopped_ = false;  // io thread only
  std::unique_ptr<asio::signal_set> signals_;

  std::unique_ptr<DestLink> link_;  // io thread only
  std::atomic<bool> link_lost_{false};
  RunDir run_dir_;
  std::vector<std::unique_ptr<tunnel::Acceptor>> acceptors_;  // io thread only
  std::string target_prefix_;  // the destination's "migration/<id>/", set by prepare()
  std::atomic<bool> prepared_{false};
  std::unique_ptr<ControlServer> control_;

  std::unique_ptr<libvirt::Connection> src_;
  std::unique_ptr<libvirt::Connection> dst_;  // through the channel
  std::shared_ptr<libvirt::Domain> dom_;
  std::vector<DiskRow> disks_;
  DiskRow memory_;

  std::mutex mu_;  // guards what the io thread reads or sets: phase_, cancel_*, rows_
  std::string phase_ = "connect";
  std::atomic<bool> cancel_{false};
  std::string cancel_reason_;
  std::vector<DiskProgress> rows_;  // the latest progress, for query-migration
  std::vector<std::function<void(ProgressReporter&)>> link_news_;  // lost / resumed, to report
  std::string link_reason_;                                        // why the channel closed
  bool rows_fresh_ = false;                                        // rows_ not reported yet
  bool memory_moving_ = false;
  double bandwidth_mib_ = 0;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

void LibvirtRun::start_io() {
  ring_ = std::make_unique<tunnel::Ring>(io_, 1024, tunnel::Ring::Driver::self);
  signals_ = std::make_unique<asio::signal_set>(io_, SIGINT, SIGTERM);
  signals_->async_wait([this](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    request_cancel(sig == SIGINT ? "SIGINT" : "SIGTERM");
    // A second signal while cleaning up is answered the same way: cleanup is bounded.
    signals_->async_wait([this](const boost::system::error_code& e2, int s2) {
      if (!e2) request_cancel(s2 == SIGINT ? "SIGINT" : "SIGTERM");
    });
  });
  io_thread_ = std::thread([this] {
    while (!io_stopped_) ring_->run_once(200ms);
  });
}

void LibvirtRun::stop_io() {
  if (!io_thread_.joinable()) return;
  asio::post(io_, [this] {
    if (control_) control_->stop();
    for (auto& a : acceptors_) a->stop();
    if (signals_) signals_->cancel();
    if (link_) link_->close("migration over");
  });
  // Let the channel and the ring finish their I/O (bounded), then stop.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    std::promise<bool> idle;
    asio::post(io_, [&] { idle.set_value((!link_ || link_->done()) && ring_->in_flight() == 0); });
    if (idle.get_future().get() || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(20ms);
  }
  asio::post(io_, [this] { io_stopped_ = true; });
  io_thread_.join();
}

CallResult LibvirtRun::call(MigrationProc proc, const std::vector<std::uint8_t>& body,
                            std::chrono::milliseconds timeout) {
  std::vector<std::uint8_t> copy = body;
  return on_io(link_->call(procedure_number(proc), std::move(copy), timeout));
}

void LibvirtRun::connect() {
  set_phase("connect");
  try {
    src_ = std::make_unique<libvirt::Connection>(o_.connect_uri);
  } catch (const libvirt::Error& e) {
    throw Failure(kMigrateUsage, "connect", fmt::format("source libvirt: {}", e.what()));
  }
  DestLinkEvents events;
  events.on_change = [this] {
    if (!link_->closed()) return;
    {
      std::lock_guard lock(mu_);
      link_reason_ = link_->close_reason();
    }
    link_lost_ = true;
  };
  // The reporter belongs to this thread: the io thread leaves the news for watch().
  events.on_lost = [this](const std::string& reason) {
    std::lock_guard lock(mu_);
    link_news_.push_back([reason](ProgressReporter& r) { r.channel_lost(reason); });
  };
  events.on_resumed = [this](double outage) {
    std::lock_guard lock(mu_);
    link_news_.push_back([outage](ProgressReporter& r) { r.channel_resumed(outage); });
  };
  link_ = std::make_unique<DestLink>(io_, *ring_, o_.link, std::move(events));
  try {
    on_io(link_->connect());
  } catch (const DestUnreachable& e) {
    throw Failure(kMigrateUsage, "connect", e.what());
  }
  open_sockets();
}

// RUN_DIR/<id>/ on this host with a listener per socket; each connection becomes a stream to the
// destination's socket of the same name.
void LibvirtRun::open_sockets() {
  // Directories of runs that were killed: no live process holds them.
  RunDir::remove_abandoned(o_.run_dir);
  std::string error;
  if (!run_dir_.create(o_.run_dir, o_.migration_id, o_.owner, error)) {
    throw Failure(kMigrateFailed, "connect", error);
  }
  std::string failure;
  on_io([&] {
    for (const char* name : {kLibvirtSocket, kMemorySocket, kNbdSocket}) {
      const std::string path = run_dir_.socket(name);
      tunnel::Result<tunnel::unique_fd> fd = tunnel::listen_unix(path, 0600);
      if (!fd) {
        failure = fd.error().message;
        return;
      }
      run_dir_.hand_over(path);
      const std::string kind = name;
      auto acceptor = std::make_unique<tunnel::Acceptor>(
          *ring_, std::move(*fd), [this, kind, path](tunnel::Result<tunnel::unique_fd> c) {
            spdlog::debug("{}: connection accepted ({})", path,
                          c ? "ok" : c.error().code.message());
            if (!c || !link_->ready() || cancel_) return;  // closes *c
            // The destination libvirtd is reachable at once; the rest once prepared.
            const std::string target =
                kind == kLibvirtSocket ? std::string(kLibvirtSocket) : target_prefix_ + kind;
            if (kind != kLibvirtSocket && !prepared_) return;
            link_->channel()->open_stream(std::move(*c), target, path);
          });
      acceptor->start();
      acceptors_.push_back(std::move(acceptor));
    }
  });
  if (!failure.empty()) throw Failure(kMigrateFailed, "connect", failure);
}

std::vector<LibvirtDiskFacts> LibvirtRun::list_disks(LibvirtCheckInputs& in) {
  std::vector<LibvirtDiskFacts> out;
  tunnel::Result<std::vector<DomainDisk>> disks = parse_domain_disks(dom_->xml());
  if (!disks) {
    in.disks_error = disks.error().message;
    return out;
  }
  std::map<std::string, std::string> dest_paths;
  if (!o_.dest_xml.empty()) {
    tunnel::Result<std::vector<DomainDisk>> dest = parse_domain_disks(o_.dest_xml);
    if (!dest) {
      in.disks_error = "--xml: " + dest.error().message;
      return out;
    }
    for (const DomainDisk& d : *dest) dest_paths[d.target] = d.source;
  }
  for (const std::string& wanted : o_.migrate_disks) {
    if (std::none_of(disks->begin(), disks->end(),
                     [&](const DomainDisk& d) { return d.target == wanted; })) {
      in.disks_error = fmt::format("--migrate-disks: the domain has no disk '{}'", wanted);
      return out;
    }
  }
  for (const DomainDisk& d : *disks) {
    const bool wanted = o_.migrate_disks.empty()
                            ? d.device == "disk" && !d.readonly && !d.shareable
                            : std::find(o_.migrate_disks.begin(), o_.migrate_disks.end(),
                                        d.target) != o_.migrate_disks.end();
    if (!wanted) continue;
    if (d.source.empty() || (d.type != "file" && d.type != "block")) {
      in.disks_error = fmt::format("disk {} is a {} disk: only file and block disks can be copied",
                                   d.target, d.type);
      return out;
    }
    LibvirtDiskFacts f;
    f.target = d.target;
    f.source_path = d.source;
    auto it = dest_paths.find(d.target);
    f.dest_path = it != dest_paths.end() && !it->second.empty() ? it->second : d.source;
    f.size = dom_->disk_capacity(d.target);
    out.push_back(std::move(f));
  }
  if (out.empty() && in.disks_error.empty()) {
    in.disks_error = "the domain has no writable file or block disk to copy";
  }
  if (out.size() > kMaxDisks) {
    in.disks_error = fmt::format("{} disks: at most {} per migration", out.size(), kMaxDisks);
    out.clear();
  }
  return out;
}

// Facts of one libvirt host; errors are recorded, not thrown.
LibvirtHostFacts host_facts(const libvirt::Connection& c) {
  LibvirtHostFacts f;
  try {
    f.libvirt_version = c.lib_version();
    f.hypervisor = c.type();
    f.hypervisor_version = c.hypervisor_version();
    f.hostname = c.hostname();
    tunnel::Result<std::string> uuid = parse_host_uuid(c.capabilities());
    if (!uuid) {
      f.error = uuid.error().message;
    } else {
      f.host_uuid = *uuid;
    }
  } catch (const libvirt::Error& e) {
    f.error = e.what();
  }
  return f;
}

void LibvirtRun::run_checks() {
  set_phase("checks");
  LibvirtCheckInputs in;
  in.destination = o_.link.dest.to_string();
  in.domain = o_.domain;
  in.p2p = o_.p2p;
  in.source = host_facts(*src_);
  try {
    dst_ = std::make_unique<libvirt::Connection>("qemu+unix:///system?socket=" +
                                                 run_dir_.socket(kLibvirtSocket));
    in.dest = host_facts(*dst_);
    in.dest_name = o_.dname.empty() ? o_.domain : o_.dname;
    try {
      libvirt::Domain there(*dst_, in.dest_name);
      in.dest_name_taken = true;
    } catch (const libvirt::Error&) {
      // none: as it should be
    }
  } catch (const libvirt::Error& e) {
    in.dest.error =
        fmt::format("the destination libvirtd did not answer through the channel: {}", e.what());
  }
  try {
    dom_ = std::make_shared<libvirt::Domain>(*src_, o_.domain);
    in.domain_found = true;
    in.domain_running = dom_->state() == VIR_DOMAIN_RUNNING;
    in.domain_job_active = dom_->job_stats().type != VIR_DOMAIN_JOB_NONE;
    in.disks = list_disks(in);
  } catch (const libvirt::Error& e) {
    if (!in.domain_found) {
      in.domain_error = e.what();
    } else {
      in.disks_error = e.what();
    }
  }
  if (!in.disks.empty()) {
    Prepare req;
    req.migration_id = o_.migration_id;
    req.flags = kPrepareCheckOnly;
    for (const auto& d : in.disks) req.disks.push_back({d.dest_path, d.size});
    std::vector<std::uint8_t> body;
    encode_prepare(body, req);
    CallResult r = call(MigrationProc::libvirt_prepare, body, 30s);
    tunnel::Result<PrepareResult> pr =
        r.ok ? decode_prepare_result(r.body) : tunnel::input_error(r.error);
    if (!pr) {
      in.dest_error = "destination: " + pr.error().message;
    } else {
      for (std::size_t i = 0; i < in.disks.size() && i < pr->disks.size(); ++i) {
        in.disks[i].dest = pr->disks[i];
      }
    }
  }
  for (const auto& d : in.disks) {
    DiskRow row;
    row.facts = d;
    row.progress.disk = d.target;
    row.progress.total = d.size;
    disks_.push_back(row);
  }
  memory_.progress.disk = "memory";
  const std::vector<CheckResult> results = evaluate_libvirt_checks(in);
  report_->checks(results);
  auto has = [&](CheckResult::Verdict v) {
    return std::any_of(results.begin(), results.end(),
                       [v](const CheckResult& c) { return c.verdict == v; });
  };
  if (has(CheckResult::Verdict::fail)) {
    throw Failure(kMigrateChecksFailed, "checks", "pre-migration checks failed");
  }
  if (has(CheckResult::Verdict::warn) && !o_.force) {
    throw Failure(kMigrateChecksFailed, "checks",
                  "pre-migration checks gave warnings; rerun with --force to go ahead");
  }
}

void LibvirtRun::prepare() {
  set_phase("prepare");
  Prepare req;
  req.migration_id = o_.migration_id;
  for (const DiskRow& d : disks_) req.disks.push_back({d.facts.dest_path, d.facts.size});
  std::vector<std::uint8_t> body;
  encode_prepare(body, req);
  CallResult r = call(MigrationProc::libvirt_prepare, body, 30s);
  if (!r.ok) throw Failure(kMigrateFailed, "prepare", "destination: " + r.error);
  tunnel::Result<PrepareResult> pr = decode_prepare_result(r.body);
  if (!pr || pr->target.empty()) {
    throw Failure(kMigrateFailed, "prepare", "bad LIBVIRT_PREPARE reply from the destination");
  }
  on_io([&] { target_prefix_ = pr->target; });
  prepared_ = true;
}

// One sample of libvirt's job statistics into the progress rows, which the main thread reports.
// On a thread of its own: libvirt may answer late while the migration holds the domain.
void LibvirtRun::poll_progress() {
  libvirt::JobStats s;
  try {
    s = dom_->job_stats();
  } catch (const libvirt::Error& e) {
    spdlog::debug("{}", e.what());
    return;
  }
  std::vector<DiskProgress> rows;
  if (s.disk_total && *s.disk_total > 0) {
    // libvirt counts all disks together (and copies them at once): each row shows its share of
    // that count, by size.
    const double fraction = std::min(1.0, static_cast<double>(s.disk_processed.value_or(0)) /
                                              static_cast<double>(*s.disk_total));
    for (DiskRow& d : disks_) {
      const auto done = static_cast<std::uint64_t>(fraction * static_cast<double>(d.facts.size));
      sample(d.progress, done, d.facts.size, d.sampled);
      d.progress.ready = done >= d.facts.size;
    }
  }
  for (const DiskRow& d : disks_) rows.push_back(d.progress);
  bool memory_moving = false;
  if (s.memory_total && *s.memory_total > 0) {
    sample(memory_.progress, s.memory_processed.value_or(0), *s.memory_total, memory_.sampled);
    if (s.memory_bps && *s.memory_bps > 0) {
      memory_.progress.rate_bps = static_cast<double>(*s.memory_bps);
    }
    rows.push_back(memory_.progress);
    memory_moving = memory_.progress.done > 0;
  }
  std::lock_guard lock(mu_);
  rows_ = std::move(rows);
  rows_fresh_ = true;
  memory_moving_ = memory_moving;
}

// virDomainMigrate3 (direct) or virDomainMigrateToURI3 (--p2p), on a thread of its own: it
// blocks for the whole migration. Returns libvirt's error, "" on success.
void LibvirtRun::perform() {
  set_phase("mirror");
  auto params = std::make_shared<libvirt::TypedParams>();
  params->add(VIR_MIGRATE_PARAM_URI, "unix://" + run_dir_.socket(kMemorySocket));
  params->add(VIR_MIGRATE_PARAM_DISKS_URI, "unix://" + run_dir_.socket(kNbdSocket));
  for (const DiskRow& d : disks_) params->add(VIR_MIGRATE_PARAM_MIGRATE_DISKS, d.facts.target);
  if (o_.bandwidth_mib > 0) {
    params->add(VIR_MIGRATE_PARAM_BANDWIDTH,
                static_cast<unsigned long long>(std::max(1.0, o_.bandwidth_mib)));
  }
  if (o_.parallel > 0) {
    params->add(VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS, static_cast<int>(o_.parallel));
  }
  if (!o_.dest_xml.empty()) params->add(VIR_MIGRATE_PARAM_DEST_XML, o_.dest_xml);
  if (!o_.dname.empty()) params->add(VIR_MIGRATE_PARAM_DEST_NAME, o_.dname);
  unsigned flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_ABORT_ON_ERROR |
                   (o_.shallow ? VIR_MIGRATE_NON_SHARED_INC : VIR_MIGRATE_NON_SHARED_DISK);
  if (o_.p2p) flags |= VIR_MIGRATE_PEER2PEER;
  if (o_.parallel > 0) flags |= VIR_MIGRATE_PARALLEL;
  if (o_.compressed) flags |= VIR_MIGRATE_COMPRESSED;
  if (o_.persistent) flags |= VIR_MIGRATE_PERSIST_DEST;
  if (o_.undefine_source) flags |= VIR_MIGRATE_UNDEFINE_SOURCE;
  const std::string dconnuri = "qemu+unix:///system?socket=" + run_dir_.socket(kLibvirtSocket);
  std::shared_ptr<libvirt::Domain> dom = dom_;
  virConnectPtr dconn = dst_->get();
  const bool p2p = o_.p2p;
  std::future<std::string> performed =
      std::async(std::launch::async, [params, dom, dconn, dconnuri, flags, p2p]() -> std::string {
        if (p2p) {
          if (virDomainMigrateToURI3(dom->get(), dconnuri.c_str(), params->data(),
                                     static_cast<unsigned>(params->size()), flags) == 0) {
            return "";
          }
          return libvirt::last_error();
        }
        virDomainPtr moved = virDomainMigrate3(dom->get(), dconn, params->data(),
                                               static_cast<unsigned>(params->size()), flags);
        if (moved == nullptr) return libvirt::last_error();
        virDomainFree(moved);
        return "";
      });
  watch(performed);
}

// Reports progress until the migration call returns; turns a cancel or a lost channel into
// virDomainAbortJob (the source keeps running).
void LibvirtRun::watch(std::future<std::string>& performed) {
  std::atomic<bool> done{false};
  std::thread poller([this, &done] {
    while (!done) {
      poll_progress();
      for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(50ms);
    }
  });
  struct Join {
    std::atomic<bool>& done;
    std::thread& t;
    ~Join() {
      done = true;
      t.join();
    }
  } join{done, poller};
  bool aborted = false, abort_taken = false;
  auto next_abort = std::chrono::steady_clock::now();
  std::string abort_reason;
  int abort_code = kMigrateFailed;
  while (performed.wait_for(100ms) != std::future_status::ready) {
    std::vector<DiskProgress> rows;
    bool memory = false;
    std::vector<std::function<void(ProgressReporter&)>> news;
    {
      std::lock_guard lock(mu_);
      if (rows_fresh_) rows = rows_;
      rows_fresh_ = false;
      memory = memory_moving_;
      news.swap(link_news_);
    }
    for (auto& n : news) n(*report_);
    if (memory) set_phase("memory");
    if (!rows.empty()) report_->progress(rows);
    std::string why;
    int code = kMigrateFailed;
    if (cancel_) {
      std::lock_guard lock(mu_);
      why = cancel_reason_;
      code = kMigrateCancelled;
    } else if (link_lost_) {
      std::lock_guard lock(mu_);
      why = fmt::format("channel to {} lost: {}", o_.link.dest.to_string(), link_reason_);
    }
    // Until libvirt takes the abort: between two of its phases there is no job to abort (and
    // the run directory's listeners refuse new connections meanwhile, so the next phase fails).
    const auto now = std::chrono::steady_clock::now();
    if (!why.empty() && !abort_taken && now >= next_abort) {
      if (!aborted) spdlog::info("aborting the migration job: {}", why);
      aborted = true;
      abort_reason = why;
      abort_code = code;
      next_abort = now + 1s;
      try {
        dom_->abort_job();
        abort_taken = true;
      } catch (const libvirt::Error& e) {
        spdlog::debug("{}", e.what());
      }
    }
  }
  const std::string error = performed.get();
  if (aborted) {
    throw Failure(abort_code, phase_,
                  abort_code == kMigrateCancelled ? abort_reason
                                                  : abort_reason + " (libvirt: " + error + ")");
  }
  if (!error.empty()) throw Failure(kMigrateFailed, phase_, "libvirt: " + error);
  for (DiskRow& d : disks_) {
    d.progress.done = d.progress.total;
    d.progress.ready = true;
    report_->disk_completed(d.facts.target);
  }
}

// The destination's run directory goes with LIBVIRT_FINISH (or with the channel), ours here.
void LibvirtRun::cleanup(bool failed) {
  if (prepared_ && !link_lost_) {
    std::vector<std::uint8_t> body;
    encode_finish(body, Finish{o_.migration_id, failed ? kFinishAbort : 0u});
    CallResult r = call(MigrationProc::libvirt_finish, body, 30s);
    if (!r.ok) {
      if (!failed) throw Failure(kMigrateFailed, "finishing", "destination FINISH: " + r.error);
      spdlog::warn("cleanup: destination FINISH (abort): {}", r.error);
    }
    prepared_ = false;
  }
}

asio::awaitable<json> LibvirtRun::control(const std::string& command, const json& args) {
  if (command == "query-migration") {
    std::lock_guard lock(mu_);
    json out = query_migration_reply(phase_, o_.migration_id, bandwidth_mib_, rows_);
    out["domain"] = o_.domain;
    co_return out;
  }
  if (command == "set-bandwidth") {
    if (!args.contains("mib-per-sec") || !args["mib-per-sec"].is_number_unsigned()) {
      throw ControlError("GenericError", "set-bandwidth needs \"mib-per-sec\": an integer >= 0");
    }
    const auto mib = args["mib-per-sec"].get<unsigned long>();
    if (!dom_) throw ControlError("GenericError", "the migration has not started yet");
    try {
      dom_->set_max_speed(mib);
    } catch (const libvirt::Error& e) {
      throw ControlError("GenericError", e.what());
    }
    bandwidth_mib_ = static_cast<double>(mib);
    co_return json::object();
  }
  if (command == "cancel") {
    request_cancel("cancel command on the control socket");
    co_return json::object();
  }
  throw ControlError("CommandNotFound", fmt::format("unknown command '{}'", command));
}

int LibvirtRun::run() {
  bandwidth_mib_ = o_.bandwidth_mib;
  try {
    start_io();
  } catch (const std::exception& e) {
    report_->error("connect", "", fmt::format("cannot set up io_uring: {}", e.what()));
    return kMigrateFailed;
  }
  int code = kMigrateDone;
  std::string result = "completed";
  try {
    if (!o_.control_socket.empty()) {
      std::string failure;
      on_io([&] {
        control_ = std::make_unique<ControlServer>(
            io_.get_executor(), o_.control_socket,
            [this](const std::string& c, const json& a) { return control(c, a); });
        try {
          control_->start();
        } catch (const std::exception& e) {
          failure = e.what();
        }
      });
      if (!failure.empty()) throw Failure(kMigrateUsage, "connect", failure);
    }
    connect();
    run_checks();
    if (o_.check_only) {
      result = "checked";
    } else {
      if (cancel_) {
        std::lock_guard lock(mu_);
        throw Failure(kMigrateCancelled, phase_, cancel_reason_);
      }
      prepare();
      perform();
      set_phase("finishing");
      cleanup(false);
    }
  } catch (const Failure& f) {
    code = f.code;
    result = code == kMigrateCancelled ? "cancelled" : "failed";
    report_->error(f.phase, "",
                   code == kMigrateCancelled ? "cancelled: " + std::string(f.what()) : f.what());
  } catch (const std::exception& e) {
    code = kMigrateFailed;
    result = "failed";
    report_->error(phase_, "", e.what());
  }
  if (code != kMigrateDone) {
    set_phase("cancelling");
    try {
      cleanup(true);
    } catch (const std::exception& e) {
      spdlog::warn("cleanup: {}", e.what());
    }
  }
  // The control socket's handlers use dom_ on the io thread: they go first. Then the
  // destination libvirt connection, before the channel it runs over.
  on_io([this] {
    if (control_) control_->stop();
  });
  dst_.reset();
  dom_.reset();
  src_.reset();
  std::uint64_t bytes = 0;
  if (code == kMigrateDone && !o_.check_only) {
    for (const DiskRow& d : disks_) bytes += d.progress.done;
    bytes += memory_.progress.done;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  set_phase("done");
  stop_io();
  run_dir_.remove();
  report_->summary(result, bytes, o_.check_only ? 0 : seconds);
  return code;
}

}  // namespace

int run_libvirt_migration(LibvirtMigrateOptions options) {
  if (options.migration_id.empty()) options.migration_id = new_migration_id();
  std::FILE* out = stdout;
  auto reporter = ProgressReporter::make(options.json, out, ::isatty(::fileno(out)) != 0);
  LibvirtRun run(std::move(options), std::move(reporter));
  const int code = run.run();
  std::fflush(stdout);
  return code;
}

}  // namespace nbdtunnel::engine
