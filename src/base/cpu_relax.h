// A spin-wait hint for busy loops (the ring poller, the crypto pool's short wait):
// tells the CPU this is a spin, which saves power and lets a sibling hyperthread run.
#pragma once

namespace iceblk {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace iceblk
