// The local checks of an Io (what was negotiated, alignment, capacity, keys) and
// its wire form (blk/wire.h): header, out bytes, in bytes.
#include "base/checked.h"
#include "driver/device_impl.h"

namespace iceblk::driver {

namespace {

std::string describe(const Io& io, std::optional<uint8_t> slot) {
  std::string s;
  switch (io.op) {
    case Op::kRead:
      s = fmt::format("read {} bytes at offset {}", io.in.size(), io.offset);
      break;
    case Op::kWrite:
      s = fmt::format("write {} bytes at offset {}", io.out.size(), io.offset);
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      s = fmt::format("{} {} bytes at offset {}", op_name(io.op), io.length, io.offset);
      break;
    default:
      s = op_name(io.op);
  }
  s += fmt::format(" (queue {}", io.queue);
  if (io.key) s += fmt::format(", key '{}'", io.key->name);
  if (slot) s += fmt::format(", slot {}", *slot);
  if (io.key) s += fmt::format(", dun {}", io.key->dun);
  if (io.encryption) s += fmt::format(", dun {}", io.encryption->dun);
  s += ")";
  return s;
}

// The checks that need no key: queue, op vs negotiated features, alignment, capacity.
}  // namespace

Status Device::Impl::check(const Io& io, uint64_t len, const std::string& what) const {
  const Device::Impl& d = *this;
  if (io.queue >= d.num_queues) return fail(Errc::kInvalidArgument, "{}: queue {} does not exist", what, io.queue);
  const bool rw = io.op == Op::kRead || io.op == Op::kWrite;
  const bool crypt = io.encryption.has_value() || io.key.has_value();
  const bool ice = d.has(blk::kFeatureIce);
  if (crypt && !rw) return fail(Errc::kInvalidArgument, "{}: only read and write can be encrypted", what);
  if (crypt && !ice) {
    return fail(Errc::kUnsupported, "{}: encryption asked, but the device does not offer VIRTIO_BLK_F_ICE", what);
  }
  if (io.encryption && io.key) return fail(Errc::kInvalidArgument, "{}: give a slot or a key name, not both", what);
  if (rw || io.op == Op::kDiscard || io.op == Op::kWriteZeroes) {
    if (io.offset % kSectorSize != 0 || len % kSectorSize != 0) {
      return fail(Errc::kMisaligned, "{}: offset and length must be multiples of 512", what);
    }
    const uint64_t capacity = d.config.capacity_sectors * kSectorSize;
    auto end = checked_add(io.offset, len);
    if (!end || *end > capacity) {
      return fail(Errc::kOutOfRange, "{}: beyond the device capacity ({} bytes)", what, capacity);
    }
  }
  if (io.op == Op::kWrite && d.has(blk::kFeatureRo)) {
    return fail(Errc::kPermissionDenied, "{}: the device is read-only", what);
  }
  if (io.op == Op::kFlush && !d.has(blk::kFeatureFlush)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_FLUSH not negotiated", what);
  }
  if (io.op == Op::kDiscard && !d.has(blk::kFeatureDiscard)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_DISCARD not negotiated", what);
  }
  if (io.op == Op::kWriteZeroes && !d.has(blk::kFeatureWriteZeroes)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_WRITE_ZEROES not negotiated", what);
  }
  if (io.op == Op::kGetCapabilities && !ice) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_ICE not negotiated", what);
  }
  if ((io.op == Op::kDiscard || io.op == Op::kWriteZeroes) && (len == 0 || len / kSectorSize > UINT32_MAX)) {
    return fail(Errc::kInvalidArgument, "{}: length must be 1..2^32-1 sectors", what);
  }
  return {};
}

Result<BuiltRequest> Device::Impl::build(const Io& io) {
  const std::string base_what = describe(io, std::nullopt);
  const uint64_t len = io.op == Op::kRead ? io.in.size() : io.op == Op::kWrite ? io.out.size() : io.length;
  ICEBLK_TRY(check(io, len, base_what));

  BuiltRequest b;
  uint8_t slot = 0;
  uint64_t dun = 0;
  if (io.key) {
    if (!keyslots) return fail(Errc::kUnsupported, "{}: the device has no keyslots", base_what);
    if (on_completion_thread()) {
      // acquire() may program a key synchronously, which a callback must not do.
      return fail(Errc::kBusy, "{}: named-key requests cannot be submitted from a completion callback", base_what);
    }
    auto l = keyslots->acquire(io.key->name, opts.keyslot_timeout);
    if (!l) return tl::unexpected(prefixed(base_what, l.error()));
    b.lease = std::move(*l);
    const uint32_t dus = b.lease.mode().data_unit_size;
    if (io.offset % dus != 0 || len % dus != 0 || len == 0) {
      return fail(Errc::kMisaligned, "{}: offset and length must be non-zero multiples of the key's {}-byte data unit",
                  base_what, dus);
    }
    if (len / dus - 1 > UINT64_MAX - io.key->dun) {
      return fail(Errc::kOverflow, "{}: the last data unit number overflows 64 bits", base_what);
    }
    const uint32_t wire = key_mode == KeyMode::kOutOfBand ? config.slot_offset + b.lease.slot() : b.lease.slot();
    slot = static_cast<uint8_t>(wire);
    dun = io.key->dun;
  } else if (io.encryption) {
    slot = io.encryption->slot;
    dun = io.encryption->dun;
  }
  const bool crypt = io.encryption.has_value() || io.key.has_value();
  b.what = describe(io, crypt ? std::optional<uint8_t>(slot) : std::nullopt);

  const uint64_t sector = io.offset / kSectorSize;
  auto header = [&](uint32_t type, uint64_t s = 0) {
    return blk::encode_header(header_size, type, s, slot, crypt ? 1 : 0, dun);
  };
  switch (io.op) {
    case Op::kRead:
      b.header = header(blk::kTypeIn, sector);
      b.in = io.in;
      break;
    case Op::kWrite:
      b.header = header(blk::kTypeOut, sector);
      b.out = io.out;
      break;
    case Op::kFlush:
      b.header = header(blk::kTypeFlush);
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes: {
      b.header = header(io.op == Op::kDiscard ? blk::kTypeDiscard : blk::kTypeWriteZeroes);
      blk::DiscardWriteZeroes seg{};
      seg.sector = sector;
      seg.num_sectors = static_cast<uint32_t>(len / kSectorSize);
      seg.flags = (io.op == Op::kWriteZeroes && io.unmap) ? blk::kWriteZeroesFlagUnmap : 0;
      b.segment.resize(sizeof seg);
      std::memcpy(b.segment.data(), &seg, sizeof seg);
      b.out = b.segment;
      break;
    }
    case Op::kGetId:
      b.header = header(blk::kTypeGetId);
      b.in = io.in;
      break;
    case Op::kGetCapabilities:
      b.header = header(blk::kTypeGetCryptoCaps);
      b.in = io.in;
      break;
  }
  return b;
}

}  // namespace iceblk::driver
