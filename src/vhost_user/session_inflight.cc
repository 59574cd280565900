// The session's inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
// GET_INFLIGHT_FD hands out a fresh region, SET_INFLIGHT_FD installs the one the
// front-end kept, and start_ring() attaches each queue's part to its SplitQueue
// (virtio/inflight.h has the layout and the recovery rules).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "base/checked.h"
#include "base/log.h"
#include "vhost_user/session.h"

namespace iceblk::vhost_user {

namespace {

// QEMU sends num_queues = the virtqueues it uses and queue_size = its ring size.
Status check_geometry(const char* name, const InflightDesc& d, uint16_t max_queues,
                      uint16_t max_queue_size) {
  if (d.num_queues == 0 || d.num_queues > max_queues) {
    return fail(Errc::kInvalidArgument, "{}: num_queues {} (the device has {})", name, d.num_queues,
                max_queues);
  }
  if (d.queue_size == 0 || d.queue_size > max_queue_size || !is_power_of_two(d.queue_size)) {
    return fail(Errc::kInvalidArgument, "{}: queue_size {} (must be a power of two <= {})", name,
                d.queue_size, max_queue_size);
  }
  return {};
}

}  // namespace

Reply Session::on_get_inflight_fd(const InflightMsg& m) {
  // Errors get mmap_size 0, which QEMU reads as "no inflight tracking": the
  // connection goes on, just without crash recovery.
  Reply rep{static_cast<uint32_t>(Request::kGetInflightFd), {}, {}};
  InflightDesc out{};
  auto make = [&]() -> Status {
    ICEBLK_TRY(check_geometry("GET_INFLIGHT_FD", m.desc, static_cast<uint16_t>(vrings_.size()),
                              device_.max_queue_size()));
    const uint64_t size =
        uint64_t{m.desc.num_queues} * virtio::inflight_queue_bytes(m.desc.queue_size);
    // Our own memfd, sealed so that nobody (the front-end included) can shrink or
    // grow it: a later SET_INFLIGHT_FD of it passes check_shared_file().
    UniqueFd fd(::memfd_create("iceblk-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return tl::unexpected(errno_error(Errc::kIo, "GET_INFLIGHT_FD: memfd_create", errno));
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
      return tl::unexpected(errno_error(Errc::kIo, "GET_INFLIGHT_FD: ftruncate", errno));
    }
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      return tl::unexpected(errno_error(Errc::kIo, "GET_INFLIGHT_FD: F_ADD_SEALS", errno));
    }
    // The file is all zeroes (version 0): the first ring start initialises it.
    out = InflightDesc{size, 0, m.desc.num_queues, m.desc.queue_size, 0};
    rep.fd = std::move(fd);
    return {};
  };
  if (auto s = make(); !s) {
    ICEBLK_PEER_WARN("vhost-user GET_INFLIGHT_FD refused (reply mmap_size 0): {}",
                     s.error().to_string());
    out = InflightDesc{0, 0, m.desc.num_queues, m.desc.queue_size, 0};
    rep.fd.reset();
  }
  const auto b = as_bytes_of(out);
  rep.payload.assign(b.begin(), b.end());
  return rep;
}

Status Session::on_set_inflight_fd(InflightMsg& m) {
  if (any_started()) return fail(Errc::kBusy, "SET_INFLIGHT_FD: rings are running");
  const InflightDesc& d = m.desc;
  ICEBLK_TRY(check_geometry("SET_INFLIGHT_FD", d, static_cast<uint16_t>(vrings_.size()),
                            device_.max_queue_size()));
  // TRUST: every number below comes from the front-end.
  const uint64_t need = uint64_t{d.num_queues} * virtio::inflight_queue_bytes(d.queue_size);
  if (d.mmap_size < need) {
    return fail(Errc::kInvalidArgument,
                "SET_INFLIGHT_FD: region of {} bytes is too small for {} queues of {} descriptors "
                "({} bytes)",
                d.mmap_size, d.num_queues, d.queue_size, need);
  }
  if (!checked_add(d.mmap_offset, d.mmap_size)) {
    return fail(Errc::kOverflow, "SET_INFLIGHT_FD: offset 0x{:x} + size 0x{:x} overflows",
                d.mmap_offset, d.mmap_size);
  }
  if (d.mmap_offset % alignof(uint64_t) != 0) {
    return fail(Errc::kMisaligned, "SET_INFLIGHT_FD: offset 0x{:x} is not 8-byte aligned",
                d.mmap_offset);
  }
  struct stat st {};
  if (::fstat(m.fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail(Errc::kInvalidArgument, "SET_INFLIGHT_FD: the fd is not a memory file");
  }
  ICEBLK_TRY(check_shared_file(m.fd.get(), d.mmap_offset, d.mmap_size, "SET_INFLIGHT_FD region"));
  ICEBLK_ASSIGN_OR_RETURN(auto mapping, memory::Mapping::map_fd(m.fd.get(), d.mmap_offset, need,
                                                                memory::Mapping::Faults::kContain));
  inflight_ = InflightRegion{std::move(mapping), d.num_queues, d.queue_size};
  spdlog::info("vhost-user inflight tracking: {} queue(s) of {} descriptors", d.num_queues,
               d.queue_size);
  return {};
}

}  // namespace iceblk::vhost_user
