// Transport feature bits (VIRTIO 1.3 §6), shared by every device and driver here:
// the device side (blk, vhost_user session), the driver side (driver library) and
// the name table (blk::feature_names). Device-type bits live with their device
// (virtio-blk + ICE: blk/wire.h).
//
// <linux/virtio_ring.h> is not valid C++ (its inline vring_init converts void*), so
// its two feature bits are spelled out here, once.
#pragma once

#include <linux/virtio_config.h>

#include <cstdint>

namespace iceblk::virtio {

inline constexpr unsigned kFeatureIndirectDesc = 28;  // VIRTIO_RING_F_INDIRECT_DESC
inline constexpr unsigned kFeatureEventIdx = 29;      // VIRTIO_RING_F_EVENT_IDX
// Bit 30 is reserved by virtio for the transport; vhost-user uses it in GET/SET_FEATURES
// as VHOST_USER_F_PROTOCOL_FEATURES (QEMU docs/interop/vhost-user.rst). It is never a
// device feature: the session strips it before the device sees the negotiated set.
inline constexpr unsigned kFeatureVhostUserProtocol = 30;
inline constexpr unsigned kFeatureVersion1 = VIRTIO_F_VERSION_1;     // 32
inline constexpr unsigned kFeatureRingPacked = VIRTIO_F_RING_PACKED;  // 34

constexpr uint64_t feature_bit(unsigned b) { return uint64_t{1} << b; }
constexpr bool has_feature(uint64_t features, unsigned b) { return (features & feature_bit(b)) != 0; }

}  // namespace iceblk::virtio
