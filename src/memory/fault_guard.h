// SIGBUS containment for guest memory (docs/threat-model.md, claim 11).
//
// TRUST: guest memory is a file the front-end shares with us. If it shrinks the file
// after SET_MEM_TABLE (possible when iceblkd runs with --allow-unsealed-memory), or a
// hugetlbfs file runs out of huge pages, the next access to the missing pages raises
// SIGBUS, which would end the whole daemon and every VM it serves.
//
// The guard is a process-wide SIGBUS handler (installed on the first registration)
// and a fixed-size, lock-free registry of the guest memory mappings. For a fault
// (BUS_ADRERR, BUS_MCEERR_AR) whose address lies in a registered range, the handler
// maps anonymous zero pages over the range from the faulting page to the end of the
// mapping (MAP_FIXED: the faulting instruction then retries and completes on them),
// marks the range poisoned and returns. The device's request path checks the flag
// (Mapping::poisoned(), GuestMemory::poisoned()) at safe points: it fails the
// connection's requests and closes it. Nothing unwinds out of the handler (no
// siglongjmp across C++ frames): the code that faulted simply sees zeros.
//
// Any other SIGBUS (outside every registered range, a misaligned access, or a SIGBUS
// sent by kill) is a real bug: the previous disposition is restored (SIG_DFL unless
// a sanitizer installed its own) and the signal is delivered again, so the process
// still dies with the real faulting context (and a core where enabled).
//
// Ordering: a range is registered after its mmap and unregistered before its munmap,
// so an address the kernel hands out again later is never found in the registry. A
// fault on a registered range comes from a thread that holds the mapping (a
// GuestMemory snapshot), so the mapping cannot be unmapped while its fault is handled.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/result.h"

namespace iceblk::memory::fault_guard {

// Registry capacity (every export's memory slots, inflight regions and the previous
// snapshots still in use). Registration fails with kBusy when it is full.
inline constexpr size_t kMaxRanges = 4096;

// Register [base, base + len) (len > 0), rounded up to whole granules. `granule` is
// the mapping's page size (a power of two: the base page size, or the huge page size
// of a hugetlbfs file; `base` is aligned to it); the handler replaces whole granules. Installs the handler on first use. Returns the
// registration id for poisoned() and unregister().
Result<uint32_t> register_range(void* base, size_t len, size_t granule);
// Forget a registration (before the range is unmapped).
void unregister_range(uint32_t id);
// True once a fault in that range was contained.
[[nodiscard]] bool poisoned(uint32_t id);

// Faults contained since the process started (tests, logs).
[[nodiscard]] uint64_t contained_faults();

}  // namespace iceblk::memory::fault_guard
