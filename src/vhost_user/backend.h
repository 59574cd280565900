// The device model behind a vhost-user back-end (e.g. virtio-blk): a Backend. The session
// (session.h) owns the protocol; a Backend only supplies features, config space and
// per-queue processing.
//
// THREADING
//  * Control calls - features(), protocol_features(), num_queues(), max_queue_size(),
//    get_config(), set_config(), set_features(), reset() - run on the connection's
//    session thread, one at a time (never concurrently with each other).
//  * Queue calls for queue q - queue_started(), queue_event_fd(), process_queue(),
//    drain_queue(), queue_stopped() - run on q's worker thread only. Different queues'
//    workers run concurrently, so state shared between queues needs its own locking.
//    Control calls may run concurrently with queue calls (e.g. get_config while a
//    queue processes I/O), except:
//      - reset() and set_features() are only called while every queue is stopped
//        (the session stops all workers first, or refuses SET_FEATURES while started).
//  * A queue's worker calls queue_started(q) first, then queue_event_fd(q) once,
//    then process_queue() whenever the kick fd or the queue event fd is readable
//    (and once right after start: front-ends need not kick), and on stop
//    drain_queue() followed by queue_stopped(q). No queue call for q happens after
//    queue_stopped(q) returns until the next queue_started(q).
//  * Only one connection is served at a time per Backend.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"
#include "virtio/split_queue.h"

namespace iceblk::vhost_user {

class Backend {
 public:
  virtual ~Backend() = default;

  // Virtio feature bits offered to the driver (VERSION_1, EVENT_IDX, INDIRECT_DESC,
  // device bits ...). The session adds VHOST_USER_F_PROTOCOL_FEATURES (bit 30) and
  // masks out what it cannot do (VHOST_F_LOG_ALL, VIRTIO_F_RING_PACKED).
  [[nodiscard]] virtual uint64_t features() const = 0;

  // Extra vhost-user protocol features the device wants offered, beyond the set the
  // session always offers (MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS, RESET_DEVICE).
  // Only bits the session implements are honoured (currently: STATUS).
  [[nodiscard]] virtual uint64_t protocol_features() const { return 0; }
  // TRUST: a front-end that shrinks a guest-memory file after SET_MEM_TABLE makes the
  // next access to the cut pages raise SIGBUS, which would end the whole daemon. By
  // default only memory sealed against shrinking (F_SEAL_SHRINK) is accepted; a
  // back-end returns true to accept unsealed files too (the operator trusts the VMM).
  [[nodiscard]] virtual bool accepts_unsealed_memory() const { return false; }

  // Number of virtqueues (GET_QUEUE_NUM) and the largest queue size accepted by
  // SET_VRING_NUM (power of two <= virtio::kMaxQueueSize).
  [[nodiscard]] virtual uint16_t num_queues() const = 0;
  [[nodiscard]] virtual uint16_t max_queue_size() const = 0;

  // Config space bytes [offset, offset + size). Out-of-range (or overflowing) ranges
  // must return an error (kOutOfRange); the session then replies with size 0.
  virtual Result<std::vector<uint8_t>> get_config(uint32_t offset, uint32_t size) = 0;
  // Write config space. `flags` is the vhost-user config flag (0 = driver write,
  // kConfigFlagMigration = 1 = live migration). Must refuse read-only fields unless
  // migrating.
  virtual Status set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) = 0;

  // The negotiated virtio features (without bit 30). Called with all queues stopped.
  // An error refuses the SET_FEATURES request.
  virtual Status set_features(uint64_t negotiated) = 0;

  // Back to the just-constructed state: on RESET_DEVICE, RESET_OWNER, SET_STATUS(0)
  // and when the front-end disconnects. All queues are stopped when it is called.
  virtual void reset() = 0;

  // Queue lifecycle hooks (worker thread of q). A failed start parks the queue at
  // once (the worker signals the error fd and makes no other queue call but
  // queue_stopped(q) until the ring is restarted).
  virtual Status queue_started(uint16_t /*q*/) { return {}; }
  virtual void queue_stopped(uint16_t /*q*/) {}

  // An extra fd the worker of q polls (readable -> process_queue), e.g. an io_uring
  // completion eventfd. -1 = none. The device reads/clears it itself. Called once per
  // start, after queue_started(q); the fd must stay open until queue_stopped(q).
  virtual int queue_event_fd(uint16_t /*q*/) { return -1; }

  // Opt-in polling (iceblkd --poll-us): after a pass, q's worker spins on the ring
  // (avail idx) and on the kick, queue event and control fds for up to this many
  // microseconds, with the driver's kicks suppressed, before it sleeps. 0 = never
  // spin. Read once per queue start.
  [[nodiscard]] virtual uint32_t poll_us() const { return 0; }

  // Process available chains (and completions of earlier asynchronous work).
  // Returns true if the driver should be notified (SplitQueue::should_notify()).
  // An error means the queue is broken (e.g. avail index corrupt): the worker stops
  // calling the device for that queue and signals the error fd, if any.
  virtual Result<bool> process_queue(uint16_t q, virtio::SplitQueue& vq) = 0;

  // Finish every in-flight request of q (push its used entry) before the ring is
  // stopped (GET_VRING_BASE replies afterwards). Returns true if the driver should be
  // notified of those completions.
  virtual bool drain_queue(uint16_t /*q*/, virtio::SplitQueue& /*vq*/) { return false; }
};

}  // namespace iceblk::vhost_user
