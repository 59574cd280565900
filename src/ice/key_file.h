// Key files (the `iceblk` CLI's --key-file): raw key bytes, or the key as hex text
// with any whitespace. The contents come from a user's file, so the parser is
// fuzzed (tests/fuzz/key_file); messages name lengths, never key bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/result.h"
#include "base/secret_bytes.h"
#include "iceblk/crypto_mode.h"

namespace iceblk::ice {

// Largest key file read; a longer file cannot hold a key in either form.
inline constexpr size_t kMaxKeyFileSize = 4096;

// The key in `contents` (a file named `name`, for messages) for `mode`: exactly
// key_length() raw bytes, or 2 * key_length() hex digits (either case) with any
// whitespace. kInvalidArgument naming both lengths otherwise.
Result<SecretBytes> parse_key_file(std::span<const uint8_t> contents, const CryptoMode& mode,
                                   std::string_view name);

// Reads `path` (at most kMaxKeyFileSize bytes, into zeroised-on-free memory) and parses
// it. kNotFound when it cannot be opened.
Result<SecretBytes> load_key_file(const std::string& path, const CryptoMode& mode);

}  // namespace iceblk::ice
