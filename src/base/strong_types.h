// Strong integer types so that addresses, sectors, DUNs and slots cannot be mixed.
#pragma once

#include <compare>
#include <cstdint>

namespace iceblk {

template <typename Tag, typename T>
struct StrongInt {
  T value{};
  constexpr StrongInt() = default;
  constexpr explicit StrongInt(T v) : value(v) {}
  constexpr auto operator<=>(const StrongInt&) const = default;
};

struct GuestAddrTag;
struct SectorTag;
struct DunTag;
struct PhysSlotTag;
struct VirtSlotTag;
struct VmIdTag;

using GuestAddr = StrongInt<GuestAddrTag, uint64_t>;  // guest-physical address (or front-end VA)
using Sector = StrongInt<SectorTag, uint64_t>;        // 512-byte virtio-blk sector
using Dun = StrongInt<DunTag, uint64_t>;              // data unit number
using PhysSlot = StrongInt<PhysSlotTag, uint32_t>;    // physical keyslot of the shared engine
using VirtSlot = StrongInt<VirtSlotTag, uint32_t>;    // keyslot as a VM sees it (in-band mode)
using VmId = StrongInt<VmIdTag, uint32_t>;            // one export / one VM sharing the engine

inline constexpr uint64_t kSectorSize = 512;
inline constexpr unsigned kSectorShift = 9;

}  // namespace iceblk
