// NBD backend through libnbd's asynchronous API. One libnbd handle per IoQueue
// (per queue worker), driven from the worker's event loop: completion_fd() is an
// epoll fd (CompletionFd) holding the handle's socket (interest following
// nbd_aio_get_direction), its eventfd (completions recorded outside reap()) and
// its timerfd (reconnects, deadlines). libnbd's completion callbacks only record results;
// IoRequest::done runs from reap() (or drain()) on the queue's thread.
//
// Storage going away: a dead connection is closed and reopened (nbd_aio_connect_uri)
// every kReconnectInterval; requests it had in flight are sent again on the new
// connection (reads and writes of whole requests are idempotent). With
// StorageErrorPolicy::kFail a request older than io_timeout fails with an I/O error;
// if libnbd still holds it, the connection is closed first (nbd_close guarantees
// libnbd touches none of the request's buffers afterwards). drain() waits at most
// io_timeout, then fails what is left the same way, so stopping a queue never hangs
// on a dead server.
#include <libnbd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <deque>
#include <map>
#include <vector>

#include "backend/completion_fd.h"
#include "backend/image_spec.h"
#include "base/log.h"

namespace iceblk::backend {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kReconnectInterval = std::chrono::milliseconds(500);
constexpr uint64_t kMaxCommand = 32ull
                                 << 20;  // bytes per NBD command (the protocol's common limit)

struct NbdHandleDeleter {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdPtr = std::unique_ptr<nbd_handle, NbdHandleDeleter>;

std::string nbd_error_text() {
  const char* e = nbd_get_error();
  return e != nullptr ? e : "unknown libnbd error";
}

// Drives a handle through nbd_aio_connect_uri until it is ready, dead, or
// `deadline` passes (start-up: a bounded, synchronous connect).
Status connect_blocking(nbd_handle* h, const std::string& uri, Clock::time_point deadline) {
  if (nbd_aio_connect_uri(h, uri.c_str()) == -1) return fail(Errc::kIo, "{}", nbd_error_text());
  while (nbd_aio_is_connecting(h) == 1) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return fail(Errc::kIo, "connect timed out");
    if (nbd_poll(h, static_cast<int>(std::min<long long>(left, 1000))) == -1) {
      return fail(Errc::kIo, "{}", nbd_error_text());
    }
  }
  if (nbd_aio_is_ready(h) != 1) return fail(Errc::kIo, "{}", nbd_error_text());
  return {};
}

struct NbdShared {
  ImageSpec spec;
  RemoteOptions opts;
  uint64_t size = 0;
  bool read_only = false;
  bool can_flush = false;
  bool can_trim_zero = false;
};

class NbdQueue;

// user_data of one libnbd command: finds its request by id (the request may have
// been failed or resent meanwhile; then the id or the generation no longer match).
struct Cookie {
  NbdQueue* q;
  uint64_t id;
  uint64_t gen;
};

class NbdQueue final : public IoQueue {
 public:
  static Result<std::unique_ptr<IoQueue>> create(std::shared_ptr<const NbdShared> s,
                                                 unsigned depth) {
    ICEBLK_ASSIGN_OR_RETURN(auto cfd, CompletionFd::create("nbd queue"));
    auto q = std::unique_ptr<NbdQueue>(new NbdQueue(std::move(s), depth, std::move(cfd)));
    q->start_connect();
    return std::unique_ptr<IoQueue>(std::move(q));
  }

  ~NbdQueue() override {
    drain();
    close_handle();
  }

  void submit(IoRequest req) override {
    auto len = check_io_request(req, s_->size, s_->read_only, s_->spec.text);
    if (!len) {
      req.done(tl::unexpected(std::move(len).error()));
      return;
    }
    const uint64_t id = next_id_++;
    Op& op = ops_[id];
    op.req = std::move(req);
    op.len = *len;
    op.deadline = Clock::now() + s_->opts.io_timeout;
    waiting_.push_back(id);
    update_timer();
  }

  void flush_submissions() override {
    issue();
    update_interest();
  }

  int completion_fd() const override { return cfd_.fd(); }

