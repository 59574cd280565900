// libFuzzer target for iceblkd's JSON config parser (daemon::parse_config_text, the
// parser of the --config file and, through parse_export, of the control socket's
// add-export arguments) followed by the cross-field checks (daemon::validate).
//
// Input: the file's text, as is.
//
// Properties checked (__builtin_trap on violation), besides ASan/UBSan:
//   - a refusal is kInvalidArgument (bad JSON, field, type or value) or, from
//     validate(), kOutOfRange (a slot range outside the engine); never a crash, an
//     exception or another error class;
//   - a configuration that passes validate() has its exports' slot ranges inside the
//     engine and pairwise disjoint, and unique names and sockets.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iceblk;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cfg = daemon::parse_config_text(text, "fuzz.json");
  if (!cfg) {
    if (cfg.error().code != Errc::kInvalidArgument) __builtin_trap();
    return 0;
  }
  if (Status st = daemon::validate(*cfg); !st) {
    if (st.error().code != Errc::kInvalidArgument && st.error().code != Errc::kOutOfRange) __builtin_trap();
    return 0;
  }
  std::set<std::string> names, sockets;
  for (size_t i = 0; i < cfg->exports.size(); ++i) {
    const auto& a = cfg->exports[i];
    if (!names.insert(a.name).second || !sockets.insert(a.socket).second) __builtin_trap();
    if (!a.ice) continue;
    if (uint64_t{a.slot_offset} + a.max_slots > cfg->num_slots) __builtin_trap();
    for (size_t k = 0; k < i; ++k) {
      const auto& b = cfg->exports[k];
      if (!b.ice) continue;
      const bool disjoint = a.slot_offset + a.max_slots <= b.slot_offset || b.slot_offset + b.max_slots <= a.slot_offset;
      if (!disjoint) __builtin_trap();
    }
  }
  return 0;
}
