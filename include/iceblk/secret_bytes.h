// SecretBytes: key material. Move-only, zeroised (OPENSSL_cleanse) on destruction
// and on move-from, never formattable or streamable: there is deliberately no
// operator<< and no fmt::formatter, so key bytes cannot reach a log by accident.
// The bytes live in OpenSSL's secure heap when the process set one up (iceblkd:
// locked in RAM, excluded from core dumps), else on the ordinary heap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace iceblk {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::span<const uint8_t> bytes);
  explicit SecretBytes(size_t n);  // n zero bytes
  ~SecretBytes();

  SecretBytes(SecretBytes&& o) noexcept;
  SecretBytes& operator=(SecretBytes&& o) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  [[nodiscard]] std::span<const uint8_t> view() const { return {data_, size_}; }
  [[nodiscard]] std::span<uint8_t> mutable_view() { return {data_, size_}; }
  // Constant-time comparison.
  [[nodiscard]] bool equals(std::span<const uint8_t> other) const;
  // Zeroise and release now.
  void wipe();

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Zeroise any buffer that held key material.
void secure_zero(void* p, size_t n);

}  // namespace iceblk