  size_t reap() override {
    pump(0);
    return deliver();
  }

  size_t in_flight() const override { return ops_.size(); }

  void drain() override {
    const auto limit = Clock::now() + s_->opts.io_timeout;
    while (!ops_.empty()) {
      if (Clock::now() >= limit) {
        spdlog::error("{}: storage not answering; failing {} request(s) still in flight",
                      s_->spec.text, ops_.size());
        close_handle();
        std::vector<uint64_t> ids;
        for (auto& [id, op] : ops_) ids.push_back(id);
        for (uint64_t id : ids)
          finish(id, fail(Errc::kIo, "{}: storage not answering", s_->spec.text));
        waiting_.clear();
        deliver();
        break;
      }
      issue();
      update_interest();
      pump(static_cast<int>(CompletionFd::kTick.count()));
      deliver();
    }
  }

 private:
  struct Op {
    IoRequest req;
    uint64_t len = 0;
    Clock::time_point deadline;
    uint64_t gen = 0;          // connection generation it was sent on (0: not sent)
    unsigned outstanding = 0;  // NBD commands not yet answered
    int error = 0;             // first error of its commands
  };

  NbdQueue(std::shared_ptr<const NbdShared> s, unsigned depth, CompletionFd cfd)
      : s_(std::move(s)), max_sent_(std::max(depth, 1u)), cfd_(std::move(cfd)) {}

  // --- connection state ---------------------------------------------------------

  void start_connect() {
    close_handle();
    ++gen_;
    h_.reset(nbd_create());
    if (!h_) {
      note_down(nbd_error_text());
      return;
    }
    nbd_set_uri_allow_local_file(h_.get(), false);
    if (nbd_aio_connect_uri(h_.get(), s_->spec.uri.c_str()) == -1) {
      note_down(nbd_error_text());
      close_handle();
      return;
    }
    watch_socket();
  }

  void watch_socket() {
    const int fd = nbd_aio_get_fd(h_.get());
    if (fd < 0) return;
    sock_ = fd;
    sock_events_ = 0;
    cfd_.watch(sock_, EPOLLIN, EPOLL_CTL_ADD);
    sock_events_ = EPOLLIN;
    update_interest();
  }

  void close_handle() {
    if (!h_) return;
    if (sock_ >= 0) cfd_.unwatch(sock_);
    sock_ = -1;
    h_.reset();  // nbd_close: no callback of this connection runs afterwards
    ready_ = false;
    // Requests it had in flight go out again on the next connection.
    for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) {
      if (it->second.gen != 0) {
        it->second.gen = 0;
        it->second.outstanding = 0;
        it->second.error = 0;
        waiting_.push_front(it->first);
      }
    }
    sent_ = 0;
    next_connect_ = Clock::now() + kReconnectInterval;
    update_timer();
  }

  void note_down(const std::string& why) {
    if (!down_logged_) {
      spdlog::warn("{}: NBD connection lost ({}); {}", s_->spec.text, why,
                   s_->opts.on_error == StorageErrorPolicy::kRetry
                       ? "retrying until the server is back"
                       : fmt::format("reconnecting; requests fail after {} ms",
                                     s_->opts.io_timeout.count()));
      down_logged_ = true;
    }
    next_connect_ = Clock::now() + kReconnectInterval;
    update_timer();
  }

  void on_ready() {
    const int64_t size = nbd_get_size(h_.get());
    if (size < 0 || static_cast<uint64_t>(size) < s_->size) {
      note_down(fmt::format("export is now {} bytes, smaller than {}", size, s_->size));
      close_handle();
      return;
    }
    ready_ = true;
    if (down_logged_) spdlog::info("{}: NBD connection re-established", s_->spec.text);
    down_logged_ = false;
    issue();
  }

