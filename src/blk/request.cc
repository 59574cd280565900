#include "blk/request.h"

#include <array>

#include "base/checked.h"
#include "base/le.h"
#include "base/secret_bytes.h"
#include "blk/wire.h"
#include "virtio/chain_io.h"
#include "ice/key_blob.h"

namespace iceblk::blk {

namespace {

// Bytes [off, off + dst.size()) of the readable side, copied once.
Status copy_out(const virtio::DescriptorChain& chain, uint64_t off, std::span<uint8_t> dst,
                const memory::GuestMemory& mem) {
  return virtio::readable(chain).split_at(off).second.read(mem, dst);
}

// Host iovecs for `len` bytes at `off` of one side of the chain.
Status slice(virtio::ChainBytes side, uint64_t off, uint64_t len, const memory::GuestMemory& mem,
             std::vector<iovec>& out) {
  auto rest = side.split_at(off).second;
  if (rest.size() < len) return fail(Errc::kOutOfRange, "chain is {} bytes too short", len - rest.size());
  return rest.split_at(len).first.iovecs(mem, out);
}

// sector*512 + len within capacity; returns the byte offset.
Result<uint64_t> check_range(uint64_t sector, uint64_t len, const ParseEnv& env) {
  auto off = checked_shl(sector, kSectorShift);
  auto cap = checked_shl(env.capacity_sectors, kSectorShift);
  if (!off || !cap) return fail(Errc::kOutOfRange, "sector {} out of range", sector);
  auto end = checked_add(*off, len);
  if (!end || *end > *cap) {
    return fail(Errc::kOutOfRange, "sector {} + {} bytes beyond capacity {} sectors", sector, len,
                env.capacity_sectors);
  }
  return *off;
}

bool in_band(const ParseEnv& env) { return has_feature(env.features, kFeatureIceInbandKeys); }

// Spec §6: in-band slots are virtual, < max_slots, mapped to slot_offset + slot.
Result<PhysSlot> virtual_slot(uint8_t slot, const ParseEnv& env) {
  if (slot >= env.slots.count) {
    return fail(Errc::kOutOfRange, "virtual slot {} >= max_slots {}", slot, env.slots.count);
  }
  return PhysSlot(env.slots.offset + slot);
}

Status parse_io(Request& r, const OutHdr& hdr, const IcePayload* ice, const virtio::DescriptorChain& chain,
                uint32_t hdr_size, const memory::GuestMemory& mem, const ParseEnv& env) {
  const bool is_in = r.kind == RequestKind::kIn;
  // Spec §5: activate other than 0/1 or non-zero reserved fields -> UNSUPP.
  if (ice != nullptr) {
    if (ice->activate > 1) return fail(Errc::kUnsupported, "ice_payload.activate {} is not 0 or 1", ice->activate);
    if (ice->reserved1.get() != 0 || ice->reserved2.get() != 0) {
      return fail(Errc::kUnsupported, "ice_payload reserved fields are not zero");
    }
  }
  if (!is_in && env.read_only) return fail(Errc::kPermissionDenied, "write to a read-only device");

  if (is_in) {
    r.length = chain.writable_len - 1;  // everything writable but the status byte
    ICEBLK_TRY(slice(virtio::writable(chain), 0, r.length, mem, r.data));
  } else {
    r.length = chain.readable_len - hdr_size;
    ICEBLK_TRY(slice(virtio::readable(chain), hdr_size, r.length, mem, r.data));
  }
  if (r.length % kSectorSize != 0) {
    return fail(Errc::kMisaligned, "data length {} is not a multiple of 512", r.length);
  }
  ICEBLK_ASSIGN_OR_RETURN(r.offset, check_range(hdr.sector.get(), r.length, env));

  if (ice == nullptr || ice->activate == 0) return {};

  // Spec §5: encrypted I/O.
  PhysSlot phys{ice->slot};
  if (in_band(env)) {
    ICEBLK_ASSIGN_OR_RETURN(phys, virtual_slot(ice->slot, env));
  } else if (!env.slots.contains(phys)) {
    return fail(Errc::kOutOfRange, "physical slot {} outside [{}, {})", ice->slot, env.slots.offset,
                env.slots.offset + env.slots.count);
  }
  auto key = env.engine->lookup(phys);
  if (!key) return fail(Errc::kNotFound, "slot {} holds no key", ice->slot);
  const uint32_t dus = (*key)->key.mode().data_unit_size;
  if (r.offset % dus != 0 || r.length % dus != 0) {
    return fail(Errc::kMisaligned, "offset {} / length {} not multiples of the data unit size {}", r.offset,
                r.length, dus);
  }
  const uint64_t units = r.length / dus;
  if (units > 0 && !checked_add<uint64_t>(ice->data_unit_num.get(), units - 1)) {
    return fail(Errc::kOverflow, "DUN {} + {} units overflows", ice->data_unit_num.get(), units);
  }
  r.key = std::move(*key);
  r.first_dun = Dun(ice->data_unit_num.get());
  return {};
}

Status parse_discard(Request& r, const virtio::DescriptorChain& chain, uint32_t hdr_size,
                     const memory::GuestMemory& mem, const ParseEnv& env) {
  const bool wz = r.kind == RequestKind::kWriteZeroes;
  if (env.read_only) return fail(Errc::kPermissionDenied, "discard/write-zeroes on a read-only device");
  const uint64_t bytes = chain.readable_len - hdr_size;
  const uint32_t max_seg = wz ? env.max_write_zeroes_seg : env.max_discard_seg;
  const uint32_t max_sectors = wz ? env.max_write_zeroes_sectors : env.max_discard_sectors;
  if (bytes == 0 || bytes % sizeof(DiscardWriteZeroes) != 0) {
    return fail(Errc::kInvalidArgument, "segment data of {} bytes is not a non-zero multiple of 16", bytes);
  }
  const uint64_t n = bytes / sizeof(DiscardWriteZeroes);
  if (n > max_seg) return fail(Errc::kOutOfRange, "{} segments, at most {} allowed", n, max_seg);
  std::vector<DiscardWriteZeroes> segs(n);
  ICEBLK_TRY(copy_out(chain, hdr_size,
                      {reinterpret_cast<uint8_t*>(segs.data()), segs.size() * sizeof(DiscardWriteZeroes)}, mem));
  // Flags first, for every segment: UNSUPP takes precedence over range errors.
  for (const auto& s : segs) {
    const uint32_t flags = s.flags.get();
    if ((flags & ~kWriteZeroesFlagUnmap) != 0) return fail(Errc::kUnsupported, "unknown flags {:#x}", flags);
    if (!wz && (flags & kWriteZeroesFlagUnmap) != 0) {
      return fail(Errc::kUnsupported, "UNMAP flag on a DISCARD segment");
    }
  }
  r.ranges.reserve(n);
  for (const auto& s : segs) {
    const uint32_t num = s.num_sectors.get();
    if (num > max_sectors) return fail(Errc::kOutOfRange, "num_sectors {} > max {}", num, max_sectors);
    const uint64_t len = uint64_t{num} << kSectorShift;
    ICEBLK_ASSIGN_OR_RETURN(const uint64_t off, check_range(s.sector.get(), len, env));
    r.ranges.push_back({off, len, wz && (s.flags.get() & kWriteZeroesFlagUnmap) != 0});
  }
  return {};
}

Status parse_program_key(Request& r, const IcePayload& ice, const virtio::DescriptorChain& chain,
                         uint32_t hdr_size, const memory::GuestMemory& mem, const ParseEnv& env) {
  ICEBLK_ASSIGN_OR_RETURN(r.slot, virtual_slot(ice.slot, env));
  const uint64_t bytes = chain.readable_len - hdr_size;
  if (bytes != ice::kKeyBlobSize) {
    return fail(Errc::kInvalidArgument, "key blob is {} bytes, must be {}", bytes, ice::kKeyBlobSize);
  }
  // The blob holds key material: keep it in SecretBytes so it is zeroised.
  SecretBytes blob(ice::kKeyBlobSize);
  ICEBLK_TRY(copy_out(chain, hdr_size, blob.mutable_view(), mem));
  auto key = ice::parse_key_blob(
      std::span<const uint8_t, ice::kKeyBlobSize>(blob.view().data(), ice::kKeyBlobSize), *env.caps);
  if (!key) return tl::unexpected(std::move(key).error());
  r.new_key.emplace(std::move(*key));
  return {};
}

}  // namespace

Result<uint8_t*> locate_status(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem) {
  if (chain.writable.empty() || chain.writable.back().len == 0) {
    return fail(Errc::kProtocol, "chain {} has no device-writable status byte", chain.head);
  }
  const auto w = virtio::writable(chain);
  return w.split_at(w.size() - 1).second.byte(mem);
}

Result<Request> parse_request(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                              const ParseEnv& env) {
  ICEBLK_ASSIGN_OR_RETURN(uint8_t* status, locate_status(chain, mem));
  return parse_request(chain, mem, env, status);
}

Result<Request> parse_request(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                              const ParseEnv& env, uint8_t* status) {
  Request r;
  ICEBLK_TRY(parse_request_into(r, chain, mem, env, status));
  return r;
}

Status parse_request_into(Request& r, const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                          const ParseEnv& env, uint8_t* status) {
  r.reset();
  r.head = chain.head;
  r.status = status;

  const bool ice_on = has_feature(env.features, kFeatureIce) && env.engine != nullptr;
  const uint32_t hdr_size = ice_on ? kIceHeaderSize : kPlainHeaderSize;
  if (chain.readable_len < hdr_size) {
    return fail(Errc::kInvalidArgument, "header needs {} readable bytes, chain has {}", hdr_size,
                chain.readable_len);
  }
  // TRUST: the header is copied out once, wherever the descriptors split it.
  IceHdr hdr{};
  ICEBLK_TRY(copy_out(chain, 0, {reinterpret_cast<uint8_t*>(&hdr), hdr_size}, mem));
  const IcePayload* ice = ice_on ? &hdr.ice : nullptr;

  const uint32_t type = hdr.out.type.get();
  switch (type) {
    case kTypeIn:
    case kTypeOut:
      r.kind = type == kTypeIn ? RequestKind::kIn : RequestKind::kOut;
      ICEBLK_TRY(parse_io(r, hdr.out, ice, chain, hdr_size, mem, env));
      return {};
    case kTypeFlush:
      r.kind = RequestKind::kFlush;
      return {};
    case kTypeGetId:
      r.kind = RequestKind::kGetId;
      r.length = std::min<uint64_t>(chain.writable_len - 1, kIdBytes);
      ICEBLK_TRY(slice(virtio::writable(chain), 0, r.length, mem, r.data));
      return {};
    case kTypeDiscard:
    case kTypeWriteZeroes: {
      const bool wz = type == kTypeWriteZeroes;
      if (!has_feature(env.features, wz ? kFeatureWriteZeroes : kFeatureDiscard)) {
        return fail(Errc::kUnsupported, "{} not negotiated", wz ? "WRITE_ZEROES" : "DISCARD");
      }
      r.kind = wz ? RequestKind::kWriteZeroes : RequestKind::kDiscard;
      ICEBLK_TRY(parse_discard(r, chain, hdr_size, mem, env));
      return {};
    }
    case kTypeGetCryptoCaps: {
      if (!ice_on) return fail(Errc::kUnsupported, "GET_CRYPTO_CAPABILITIES without VIRTIO_BLK_F_ICE");
      r.kind = RequestKind::kGetCryptoCaps;
      const uint64_t need = uint64_t{env.caps->size()} * sizeof(CryptoCap);
      if (chain.writable_len - 1 < need) {
        return fail(Errc::kInvalidArgument, "capability buffer is {} bytes, needs {}", chain.writable_len - 1,
                    need);
      }
      r.length = need;
      ICEBLK_TRY(slice(virtio::writable(chain), 0, need, mem, r.data));
      return {};
    }
    case kTypeIceProgramKey:
    case kTypeIceEvictKey:
      // Spec §4/§7: without bit 23 the device has no key path.
      if (!ice_on || !in_band(env)) {
        return fail(Errc::kUnsupported, "key request {} without VIRTIO_BLK_F_ICE_INBAND_KEYS", type);
      }
      if (type == kTypeIceEvictKey) {
        r.kind = RequestKind::kEvictKey;
        ICEBLK_ASSIGN_OR_RETURN(r.slot, virtual_slot(hdr.ice.slot, env));
        return {};
      }
      r.kind = RequestKind::kProgramKey;
      ICEBLK_TRY(parse_program_key(r, hdr.ice, chain, hdr_size, mem, env));
      return {};
    default:
      return fail(Errc::kUnsupported, "unknown request type {}", type);
  }
}

uint8_t status_for(const Error& e) { return e.code == Errc::kUnsupported ? kStatusUnsupp : kStatusIoErr; }

}  // namespace iceblk::blk
