// Which sanitizer this translation unit is built with, for code and tests that must
// know (scripts/test.sh --sanitize, tests/fuzz): gcc says so with __SANITIZE_*__,
// clang with __has_feature. ICEBLK_ASAN and ICEBLK_TSAN are 0 or 1 (the same
// ICEBLK_TSAN, by the same test, as memory/tsan_shared_memory.h defines).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define ICEBLK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ICEBLK_ASAN 1
#endif
#endif
#ifndef ICEBLK_ASAN
#define ICEBLK_ASAN 0
#endif

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
