#include "base/parse_size.h"

#include <charconv>

#include "base/checked.h"

namespace iceblk {

Result<uint64_t> parse_size(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    begin += 2;
    base = 16;
  }
  auto [ptr, ec] = std::from_chars(begin, end, value, base);
  if (ec == std::errc::result_out_of_range) return fail(Errc::kOverflow, "{}: '{}' is too large", what, text);
  if (ec != std::errc() || ptr == begin) {
    return fail(Errc::kInvalidArgument, "{}: '{}' is not a size (use e.g. 4096, 64K, 1G)", what, text);
  }
  const std::string_view suffix(ptr, static_cast<size_t>(end - ptr));
  unsigned shift = 0;
  if (suffix.empty() || suffix == "B" || suffix == "b") {
    shift = 0;
  } else if (suffix == "K" || suffix == "k" || suffix == "KiB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "m" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "g" || suffix == "GiB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "t" || suffix == "TiB") {
    shift = 40;
  } else {
    return fail(Errc::kInvalidArgument, "{}: unknown unit '{}' in '{}' (use K, M, G or T)", what, suffix, text);
  }
  auto bytes = checked_shl(value, shift);
  if (!bytes) return fail(Errc::kOverflow, "{}: '{}' is too large", what, text);
  return *bytes;
}

}  // namespace iceblk
