#include "base/secret_bytes.h"

#include <openssl/crypto.h>

#include <cstring>

namespace iceblk {

void secure_zero(void* p, size_t n) {
  if (p != nullptr && n != 0) OPENSSL_cleanse(p, n);
}

SecretBytes::SecretBytes(std::span<const uint8_t> bytes)
    : data_(new uint8_t[bytes.size()]), size_(bytes.size()) {
  if (!bytes.empty()) std::memcpy(data_.get(), bytes.data(), bytes.size());
}

SecretBytes::SecretBytes(size_t n) : data_(new uint8_t[n]()), size_(n) {}

SecretBytes::~SecretBytes() { wipe(); }

SecretBytes::SecretBytes(SecretBytes&& o) noexcept : data_(std::move(o.data_)), size_(o.size_) {
  o.size_ = 0;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& o) noexcept {
  if (this != &o) {
    wipe();
    data_ = std::move(o.data_);
    size_ = o.size_;
    o.size_ = 0;
  }
  return *this;
}

bool SecretBytes::equals(std::span<const uint8_t> other) const {
  if (other.size() != size_) return false;
  return size_ == 0 || CRYPTO_memcmp(data_.get(), other.data(), size_) == 0;
}

void SecretBytes::wipe() {
  secure_zero(data_.get(), size_);
  data_.reset();
  size_ = 0;
}

}  // namespace iceblk
