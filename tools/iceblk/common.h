// Helpers shared by the iceblk subcommands.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/parse_size.h"
#include "base/result.h"
#include "base/secret_bytes.h"
#include "ice/crypto_mode.h"
#include "iceblk/device.h"

namespace iceblk::cli {

// Options every subcommand that talks to a device shares.
struct DeviceOptions {
  std::string socket;
  uint16_t queues = 1;
  uint16_t queue_size = 128;
  bool plain = false;          // do not negotiate ICE
  bool poll = false;           // poll for completions
  std::string secure_world;    // out-of-band key channel
  uint64_t memory = 128 << 20;
};

// Encryption options of read / write / verify / bench.
struct CryptOptions {
  std::string key_file;
  std::string algorithm = "aes-256-xts";
  uint32_t data_unit_size = 4096;
};

// Connect with a message a user can act on (missing socket, not a vhost-user
// back-end ...). An out-of-band device uses --secure-world, or <socket>.sw when
// that exists (iceblkd's default).
Result<std::unique_ptr<driver::Device>> open_device(const DeviceOptions& o);

// The mode named by --algorithm / --data-unit-size.
Result<ice::CryptoMode> crypto_mode(const CryptOptions& c);

// Random key material for the mode (OpenSSL RAND_bytes; XTS halves differ).
Result<SecretBytes> random_key(const ice::CryptoMode& mode);

// Register `key` as "cli" with the device (checks ICE, capabilities).
Status install_key(driver::Device& dev, const ice::CryptoMode& mode, const SecretBytes& key,
                   const std::string& name = "cli");

// Deterministic pattern: byte at absolute device offset `off` for `seed`.
void fill_pattern(uint64_t seed, uint64_t offset, std::span<uint8_t> buf);

// Progress line on stderr ("\r..."), only when stderr is a terminal or forced.
void progress(const std::string& line);
void progress_done();

}  // namespace iceblk::cli
