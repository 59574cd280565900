#include "ice/key_file.h"

#include <fstream>

namespace iceblk::ice {

namespace {

int hex_value(uint8_t ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

bool is_space(uint8_t ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

}  // namespace

Result<SecretBytes> parse_key_file(std::span<const uint8_t> contents, const CryptoMode& mode,
                                   std::string_view name) {
  ICEBLK_ASSIGN_OR_RETURN(size_t need, key_length(mode.alg, mode.key_size));
  const size_t n = contents.size();
  if (n > kMaxKeyFileSize)
    return fail(Errc::kInvalidArgument, "key file {} is too large for a key", name);
  if (n == need) return SecretBytes(contents);
  // Hex text: decode at most `need` bytes; one digit more means a wrong length.
  SecretBytes key(need);
  auto out = key.mutable_view();
  size_t digits = 0;
  bool is_hex = true;
  for (uint8_t ch : contents) {
    if (is_space(ch)) continue;
    const int v = hex_value(ch);
    if (v < 0) {
      is_hex = false;
      break;
    }
    if (digits / 2 < need) {
      out[digits / 2] = static_cast<uint8_t>(digits % 2 == 0 ? v << 4 : out[digits / 2] | v);
    }
    ++digits;
  }
  if (is_hex && digits == 2 * need) return key;
  const size_t got = is_hex && digits % 2 == 0 && digits > 0 ? digits / 2 : n;
  return fail(Errc::kInvalidArgument,
              "key file {}: {} needs a {}-byte key ({} hex digits), the file holds {} bytes", name,
              algorithm_name(mode.alg, mode.key_size), need, need * 2, got);
}

Result<SecretBytes> load_key_file(const std::string& path, const CryptoMode& mode) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return fail(Errc::kNotFound, "cannot open key file {}", path);
  // One byte more than the limit, so an over-long file is told apart from a full one.
  SecretBytes raw(kMaxKeyFileSize + 1);
  f.read(reinterpret_cast<char*>(raw.mutable_view().data()),
         static_cast<std::streamsize>(raw.size()));
  const auto n = static_cast<size_t>(f.gcount());
  return parse_key_file(raw.view().first(n), mode, path);
}

}  // namespace iceblk::ice
