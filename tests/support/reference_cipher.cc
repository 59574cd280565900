#include "support/reference_cipher.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstring>

namespace iceblk::test {

std::vector<uint8_t> reference_xts(std::span<const uint8_t> key, uint64_t dun0, std::span<const uint8_t> in,
                                   size_t dus, bool encrypt) {
  const EVP_CIPHER* c = key.size() == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts();
  std::vector<uint8_t> out(in.size());
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  for (size_t off = 0; off < in.size(); off += dus) {
    uint8_t iv[16] = {};
    const uint64_t dun = dun0 + off / dus;
    std::memcpy(iv, &dun, 8);
    EXPECT_EQ(EVP_CipherInit_ex(ctx, c, nullptr, key.data(), iv, encrypt ? 1 : 0), 1);
    int n = 0;
    EXPECT_EQ(EVP_CipherUpdate(ctx, out.data() + off, &n, in.data() + off, static_cast<int>(dus)), 1);
    EXPECT_EQ(n, static_cast<int>(dus));
    EXPECT_EQ(EVP_CipherFinal_ex(ctx, out.data() + off + n, &n), 1);
  }
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

}  // namespace iceblk::test
