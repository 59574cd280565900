// Sizes and offsets as people write them on command lines and in config files.
#pragma once

#include <cstdint>
#include <string_view>

#include "base/result.h"

namespace iceblk {

// "4096", "0x1000", "64K", "4M", "1G", "2T" (also "KiB".."TiB", lower-case k/m/g/t,
// a trailing "B") -> bytes. kInvalidArgument for anything else, kOverflow above
// 2^64 - 1. `what` names the option in messages ("--size: '12Q' ...").
Result<uint64_t> parse_size(std::string_view text, std::string_view what);

}  // namespace iceblk
