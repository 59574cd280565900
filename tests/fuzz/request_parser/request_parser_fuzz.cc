// libFuzzer target for the virtio-blk + ICE request parser (src/blk/request.cc,
// parse_request / locate_status / status_for).
//
// Input layout (all little-endian):
//   [0]      feature flags: bit0 VIRTIO_BLK_F_ICE, bit1 ICE_INBAND_KEYS, bit2 DISCARD +
//            WRITE_ZEROES, bit3 read-only device
//   [1]      number of readable segments  (b % 9)
//   [2]      number of writable segments  (b % 9)
//   [3]      reserved
//   [4..]    (readable + writable) segment descriptors, 4 bytes each:
//            le16 offset into the memory image, le16 length
//   [...]    guest memory image (at guest address kBase), zero-padded to >= 64 bytes
// Segments are clamped to the image, as the chain walker guarantees (the parser's
// contract: segments already lie in guest memory). The device behind the parser is
// a real BlkDevice over a memory backend with an ICE engine whose VM owns physical
// slots [8, 12), slots 8 and 9 programmed (AES-256-XTS/4096, AES-128-XTS/512).
// Every iovec of a parsed request is read byte by byte (ASan checks the bounds), the
// status byte is written, and errors must map to IOERR or UNSUPP.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/block_backend.h"
#include "blk/device.h"
#include "blk/request.h"
#include "blk/wire.h"
#include "ice/engine.h"
#include "ice/key.h"
#include "memory/guest_memory.h"

namespace {

using namespace iceblk;

constexpr uint64_t kBase = 0x20000;
constexpr size_t kHeader = 4;

struct World {
  std::shared_ptr<ice::Engine> engine;
  std::unique_ptr<blk::BlkDevice> dev;
};

World& world() {
  static World* w = [] {
    auto* x = new World();
    auto e = ice::Engine::create({});
    if (!e) __builtin_trap();
    x->engine = std::shared_ptr<ice::Engine>(std::move(*e));
    auto vm = x->engine->add_vm("fuzz", {8, 4});
    if (!vm) __builtin_trap();
    std::vector<uint8_t> k256(64), k128(32);
    for (size_t i = 0; i < k256.size(); ++i) k256[i] = static_cast<uint8_t>(i * 7 + 1);
    for (size_t i = 0; i < k128.size(); ++i) k128[i] = static_cast<uint8_t>(i * 13 + 5);
    auto a = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, k256);
    auto b = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k128, 512}, k128);
    if (!a || !b || !x->engine->program(PhysSlot(8), std::move(*a)) ||
        !x->engine->program(PhysSlot(9), std::move(*b))) {
      __builtin_trap();
    }
    auto be = backend::make_memory_backend(1 << 20);
    if (!be) __builtin_trap();
    blk::BlkDeviceConfig cfg;
    cfg.engine = x->engine;
    cfg.vm = *vm;
    cfg.max_discard_seg = 4;
    cfg.max_write_zeroes_seg = 4;
    auto d = blk::BlkDevice::create(cfg, std::shared_ptr<backend::BlockBackend>(std::move(*be)));
    if (!d) __builtin_trap();
    x->dev = std::move(*d);
    return x;
  }();
  return *w;
}

uint16_t le16_at(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  World& w = world();
  const uint8_t flags = data[0];
  const size_t n_r = data[1] % 9;
  const size_t n_w = data[2] % 9;
  const size_t seg_bytes = 4 * (n_r + n_w);
  if (size < kHeader + seg_bytes) return 0;
  const uint8_t* segs = data + kHeader;
  const uint8_t* img_in = segs + seg_bytes;
  const size_t img_in_len = size - kHeader - seg_bytes;

  std::vector<uint8_t> image(std::max<size_t>(img_in_len, 64), 0);
  std::memcpy(image.data(), img_in, img_in_len);
  memory::Region r;
  r.guest_addr = kBase;
  r.size = image.size();
  r.user_addr = kBase;
  r.host = image.data();
  std::vector<memory::Region> regions{r};
  auto gm = memory::GuestMemory::create(std::move(regions));
  if (!gm) __builtin_trap();

  virtio::DescriptorChain chain;
  chain.head = 0;
  for (size_t i = 0; i < n_r + n_w; ++i) {
    const uint64_t off = le16_at(segs + 4 * i) % image.size();
    const uint64_t len = std::min<uint64_t>(le16_at(segs + 4 * i + 2), image.size() - off);
    virtio::Segment s{GuestAddr(kBase + off), static_cast<uint32_t>(len)};
    if (i < n_r) {
      chain.readable.push_back(s);
      chain.readable_len += len;
    } else {
      chain.writable.push_back(s);
      chain.writable_len += len;
    }
  }

  uint64_t features = w.dev->offered_features();
  features &= ~(blk::feature_bit(blk::kFeatureIce) | blk::feature_bit(blk::kFeatureIceInbandKeys) |
                blk::feature_bit(blk::kFeatureDiscard) | blk::feature_bit(blk::kFeatureWriteZeroes));
  if (flags & 1) features |= blk::feature_bit(blk::kFeatureIce);
  if ((flags & 3) == 3) features |= blk::feature_bit(blk::kFeatureIceInbandKeys);
  if (flags & 4) features |= blk::feature_bit(blk::kFeatureDiscard) | blk::feature_bit(blk::kFeatureWriteZeroes);
  if (!w.dev->set_features(features)) __builtin_trap();
  blk::ParseEnv env = w.dev->parse_env();
  env.read_only = (flags & 8) != 0;

  auto st = blk::locate_status(chain, *gm);
  auto req = blk::parse_request(chain, *gm, env);
  // parse_request fails with kProtocol exactly when there is no status byte.
  if (!st && req) __builtin_trap();
  if (st && !req && req.error().code == Errc::kProtocol) __builtin_trap();
  if (!req) {
    const uint8_t s = blk::status_for(req.error());
    if (s != blk::kStatusIoErr && s != blk::kStatusUnsupp) __builtin_trap();
    if (st) **st = s;
    return 0;
  }
  // Touch every byte the request would make the device read or write.
  volatile uint8_t sink = 0;
  for (const auto& v : req->data) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    for (size_t i = 0; i < v.iov_len; ++i) sink = static_cast<uint8_t>(sink + p[i]);
  }
  *req->status = blk::kStatusOk;
  uint64_t total = 0;
  for (const auto& v : req->data) total += v.iov_len;
  if ((req->kind == blk::RequestKind::kIn || req->kind == blk::RequestKind::kOut) && total != req->length) {
    __builtin_trap();
  }
  if (req->kind == blk::RequestKind::kOut && env.read_only) __builtin_trap();
  if (req->encrypted()) {
    const uint32_t dus = req->key->key.mode().data_unit_size;
    if (req->offset % dus != 0 || req->length % dus != 0) __builtin_trap();
  }
  return 0;
}
