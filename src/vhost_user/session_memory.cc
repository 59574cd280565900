// The session's memory table: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG. Each change
// builds a new immutable GuestMemory snapshot and publishes it to the running rings.
#include <fcntl.h>
#include <cstring>
#include <sys/stat.h>

#include "base/checked.h"
#include "vhost_user/session.h"

namespace iceblk::vhost_user {

Status Session::check_shared_file(int fd, uint64_t offset, uint64_t size,
                                  const std::string& what) const {
  // TRUST: touching a mapping beyond the end of the shared file raises SIGBUS, so
  // the range must lie inside the file as it is now, and the front-end must not be
  // able to shrink it later: the file must be sealed F_SEAL_SHRINK (QEMU's
  // memory-backend-memfd seals by default; the inflight memfds we create are sealed
  // too), unless the back-end accepts unsealed memory (docs/threat-model.md).
  if (!device_.accepts_unsealed_memory()) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
      return fail(Errc::kInvalidArgument,
                  "{}: the shared memory file cannot be sealed (F_GET_SEALS: {}); only a memfd "
                  "sealed with F_SEAL_SHRINK is accepted (QEMU: memory-backend-memfd), or start "
                  "iceblkd with "
                  "--allow-unsealed-memory",
                  what, std::strerror(errno));
    }
    if ((seals & F_SEAL_SHRINK) == 0) {
      return fail(Errc::kInvalidArgument,
                  "{}: the memfd is not sealed with F_SEAL_SHRINK, so the front-end could "
                  "truncate it under the device (QEMU: memory-backend-memfd with seal=on, the "
                  "default), or start "
                  "iceblkd with --allow-unsealed-memory",
                  what);
    }
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0)
    return tl::unexpected(errno_error(Errc::kInvalidArgument, "fstat " + what, errno));
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < offset + size) {
    return fail(Errc::kInvalidArgument,
                "{}: offset 0x{:x} + size 0x{:x} exceeds the shared file (0x{:x} bytes)", what,
                offset, size, st.st_size);
  }
  return {};
}

Result<Session::MemSlot> Session::map_region(const MemRegionDesc& d, int fd) const {
  // TRUST: region geometry comes from the front-end; reject wrapping ranges here,
  // overlaps are rejected by GuestMemory::create.
  if (!checked_add(d.guest_phys_addr, d.memory_size - 1) ||
      !checked_add(d.userspace_addr, d.memory_size - 1) ||
      !checked_add(d.mmap_offset, d.memory_size)) {
    return fail(Errc::kOverflow, "memory region gpa 0x{:x} size 0x{:x} wraps the address space",
                d.guest_phys_addr, d.memory_size);
  }
  ICEBLK_TRY(check_shared_file(fd, d.mmap_offset, d.memory_size,
                               fmt::format("memory region gpa 0x{:x}", d.guest_phys_addr)));
  // A SIGBUS on this mapping (the front-end shrank the file) poisons it and closes
  // this connection instead of ending the daemon (memory/fault_guard.h).
  ICEBLK_ASSIGN_OR_RETURN(auto mapping, memory::Mapping::map_fd(fd, d.mmap_offset, d.memory_size,
                                                                memory::Mapping::Faults::kContain));
  return MemSlot{d, std::move(mapping)};
}

Status Session::install_memory(std::vector<MemSlot> slots) {
  std::vector<memory::Region> regions;
  regions.reserve(slots.size());
  for (const auto& s : slots) {
    memory::Region r;
    r.guest_addr = s.desc.guest_phys_addr;
    r.size = s.desc.memory_size;
    r.user_addr = s.desc.userspace_addr;
    r.host = s.mapping->data();
    r.mapping = s.mapping;
    regions.push_back(std::move(r));
  }
  ICEBLK_ASSIGN_OR_RETURN(auto gm, memory::GuestMemory::create(std::move(regions)));
  slots_ = std::move(slots);
  mem_ = std::make_shared<const memory::GuestMemory>(std::move(gm));
  // Publish the new snapshot; running workers switch before their next pass. Old
  // mappings stay alive until the last worker drops the previous snapshot.
  for (auto& v : vrings_)
    if (v.worker) v.worker->set_memory(mem_);
  return {};
}

Status Session::on_set_mem_table(MemTableMsg& m) {
  std::vector<MemSlot> slots;
  for (size_t i = 0; i < m.regions.size(); ++i) {
    ICEBLK_ASSIGN_OR_RETURN(auto s, map_region(m.regions[i], m.fds[i].get()));
    slots.push_back(std::move(s));
  }
  return install_memory(std::move(slots));
}

Status Session::on_add_mem_reg(MemRegMsg& m) {
  if (slots_.size() >= kMaxMemSlots) {
    return fail(Errc::kBusy, "ADD_MEM_REG: all {} memory slots in use", kMaxMemSlots);
  }
  ICEBLK_ASSIGN_OR_RETURN(auto s, map_region(m.region, m.fd.get()));
  auto slots = slots_;
  slots.push_back(std::move(s));
  return install_memory(std::move(slots));
}

Status Session::on_rem_mem_reg(const MemRegMsg& m) {
  auto slots = slots_;
  for (auto it = slots.begin(); it != slots.end(); ++it) {
    if (it->desc.guest_phys_addr == m.region.guest_phys_addr && it->desc.memory_size == m.region.memory_size) {
      slots.erase(it);
      if (slots.empty()) {
        // GuestMemory with no regions is valid; rings that still use it will park.
        slots_.clear();
        mem_ = std::make_shared<const memory::GuestMemory>();
        for (auto& v : vrings_)
          if (v.worker) v.worker->set_memory(mem_);
        return {};
      }
      return install_memory(std::move(slots));
    }
  }
  return fail(Errc::kNotFound, "REM_MEM_REG: no region at gpa 0x{:x} size 0x{:x}", m.region.guest_phys_addr,
              m.region.memory_size);
}

}  // namespace iceblk::vhost_user