  // Runs the state machine on whatever is ready, waiting up to timeout_ms.
  void pump(int timeout_ms) {
    const bool tick = cfd_.wait(timeout_ms, [this](int fd, uint32_t events) {
      if (!h_ || fd != sock_) return;
      int r = 0;
      if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) r = nbd_aio_notify_read(h_.get());
      if (r != -1 && h_ && (events & EPOLLOUT)) r = nbd_aio_notify_write(h_.get());
    });
    if (h_) {
      if (!ready_ && nbd_aio_is_ready(h_.get()) == 1) {
        on_ready();
      } else if (nbd_aio_is_dead(h_.get()) == 1 || nbd_aio_is_closed(h_.get()) == 1) {
        note_down(nbd_error_text());
        // Answers that arrived before the connection died stand.
        settle(/*connection_lost=*/true);
        close_handle();
      }
    }
    settle(false);
    if (tick || timer_due()) on_tick();
    issue();
    update_interest();
    update_timer();
  }

  bool timer_due() const {
    const auto now = Clock::now();
    return (!h_ && now >= next_connect_) || (s_->opts.on_error == StorageErrorPolicy::kFail &&
                                             !ops_.empty() && now >= earliest_deadline());
  }

  Clock::time_point earliest_deadline() const {
    auto t = Clock::time_point::max();
    for (const auto& [id, op] : ops_) t = std::min(t, op.deadline);
    return t;
  }

  void on_tick() {
    const auto now = Clock::now();
    if (s_->opts.on_error == StorageErrorPolicy::kFail) {
      std::vector<uint64_t> expired;
      bool sent_expired = false;
      for (const auto& [id, op] : ops_) {
        if (now >= op.deadline) {
          expired.push_back(id);
          sent_expired = sent_expired || op.gen != 0;
        }
      }
      // libnbd still holds buffers of a request that is sent: close the
      // connection before failing it (the others are resent after reconnecting).
      if (sent_expired) {
        note_down(fmt::format("no answer within {} ms", s_->opts.io_timeout.count()));
        close_handle();
      }
      for (uint64_t id : expired) {
        finish(id, fail(Errc::kIo, "{}: storage did not answer within {} ms", s_->spec.text,
                        s_->opts.io_timeout.count()));
      }
    }
    if (!h_ && now >= next_connect_) start_connect();
  }

  // --- commands -------------------------------------------------------------------

  static int on_complete(void* user_data, int* error) {
    auto* c = static_cast<Cookie*>(user_data);
    c->q->answers_.push_back({c->id, c->gen, *error});
    c->q->cfd_.signal();
    return 1;  // retire the command
  }
  static void free_cookie(void* user_data) { delete static_cast<Cookie*>(user_data); }

  nbd_completion_callback callback_for(uint64_t id) {
    return nbd_completion_callback{
        .callback = on_complete, .user_data = new Cookie{this, id, gen_}, .free = free_cookie};
  }

  // Sends waiting requests while the connection is ready and fewer than `depth`
  // are out.
  void issue() {
    while (ready_ && h_ && !waiting_.empty() && sent_ < max_sent_) {
      const uint64_t id = waiting_.front();
      auto it = ops_.find(id);
      waiting_.pop_front();
      if (it == ops_.end()) continue;
      Op& op = it->second;
      op.gen = gen_;
      op.outstanding = 0;
      op.error = 0;
      ++sent_;
      if (!send(id, op)) {
        // The handle refused the command: a dead connection (resend later) or a
        // request libnbd cannot express (fail it).
        const int e = nbd_get_errno();
        // (Not !is_ready: a handle with commands in flight is "processing".)
        if (nbd_aio_is_dead(h_.get()) == 1 || nbd_aio_is_closed(h_.get()) == 1) {
          note_down(nbd_error_text());
          settle(true);
          close_handle();
          return;
        }
        if (op.outstanding == 0) {
          --sent_;
          finish(id, fail(errno_error(Errc::kIo,
                                      fmt::format("{}: {}", s_->spec.text, nbd_error_text()), e)));
        } else {
          op.error = e != 0 ? e : EIO;
        }
      }
    }
  }

  // One request as NBD commands (one per iovec piece of at most kMaxCommand).
  bool send(uint64_t id, Op& op) {
    nbd_handle* h = h_.get();
    const IoRequest& r = op.req;
    auto track = [&](int64_t cookie) {
      if (cookie == -1) return false;
      ++op.outstanding;
      return true;
    };
    switch (r.op) {
      case IoOp::kRead:
      case IoOp::kWrite: {
        uint64_t off = r.offset;
        for (const iovec& v : r.iov) {
          for (uint64_t done = 0; done < v.iov_len;) {
            const uint64_t n = std::min<uint64_t>(v.iov_len - done, kMaxCommand);
            auto* p = static_cast<uint8_t*>(v.iov_base) + done;
            const int64_t c = r.op == IoOp::kRead
                                  ? nbd_aio_pread(h, p, n, off, callback_for(id), 0)
                                  : nbd_aio_pwrite(h, p, n, off, callback_for(id), 0);
            if (!track(c)) return false;
            off += n;
            done += n;
          }
        }
        break;
      }
      case IoOp::kFlush:
        if (s_->can_flush && !track(nbd_aio_flush(h, callback_for(id), 0))) return false;
        break;
      case IoOp::kDiscard:
      case IoOp::kWriteZeroes:
        for (uint64_t done = 0; done < r.length;) {
          const uint64_t n = std::min<uint64_t>(r.length - done, kMaxCommand);
          const int64_t c = r.op == IoOp::kDiscard
                                ? nbd_aio_trim(h, n, r.offset + done, callback_for(id), 0)
                                : nbd_aio_zero(h, n, r.offset + done, callback_for(id),
                                               r.unmap ? 0 : LIBNBD_CMD_FLAG_NO_HOLE);
          if (!track(c)) return false;
          done += n;
        }
        break;
    }
    if (op.outstanding == 0) {  // nothing to send (flush without server support, empty read)
      --sent_;
      finish(id, uint64_t{op.len});
    }
    return true;
  }

  // Applies recorded answers. `connection_lost`: errors are the connection dying,
  // not the server's verdict; those requests are resent.
  void settle(bool connection_lost) {
    auto answers = std::move(answers_);
    answers_.clear();
    for (const auto& a : answers) {
      auto it = ops_.find(a.id);
      if (it == ops_.end() || it->second.gen != a.gen || it->second.gen == 0) continue;
      Op& op = it->second;
      if (a.error != 0 && connection_lost) continue;  // resent by close_handle()
      if (a.error != 0 && op.error == 0) op.error = a.error;
      if (op.outstanding > 0) --op.outstanding;
      if (op.outstanding == 0) {
        --sent_;
        if (op.error != 0) {
          finish(a.id, fail(errno_error(Errc::kIo,
                                        fmt::format("{} {} at {}", r_name(op.req.op), s_->spec.text,
                                                    op.req.offset),
                                        op.error)));
        } else {
          finish(a.id, uint64_t{op.len});
        }
      }
    }
  }

  static const char* r_name(IoOp op) {
    switch (op) {
      case IoOp::kRead:
        return "read";
      case IoOp::kWrite:
        return "write";
      case IoOp::kFlush:
        return "flush";
      case IoOp::kDiscard:
        return "trim";
      case IoOp::kWriteZeroes:
        return "write-zeroes";
    }
    return "?";
  }

  void finish(uint64_t id, Result<uint64_t> result) {
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    finished_.emplace_back(std::move(it->second.req), std::move(result));
    ops_.erase(it);
    std::erase(waiting_, id);
  }

  size_t deliver() {
    auto batch = std::move(finished_);
    finished_.clear();
    for (auto& [req, result] : batch) req.done(std::move(result));
    return batch.size();
  }

  // --- readiness ------------------------------------------------------------------

  void update_interest() {
    if (!h_ || sock_ < 0) return;
    const unsigned dir = nbd_aio_get_direction(h_.get());
    uint32_t want = 0;
    if (dir & LIBNBD_AIO_DIRECTION_READ) want |= EPOLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) want |= EPOLLOUT;
    if (want != sock_events_) {
      cfd_.watch(sock_, want, EPOLL_CTL_MOD);
      sock_events_ = want;
    }
  }

  // The timerfd ticks while something waits on time: a reconnect, or deadlines.
  void update_timer() {
    cfd_.set_ticking(!h_ || (s_->opts.on_error == StorageErrorPolicy::kFail && !ops_.empty()) ||
                     !ready_);
  }

  struct Answer {
    uint64_t id;
    uint64_t gen;
    int error;
  };

  std::shared_ptr<const NbdShared> s_;
  unsigned max_sent_;
  CompletionFd cfd_;
  NbdPtr h_;
  int sock_ = -1;
  uint32_t sock_events_ = 0;
  bool ready_ = false;
  bool down_logged_ = false;
  uint64_t gen_ = 0;
  uint64_t next_id_ = 1;
  unsigned sent_ = 0;  // requests with commands in libnbd
  Clock::time_point next_connect_{};
  std::map<uint64_t, Op> ops_;    // every request not yet finished, by id (oldest first)
  std::deque<uint64_t> waiting_;  // ids not sent on the current connection
  std::vector<Answer> answers_;
  std::vector<std::pair<IoRequest, Result<uint64_t>>> finished_;
};

