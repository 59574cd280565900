// The per-data-unit cipher (spec §5): OpenSSL 3 EVP, ciphers fetched once, keyed
// contexts cached per key (detail::CipherPool), per data unit only the IV is set.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <array>
#include <cstring>

#include "base/checked.h"
#include "base/secret_bytes.h"
#include "ice/engine.h"

namespace iceblk::ice {
namespace {

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }  // cleanses key data
};
using EvpCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

// Fetched once per process; EVP_CIPHER objects are immutable and shareable.
struct Ciphers {
  EVP_CIPHER* xts128 = nullptr;
  EVP_CIPHER* xts256 = nullptr;
  EVP_CIPHER* cbc128 = nullptr;
  EVP_CIPHER* ecb128 = nullptr;
  EVP_CIPHER* ecb256 = nullptr;  // also the ESSIV IV cipher
};

const Ciphers& ciphers() {
  // Kept for the process lifetime (reachable, not a leak).
  static const Ciphers c = [] {
    Ciphers r;
    r.xts128 = EVP_CIPHER_fetch(nullptr, "AES-128-XTS", nullptr);
    r.xts256 = EVP_CIPHER_fetch(nullptr, "AES-256-XTS", nullptr);
    r.cbc128 = EVP_CIPHER_fetch(nullptr, "AES-128-CBC", nullptr);
    r.ecb128 = EVP_CIPHER_fetch(nullptr, "AES-128-ECB", nullptr);
    r.ecb256 = EVP_CIPHER_fetch(nullptr, "AES-256-ECB", nullptr);
    return r;
  }();
  return c;
}

Error openssl_error(std::string_view what) {
  // OpenSSL error strings carry library/reason codes, never key bytes.
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  char buf[256] = {};
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  return make_error(Errc::kCrypto, "{} failed{}{}", what, e != 0 ? ": " : "", buf);
}

Result<const EVP_CIPHER*> cipher_for(const CryptoMode& m) {
  const Ciphers& c = ciphers();
  const EVP_CIPHER* r = nullptr;
  switch (m.alg) {
    case Algorithm::kAesXts: r = m.key_size == KeySize::k128 ? c.xts128 : c.xts256; break;
    case Algorithm::kEssivAesCbc: r = c.cbc128; break;
    case Algorithm::kAesEcb: r = m.key_size == KeySize::k128 ? c.ecb128 : c.ecb256; break;
    default: break;
  }
  if (r == nullptr) {
    return fail(Errc::kCrypto, "OpenSSL does not provide {}",
                algorithm_name(m.alg, m.key_size));
  }
  return r;
}

Result<EvpCtx> keyed_ctx(const EVP_CIPHER* cipher, std::span<const uint8_t> key, bool enc) {
  // The context and its provider state (the key schedule) go to the key arena:
  // locked, not in core dumps (base/secret_bytes.h); freed through the same hook.
  SecretAllocScope in_key_arena;
  EvpCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return fail(openssl_error("EVP_CIPHER_CTX_new"));
  if (EVP_CipherInit_ex2(ctx.get(), cipher, key.data(), nullptr, enc ? 1 : 0, nullptr) != 1) {
    return fail(openssl_error("cipher key setup"));
  }
  // Whole blocks only (data units are multiples of 16): no padding, nothing buffered.
  if (EVP_CIPHER_CTX_set_padding(ctx.get(), 0) != 1) return fail(openssl_error("set_padding"));
  return ctx;
}

}  // namespace

namespace detail {

// The keyed contexts of one key, one per direction (AES decryption uses a different
// key schedule), plus the ESSIV IV encryptor. Each is keyed on first use.
struct CipherSet {
  EvpCtx enc;
  EvpCtx dec;
  EvpCtx essiv;
};

CipherPool::CipherPool(CipherPool&& o) noexcept {
  std::lock_guard lock(o.mu_);
  idle_ = std::move(o.idle_);
  o.idle_.clear();
}

CipherPool::~CipherPool() {
  for (CipherSet* s : idle_) destroy(s);
}

CipherSet* CipherPool::acquire() {
  std::lock_guard lock(mu_);
  if (idle_.empty()) return nullptr;
  CipherSet* s = idle_.back();
  idle_.pop_back();
  return s;
}

void CipherPool::release(CipherSet* s) {
  std::lock_guard lock(mu_);
  try {
    idle_.push_back(s);
  } catch (...) {  // out of memory: drop the set rather than leak it
    destroy(s);
  }
}

void CipherPool::destroy(CipherSet* s) { delete s; }

}  // namespace detail

