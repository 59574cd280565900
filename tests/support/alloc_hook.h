// Seeing every allocation of the process: malloc, calloc, realloc and the aligned
// forms (operator new ends in malloc). Link iceblk_alloc_hook (only into the tests
// that need it): its definitions in the executable interpose glibc's for every
// library. Under ASan or TSan the sanitizer owns malloc and nothing is seen.
#pragma once

#include "base/sanitizers.h"

#if ICEBLK_ASAN || ICEBLK_TSAN
#define ICEBLK_ALLOC_HOOK_SANITIZED 1
#endif

namespace iceblk::testing {

// Called on every allocation, from the allocating thread, while set; not for the
// observer's own allocations (it is not re-entered on the same thread).
using AllocObserver = void (*)();
void set_alloc_observer(AllocObserver observer);

}  // namespace iceblk::testing
