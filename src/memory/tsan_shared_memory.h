// ThreadSanitizer and memory that two mappings share.
//
// The driver library and the device map the same memfd at two different addresses
// (in the integration tests, in one process). Requests hand a buffer from one
// device queue's worker to the other's through the driver: worker A publishes
// used->idx (release), the driver reads it (acquire) and re-posts the buffer on
// queue B (release of B's avail->idx), worker B reads that (acquire). TSan keys
// happens-before by address, and the driver's halves of that chain are at other
// addresses than the device's, so it would see workers A and B touch the buffer
// with no order between them and report a race that is not there.
//
// The ring index loads and stores (virtio/ring_atomics.h) therefore also acquire and
// release a key named by the shared file and offset, the same for every mapping of
// that byte: memory::Mapping notes each mapping here. In a build without TSan all of
// this compiles to nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__SANITIZE_THREAD__)
#define ICEBLK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ICEBLK_TSAN 1
#endif
#endif
#ifndef ICEBLK_TSAN
#define ICEBLK_TSAN 0
#endif

namespace iceblk::memory::tsan {

#if ICEBLK_TSAN
void note_mapping(const void* base, size_t len, int fd, uint64_t file_offset);
void forget_mapping(const void* base);
// Acquire / release the sync key of the byte at p (its file identity when p lies in a
// noted mapping, p itself otherwise).
void acquire(const void* p);
void release(const void* p);
#else
inline void note_mapping(const void*, size_t, int, uint64_t) {}
inline void forget_mapping(const void*) {}
inline void acquire(const void*) {}
inline void release(const void*) {}
#endif

}  // namespace iceblk::memory::tsan