namespace {

// Borrows a keyed CipherSet from the key's pool for one crypt call. A set that saw
// an OpenSSL failure is destroyed instead of being returned.
class Lease {
 public:
  explicit Lease(detail::CipherPool& pool) : pool_(pool), set_(pool.acquire()) {}
  ~Lease() {
    if (set_ == nullptr) return;
    if (healthy_) {
      pool_.release(set_);
    } else {
      detail::CipherPool::destroy(set_);
    }
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  Status ensure(const Key& key, Direction dir) {
    if (set_ == nullptr) set_ = new detail::CipherSet();
    healthy_ = false;
    const bool enc = dir == Direction::kEncrypt;
    EvpCtx& ctx = enc ? set_->enc : set_->dec;
    if (!ctx) {
      ICEBLK_ASSIGN_OR_RETURN(const EVP_CIPHER* cipher, cipher_for(key.mode()));
      ICEBLK_ASSIGN_OR_RETURN(ctx, keyed_ctx(cipher, key.material(), enc));
    }
    if (key.mode().alg == Algorithm::kEssivAesCbc && !set_->essiv) {
      const EVP_CIPHER* ecb = ciphers().ecb256;
      if (ecb == nullptr) return fail(Errc::kCrypto, "OpenSSL does not provide AES-256-ECB");
      ICEBLK_ASSIGN_OR_RETURN(set_->essiv, keyed_ctx(ecb, key.essiv_salt(), true));
    }
    healthy_ = true;
    return {};
  }
  void mark_failed() { healthy_ = false; }
  detail::CipherSet& set() { return *set_; }

 private:
  detail::CipherPool& pool_;
  detail::CipherSet* set_;
  bool healthy_ = true;
};

}  // namespace

struct CryptContext::Impl {
  // Intentionally empty today: keyed state lives with the key (detail::CipherPool).
  // Kept so per-worker state (scratch buffers, counters) can be added without
  // changing the interface.
};

CryptContext::CryptContext() : impl_(std::make_unique<Impl>()) {}
CryptContext::~CryptContext() = default;

Status CryptContext::crypt(const ProgrammedKey& pk, Direction dir, Dun first,
                           std::span<uint8_t> buf) {
  const CryptoMode& mode = pk.key.mode();
  const size_t dus = mode.data_unit_size;
  // Spec §5 step 2: whole data units only.
  if (buf.empty() || buf.size() % dus != 0) {
    return fail(Errc::kMisaligned, "length {} is not a non-zero multiple of the data unit size {}",
                buf.size(), dus);
  }
  const uint64_t units = buf.size() / dus;
  // Spec §5 step 3: the last DUN must not wrap.
  if (!checked_add<uint64_t>(first.value, units - 1)) {
    return fail(Errc::kOverflow, "data unit numbers {} + {} units overflow 64 bits", first.value,
                units);
  }

  Lease lease(pk.cipher_cache);
  ICEBLK_TRY(lease.ensure(pk.key, dir));
  detail::CipherSet& set = lease.set();
  EVP_CIPHER_CTX* ctx = dir == Direction::kEncrypt ? set.enc.get() : set.dec.get();
  const bool enc = dir == Direction::kEncrypt;
  const int unit_len = static_cast<int>(dus);  // <= 65536

  std::array<uint8_t, 16> dun_block{};  // le64(dun) || le64(0), spec §5 step 4
  std::array<uint8_t, 16> essiv_iv{};
  for (uint64_t i = 0; i < units; ++i) {
    uint8_t* p = buf.data() + i * dus;
    const uint64_t dun = first.value + i;  // no wrap: checked above
    std::memcpy(dun_block.data(), &dun, sizeof dun);  // little-endian host (base/le.h)
    const uint8_t* iv = dun_block.data();
    switch (mode.alg) {
      case Algorithm::kEssivAesCbc: {
        int l = 0;
        if (EVP_EncryptUpdate(set.essiv.get(), essiv_iv.data(), &l, dun_block.data(), 16) != 1 ||
            l != 16) {
          lease.mark_failed();
          return fail(openssl_error("ESSIV IV encryption"));
        }
        iv = essiv_iv.data();
        [[fallthrough]];
      }
      case Algorithm::kAesXts: {
        // Key schedule kept: NULL cipher and key, only the IV / tweak changes.
        const int ok = enc ? EVP_EncryptInit_ex2(ctx, nullptr, nullptr, iv, nullptr)
                           : EVP_DecryptInit_ex2(ctx, nullptr, nullptr, iv, nullptr);
        if (ok != 1) {
          lease.mark_failed();
          return fail(openssl_error("setting the IV"));
        }
        break;
      }
      case Algorithm::kAesEcb:  // ECB ignores the DUN (spec §5 step 4)
        break;
      default:
        return fail(Errc::kUnsupported, "unsupported algorithm {}",
                    algorithm_name(mode.alg, mode.key_size));
    }
    int out = 0;
    if (EVP_CipherUpdate(ctx, p, &out, p, unit_len) != 1 || out != unit_len) {
      lease.mark_failed();
      return fail(openssl_error(enc ? "encryption" : "decryption"));
    }
  }
  OPENSSL_cleanse(essiv_iv.data(), essiv_iv.size());
  return {};
}

}  // namespace iceblk::ice
