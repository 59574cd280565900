// libFuzzer target for key files (ice::parse_key_file, the parser behind the iceblk
// CLI's --key-file).
//
// Input: byte 0 picks the mode (its low 2 bits: AES-256-XTS, AES-128-XTS,
// AES-128-CBC-ESSIV, AES-256-ECB); the rest is the file's contents.
//
// Properties checked (__builtin_trap on violation), besides ASan/UBSan:
//   - a key that parses has exactly key_length() bytes; raw input of that length is
//     returned as is, and hex input decodes to the bytes an independent decoder gives;
//   - a refusal is kInvalidArgument, and its message is the same for any contents with
//     the same shape (hex digits swapped for others): it names lengths, never key bytes.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ice/key_file.h"

namespace {

bool reference_hex(std::span<const uint8_t> in, std::vector<uint8_t>& out) {
  std::string digits;
  for (uint8_t c : in) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') continue;
    if (!std::isxdigit(c)) return false;
    digits += static_cast<char>(c);
  }
  if (digits.empty() || digits.size() % 2) return false;
  for (size_t i = 0; i < digits.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iceblk;
  if (size < 1) return 0;
  static const ice::CryptoMode kModes[] = {
      {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096},
      {ice::Algorithm::kAesXts, ice::KeySize::k128, 4096},
      {ice::Algorithm::kEssivAesCbc, ice::KeySize::k128, 4096},
      {ice::Algorithm::kAesEcb, ice::KeySize::k256, 4096},
  };
  const ice::CryptoMode& mode = kModes[data[0] & 3];
  const std::span<const uint8_t> contents(data + 1, size - 1);
  auto need = ice::key_length(mode.alg, mode.key_size);
  if (!need) return 0;  // a mode this build does not know: nothing to check

  auto key = ice::parse_key_file(contents, mode, "fuzz.key");
  if (key) {
    if (key->size() != *need) __builtin_trap();
    if (contents.size() == *need) {
      if (!key->equals(contents)) __builtin_trap();
    } else {
      std::vector<uint8_t> want;
      if (!reference_hex(contents, want) || want.size() != *need || !key->equals(want))
        __builtin_trap();
    }
    return 0;
  }
  if (key.error().code != Errc::kInvalidArgument) __builtin_trap();
  // The message depends on lengths only: the same contents with every hex digit
  // replaced by 'a' (which keeps hex/non-hex, the digit count and the size) give the
  // very same message, so no key byte can be in it.
  std::vector<uint8_t> masked(contents.begin(), contents.end());
  for (auto& c : masked) {
    if (std::isxdigit(c)) c = 'a';
  }
  auto again = ice::parse_key_file(masked, mode, "fuzz.key");
  if (again || again.error().message != key.error().message) __builtin_trap();
  return 0;
}
