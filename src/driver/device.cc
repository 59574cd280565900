// The driver library's facade (include/iceblk/device.h). The work is done in
// setup.cc, request_builder.cc, key_path.cc and queue_runner.cc (device_impl.h).
#include "iceblk/device.h"

#include <array>
#include <future>

#include "driver/device_impl.h"

namespace iceblk::driver {

Error prefixed(const std::string& what, const Error& e) { return Error(e.code, what + ": " + e.message); }

const char* op_name(Op op) {
  switch (op) {
    case Op::kRead: return "read";
    case Op::kWrite: return "write";
    case Op::kFlush: return "flush";
    case Op::kDiscard: return "discard";
    case Op::kWriteZeroes: return "write-zeroes";
    case Op::kGetId: return "get-id";
    case Op::kGetCapabilities: return "get-capabilities";
  }
  return "?";
}

std::string feature_names(uint64_t features) { return blk::feature_names(features); }

Status status_to_error(uint8_t status, const std::string& what) {
  switch (status) {
    case blk::kStatusOk: return {};
    case blk::kStatusIoErr: return fail(Errc::kIo, "{}: device returned IOERR", what);
    case blk::kStatusUnsupp: return fail(Errc::kUnsupported, "{}: device returned UNSUPP", what);
    default: return fail(Errc::kProtocol, "{}: device returned status byte {}", what, status);
  }
}

// --- Impl: the ring side of a request -------------------------------------------------

bool Device::Impl::on_completion_thread() const {
  return std::any_of(queues.begin(), queues.end(), [](const auto& q) { return q->is_completion_thread(); });
}

Status Device::Impl::submit_ring(uint16_t q, RingRequest r) {
  if (q >= queues.size()) return fail(Errc::kInvalidArgument, "queue {} does not exist ({} queues)", q, queues.size());
  return queues[q]->submit(std::move(r), !on_completion_thread());
}

Result<RawResult> Device::Impl::sync_raw(uint16_t q, const std::string& what, RingRequest r) {
  if (on_completion_thread())
    return fail(Errc::kBusy, "{}: synchronous call from a completion callback", what);
  auto waiter = std::make_shared<SyncWaiter>(r.in);
  r.waiter = waiter;
  r.cb = nullptr;
  ICEBLK_TRY(
      submit_ring(q, std::move(r)).map_error([&](const Error& e) { return prefixed(what, e); }));
  auto res = waiter->wait(opts.request_timeout);
  if (!res) {
    // Abandoned: the device still owns the chain (its context and buffers stay
    // reserved until it completes or the connection ends); the caller's do not.
    return fail(Errc::kTimedOut,
                "{}: no completion within {} ms on queue {} (the back-end is hung or overloaded)",
                what, opts.request_timeout.count(), q);
  }
  if (!*res) return tl::unexpected(prefixed(what, res->error()));
  return **res;
}

Status Device::Impl::sync(uint16_t q, const std::string& what, std::span<const uint8_t> header,
                          std::span<const uint8_t> out, std::span<uint8_t> in, bool secret,
                          KeyslotManager::Lease lease) {
  ICEBLK_ASSIGN_OR_RETURN(
      RawResult res,
      sync_raw(q, what, RingRequest{header, out, in, secret, std::move(lease), {}, {}}));
  return status_to_error(res.status, what);
}

Status Device::Impl::sync_io(const Io& io) {
  ICEBLK_ASSIGN_OR_RETURN(BuiltRequest b, build(io));
  return sync(io.queue, b.what, b.header, b.out, b.in, false, std::move(b.lease));
}

// --- Device ----------------------------------------------------------------------------

Device::Device(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Device::~Device() {
  if (!impl_) return;
  impl_->stop_queues();
  impl_->frontend.reset();  // closes the socket: the back-end stops the rings
  for (auto& q : impl_->queues) q->fail_all(Error(Errc::kClosed, "the device was closed"));
  impl_->keyslots.reset();
  impl_->queues.clear();
}

uint64_t Device::offered_features() const { return impl_->offered; }
uint64_t Device::negotiated_features() const { return impl_->negotiated; }
uint64_t Device::protocol_features() const { return impl_->protocol; }
bool Device::has_feature(unsigned bit) const { return impl_->has(bit); }
bool Device::ice() const { return has_feature(blk::kFeatureIce); }
bool Device::ice_offered() const { return blk::has_feature(impl_->offered, blk::kFeatureIce); }
KeyMode Device::key_mode() const { return impl_->key_mode; }
uint32_t Device::header_size() const { return impl_->header_size; }
uint16_t Device::num_queues() const { return impl_->num_queues; }
uint16_t Device::queue_size() const { return impl_->opts.queue_size; }
const DeviceConfig& Device::config() const { return impl_->config; }
uint64_t Device::capacity_bytes() const { return impl_->config.capacity_sectors * kSectorSize; }
const std::vector<ice::Capability>& Device::capabilities() const { return impl_->capabilities; }

QueueStats Device::queue_stats(uint16_t q) const {
  if (q >= impl_->queues.size()) return {};
  return impl_->queues[q]->stats();
}

Result<std::vector<uint8_t>> Device::read_config(uint32_t offset, uint32_t size) {
  return impl_->frontend->get_config(offset, size);
}

Status Device::submit(Io io, Callback cb) {
  ICEBLK_ASSIGN_OR_RETURN(BuiltRequest b, impl_->build(io));
  auto done = [cb = std::move(cb), what = b.what](Result<RawResult> r) {
    if (!r) {
      cb(tl::unexpected(prefixed(what, r.error())));
      return;
    }
    cb(status_to_error(r->status, what));
  };
  RingRequest r{b.header, b.out, b.in, false, std::move(b.lease), std::move(done), {}};
  return impl_->submit_ring(io.queue, std::move(r)).map_error([&](const Error& e) {
    return prefixed(b.what, e);
  });
}

std::future<Status> Device::submit(Io io) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  Status st = submit(std::move(io), [p](Status s) { p->set_value(std::move(s)); });
  if (!st) p->set_value(std::move(st));
  return f;
}

Status Device::submit_raw(RawRequest req, RawCallback cb) {
  return impl_->submit_ring(
      req.queue, RingRequest{req.header, req.out, req.in, req.secret, {}, std::move(cb), {}});
}

Result<RawResult> Device::execute_raw(RawRequest req) {
  const std::string what = fmt::format(
      "raw request type {}", req.header.size() >= 4 ? req.header[0] | (req.header[1] << 8) : -1);
  return impl_->sync_raw(req.queue, what,
                         RingRequest{req.header, req.out, req.in, req.secret, {}, {}, {}});
}

// --- synchronous wrappers --------------------------------------------------------------

namespace {

Io make_io(Op op, uint16_t q, uint64_t offset, uint64_t length = 0) {
  Io io;
  io.op = op;
  io.queue = q;
  io.offset = offset;
  io.length = length;
  return io;
}

// The synchronous wrappers below: each waits at most ConnectOptions::request_timeout
// (Impl::sync_io).

template <typename Crypt>
Io read_io(uint64_t offset, std::span<uint8_t> buf, uint16_t q, Crypt crypt) {
  Io io = make_io(Op::kRead, q, offset);
  io.in = buf;
  crypt(io);
  return io;
}

template <typename Crypt>
Io write_io(uint64_t offset, std::span<const uint8_t> buf, uint16_t q, Crypt crypt) {
  Io io = make_io(Op::kWrite, q, offset);
  io.out = buf;
  crypt(io);
  return io;
}

}  // namespace

Status Device::read(uint64_t offset, std::span<uint8_t> buf, uint16_t q) {
  return impl_->sync_io(read_io(offset, buf, q, [](Io&) {}));
}
Status Device::read(uint64_t offset, std::span<uint8_t> buf, const Encryption& enc, uint16_t q) {
  return impl_->sync_io(read_io(offset, buf, q, [&](Io& io) { io.encryption = enc; }));
}
Status Device::read(uint64_t offset, std::span<uint8_t> buf, const KeyRef& key, uint16_t q) {
  return impl_->sync_io(read_io(offset, buf, q, [&](Io& io) { io.key = key; }));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, uint16_t q) {
  return impl_->sync_io(write_io(offset, buf, q, [](Io&) {}));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, const Encryption& enc,
                     uint16_t q) {
  return impl_->sync_io(write_io(offset, buf, q, [&](Io& io) { io.encryption = enc; }));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, const KeyRef& key, uint16_t q) {
  return impl_->sync_io(write_io(offset, buf, q, [&](Io& io) { io.key = key; }));
}
Status Device::flush(uint16_t q) {
  return impl_->sync_io(make_io(Op::kFlush, q, 0));
}
Status Device::discard(uint64_t offset, uint64_t length, uint16_t q) {
  return impl_->sync_io(make_io(Op::kDiscard, q, offset, length));
}
Status Device::write_zeroes(uint64_t offset, uint64_t length, bool unmap, uint16_t q) {
  Io io = make_io(Op::kWriteZeroes, q, offset, length);
  io.unmap = unmap;
  return impl_->sync_io(io);
}

Result<std::string> Device::get_id(uint16_t q) {
  std::array<uint8_t, blk::kIdBytes> id{};
  Io io = make_io(Op::kGetId, q, 0);
  io.in = id;
  ICEBLK_TRY(impl_->sync_io(io));
  size_t n = 0;
  while (n < id.size() && id[n] != 0) ++n;
  return std::string(reinterpret_cast<const char*>(id.data()), n);
}

Result<std::vector<ice::Capability>> Device::get_capabilities(uint16_t q) {
  std::vector<uint8_t> buf(size_t{impl_->config.capability_num} * sizeof(blk::CryptoCap));
  if (buf.empty()) return std::vector<ice::Capability>{};
  Io io = make_io(Op::kGetCapabilities, q, 0);
  io.in = buf;
  ICEBLK_TRY(impl_->sync_io(io));
  return blk::decode_capabilities(buf);
}

void Device::drain() {
  for (auto& q : impl_->queues) q->drain();
}

}  // namespace iceblk::driver