class NbdBackend final : public BlockBackend {
 public:
  explicit NbdBackend(std::shared_ptr<NbdShared> s) : s_(std::move(s)) {}
  uint64_t size_bytes() const override { return s_->size; }
  bool read_only() const override { return s_->read_only; }
  bool supports_discard() const override { return s_->can_trim_zero && !s_->read_only; }
  std::string describe() const override { return fmt::format("nbd {}", s_->spec.text); }
  Result<std::unique_ptr<IoQueue>> make_queue(unsigned depth) override {
    return NbdQueue::create(s_, depth);
  }

 private:
  std::shared_ptr<NbdShared> s_;
};

}  // namespace

Result<std::unique_ptr<BlockBackend>> open_nbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions& opts) {
  NbdPtr h(nbd_create());
  if (!h) return fail(Errc::kIo, "image {}: {}", spec.text, nbd_error_text());
  nbd_set_uri_allow_local_file(h.get(), false);
  if (nbd_supports_uri(h.get()) != 1) {
    return fail(Errc::kUnsupported, "image {}: this libnbd was built without URI support",
                spec.text);
  }
  if (auto c = connect_blocking(h.get(), spec.uri, Clock::now() + opts.connect_timeout); !c) {
    return fail(Errc::kIo, "image {}: cannot connect: {}", spec.text, c.error().message);
  }
  auto s = std::make_shared<NbdShared>();
  s->spec = spec;
  s->opts = opts;
  const int64_t size = nbd_get_size(h.get());
  if (size < 0) return fail(Errc::kIo, "image {}: {}", spec.text, nbd_error_text());
  s->size = static_cast<uint64_t>(size) / 512 * 512;  // whole sectors only
  if (opts.size != 0) {
    if (s->size < opts.size) {
      return fail(Errc::kInvalidArgument,
                  "image {}: export is {} bytes, smaller than the requested {}", spec.text, size,
                  opts.size);
    }
    s->size = opts.size;
  }
  if (s->size == 0) return fail(Errc::kInvalidArgument, "image {}: export is empty", spec.text);
  const bool server_ro = nbd_is_read_only(h.get()) == 1;
  if (server_ro && !opts.read_only) {
    spdlog::info("image {}: the server exports it read-only; serving it read-only", spec.text);
  }
  s->read_only = opts.read_only || server_ro;
  s->can_flush = nbd_can_flush(h.get()) == 1;
  // virtio-blk offers DISCARD and WRITE_ZEROES together: both need the server's.
  s->can_trim_zero = nbd_can_trim(h.get()) == 1 && nbd_can_zero(h.get()) == 1;
  spdlog::info("image {}: NBD export of {} bytes{}{}{}", spec.text, s->size,
               s->read_only ? ", read-only" : "", s->can_flush ? ", flush" : "",
               s->can_trim_zero ? ", trim+zero" : "");
  return std::unique_ptr<BlockBackend>(std::make_unique<NbdBackend>(std::move(s)));
}

}  // namespace iceblk::backend
