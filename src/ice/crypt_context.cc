// The per-data-unit cipher (spec §5): OpenSSL 3 ciphers fetched once, keyed
// contexts cached per key (detail::CipherPool), per data unit only the IV is set.
//
// Cost per data unit. OpenSSL 3.0's EVP layer makes a re-IV expensive:
// EVP_CipherInit_ex2(ctx, NULL, NULL, iv, ...) takes and drops a reference on the
// EVP_CIPHER (two atomic operations on an object every thread shares), re-sends the
// padding setting as an OSSL_PARAM when padding is off, and looks up the IV length
// before it reaches the provider's init; EVP_CipherUpdate adds its own checks. The
// provider's init with a NULL key only copies the IV (AES-XTS: aes_xts_init;
// CBC: cipher_generic_init_internal), and XTS takes no IV through set_ctx_params.
// So the engine keys and re-IVs its contexts through the provider's own dispatch
// table (OSSL_PROVIDER_query_operation on the provider EVP_CIPHER_fetch chose,
// public API of <openssl/core_dispatch.h>): the same implementation and the same
// bytes as EVP, without the per-call EVP overhead. bench/engine measures both.
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <string_view>

#include "base/checked.h"
#include "base/secret_bytes.h"
#include "ice/engine.h"

namespace iceblk::ice {
namespace {

// One cipher's implementation in its provider: the dispatch functions we call.
struct ProvCipher {
  const char* name = nullptr;
  // The fetched cipher, kept for the process lifetime (never freed): it holds the
  // provider the function pointers below belong to. Held here, not dropped, so it
  // stays reachable (LeakSanitizer reported the dropped pointer as a leak).
  EVP_CIPHER* fetched = nullptr;
  void* provctx = nullptr;
  OSSL_FUNC_cipher_newctx_fn* newctx = nullptr;
  OSSL_FUNC_cipher_freectx_fn* freectx = nullptr;
  OSSL_FUNC_cipher_encrypt_init_fn* einit = nullptr;
  OSSL_FUNC_cipher_decrypt_init_fn* dinit = nullptr;
  OSSL_FUNC_cipher_update_fn* update = nullptr;
  OSSL_FUNC_cipher_set_ctx_params_fn* set_ctx_params = nullptr;
  size_t key_len = 0;
  size_t iv_len = 0;
  [[nodiscard]] bool ok() const {
    return newctx && freectx && einit && dinit && update && set_ctx_params;
  }
};

// `names` is a provider's colon-separated name list ("AES-256-XTS:1.3.111...").
bool names_contain(std::string_view names, std::string_view name) {
  while (!names.empty()) {
    const size_t colon = names.find(':');
    const std::string_view n = names.substr(0, colon);
    if (n.size() == name.size() && std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) {
          return std::toupper(static_cast<unsigned char>(a)) ==
                 std::toupper(static_cast<unsigned char>(b));
        })) {
      return true;
    }
    if (colon == std::string_view::npos) break;
    names.remove_prefix(colon + 1);
  }
  return false;
}

// Fetch `name` the normal way (default library context and properties), then find
// the same algorithm in the dispatch table of the provider that fetch chose. The
// fetched EVP_CIPHER is kept for the process lifetime: it holds the provider, so
// the function pointers stay valid.
ProvCipher resolve(const char* name) {
  ProvCipher r;
  r.name = name;
  EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, name, nullptr);
  if (c == nullptr) {
    ERR_clear_error();
    return r;
  }
  r.fetched = c;
  r.key_len = static_cast<size_t>(EVP_CIPHER_get_key_length(c));
  r.iv_len = static_cast<size_t>(EVP_CIPHER_get_iv_length(c));
  OSSL_PROVIDER* prov = const_cast<OSSL_PROVIDER*>(EVP_CIPHER_get0_provider(c));
  int no_store = 0;
  const OSSL_ALGORITHM* algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_store);
  for (const OSSL_ALGORITHM* a = algs; a != nullptr && a->algorithm_names != nullptr; ++a) {
    if (!names_contain(a->algorithm_names, name)) continue;
    for (const OSSL_DISPATCH* d = a->implementation; d->function_id != 0; ++d) {
      switch (d->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX:
          r.newctx = OSSL_FUNC_cipher_newctx(d);
          break;
        case OSSL_FUNC_CIPHER_FREECTX:
          r.freectx = OSSL_FUNC_cipher_freectx(d);
          break;
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
          r.einit = OSSL_FUNC_cipher_encrypt_init(d);
          break;
        case OSSL_FUNC_CIPHER_DECRYPT_INIT:
          r.dinit = OSSL_FUNC_cipher_decrypt_init(d);
          break;
        case OSSL_FUNC_CIPHER_UPDATE:
          r.update = OSSL_FUNC_cipher_update(d);
          break;
        case OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
          r.set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(d);
          break;
        default:
          break;
      }
    }
    break;
  }
  if (algs != nullptr) OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
  r.provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
  return r;
}

// Resolved once per process; the dispatch tables are immutable and shareable.
struct Ciphers {
  ProvCipher xts128 = resolve("AES-128-XTS");
  ProvCipher xts256 = resolve("AES-256-XTS");
  ProvCipher cbc128 = resolve("AES-128-CBC");
  ProvCipher ecb128 = resolve("AES-128-ECB");
  ProvCipher ecb256 = resolve("AES-256-ECB");  // also the ESSIV IV cipher
};

const Ciphers& ciphers() {
  static const Ciphers c;
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

Result<const ProvCipher*> cipher_for(const CryptoMode& m) {
  const Ciphers& c = ciphers();
  const ProvCipher* r = nullptr;
  switch (m.alg) {
    case Algorithm::kAesXts:
      r = m.key_size == KeySize::k128 ? &c.xts128 : &c.xts256;
      break;
    case Algorithm::kEssivAesCbc:
      r = &c.cbc128;
      break;
    case Algorithm::kAesEcb:
      r = m.key_size == KeySize::k128 ? &c.ecb128 : &c.ecb256;
      break;
    default:
      break;
  }
  if (r == nullptr || !r->ok()) {
    return fail(Errc::kCrypto, "OpenSSL does not provide {}", algorithm_name(m.alg, m.key_size));
  }
  return r;
}

// A keyed provider cipher context of one direction.
class Keyed {
 public:
  Keyed() = default;
  Keyed(const Keyed&) = delete;
  Keyed& operator=(const Keyed&) = delete;
  ~Keyed() {
    if (ctx_ != nullptr) c_->freectx(ctx_);  // the provider cleanses key data
  }
  explicit operator bool() const { return ctx_ != nullptr; }

  Status key(const ProvCipher& c, std::span<const uint8_t> key, bool enc) {
    if (key.size() != c.key_len) {
      return fail(Errc::kCrypto, "{} takes a {}-byte key, not {}", c.name, c.key_len, key.size());
    }
    // The provider context holds the key schedule: allocate it in the key arena
    // (locked, not in core dumps; base/secret_bytes.h), freed through the same hook.
    SecretAllocScope in_key_arena;
    void* ctx = c.newctx(c.provctx);
    if (ctx == nullptr) return fail(openssl_error("cipher context allocation"));
    const int ok = enc ? c.einit(ctx, key.data(), key.size(), nullptr, 0, nullptr)
                       : c.dinit(ctx, key.data(), key.size(), nullptr, 0, nullptr);
    // Whole blocks only (data units are multiples of 16): no padding, so decryption
    // never holds a block back. XTS ignores the parameter.
    unsigned int pad = 0;
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_uint(OSSL_CIPHER_PARAM_PADDING, &pad),
                                 OSSL_PARAM_construct_end()};
    if (ok != 1 || c.set_ctx_params(ctx, params) != 1) {
      c.freectx(ctx);
      return fail(openssl_error("cipher key setup"));
    }
    c_ = &c;
    ctx_ = ctx;
    enc_ = enc;
    return {};
  }

  // Only the IV changes: the provider's init with a NULL key copies the IV and
  // keeps the key schedule.
  [[nodiscard]] bool set_iv(const uint8_t* iv) {
    return (enc_ ? c_->einit(ctx_, nullptr, 0, iv, c_->iv_len, nullptr)
                 : c_->dinit(ctx_, nullptr, 0, iv, c_->iv_len, nullptr)) == 1;
  }
  // `in` and `out` (n bytes each) are the same bytes or do not overlap.
  [[nodiscard]] bool update(const uint8_t* in, uint8_t* out, size_t n) {
    size_t outl = 0;
    return c_->update(ctx_, out, &outl, n, in, n) == 1 && outl == n;
  }

 private:
  const ProvCipher* c_ = nullptr;
  void* ctx_ = nullptr;
  bool enc_ = true;
};

}  // namespace

namespace detail {

// The keyed contexts of one key, one per direction (AES decryption uses a different
// key schedule), plus the ESSIV IV encryptor. Each is keyed on first use.
struct CipherSet {
  Keyed enc;
  Keyed dec;
  Keyed essiv;
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

void CipherPool::destroy(CipherSet* s) {
  delete s;
}

CipherLease::~CipherLease() {
  if (set_ == nullptr) return;
  if (healthy_) {
    pool_.release(set_);
  } else {
    CipherPool::destroy(set_);
  }
}

Status CipherLease::ensure(const Key& key, Direction dir) {
  if (set_ == nullptr) set_ = new CipherSet();
  healthy_ = false;
  const bool enc = dir == Direction::kEncrypt;
  Keyed& ctx = enc ? set_->enc : set_->dec;
  if (!ctx) {
    ICEBLK_ASSIGN_OR_RETURN(const ProvCipher* cipher, cipher_for(key.mode()));
    ICEBLK_TRY(ctx.key(*cipher, key.material(), enc));
  }
  if (key.mode().alg == Algorithm::kEssivAesCbc && !set_->essiv) {
    const ProvCipher& ecb = ciphers().ecb256;
    if (!ecb.ok()) return fail(Errc::kCrypto, "OpenSSL does not provide AES-256-ECB");
    ICEBLK_TRY(set_->essiv.key(ecb, key.essiv_salt(), true));
  }
  healthy_ = true;
  return {};
}

}  // namespace detail

namespace {

// Where a crypt call is in one iovec list.
class IovCursor {
 public:
  explicit IovCursor(std::span<const iovec> iov) : iov_(iov) {}
  // Skip `n` bytes; false if the list is shorter.
  bool skip(uint64_t n) {
    while (n > 0) {
      if (i_ == iov_.size()) return false;
      const uint64_t step = std::min<uint64_t>(n, iov_[i_].iov_len - off_);
      off_ += step;
      n -= step;
      if (off_ == iov_[i_].iov_len) next();
    }
    while (i_ < iov_.size() && iov_[i_].iov_len == 0) next();
    return true;
  }
  // The contiguous bytes at the cursor (0 at the end).
  [[nodiscard]] uint8_t* ptr() const { return static_cast<uint8_t*>(iov_[i_].iov_base) + off_; }
  [[nodiscard]] uint64_t run() const { return i_ < iov_.size() ? iov_[i_].iov_len - off_ : 0; }
  // Copy between the cursor's bytes and a flat block, advancing the cursor.
  void gather(uint8_t* to, uint64_t n) {
    while (n > 0) {
      const uint64_t step = std::min(n, run());
      std::memcpy(to, ptr(), step);
      to += step;
      n -= step;
      (void)skip(step);
    }
  }
  void scatter(const uint8_t* from, uint64_t n) {
    while (n > 0) {
      const uint64_t step = std::min(n, run());
      std::memcpy(ptr(), from, step);
      from += step;
      n -= step;
      (void)skip(step);
    }
  }

 private:
  void next() {
    ++i_;
    off_ = 0;
  }
  std::span<const iovec> iov_;
  size_t i_ = 0;
  uint64_t off_ = 0;
};

// Bytes of `iov` from `off` on; saturates on (impossible) overflow.
uint64_t bytes_from(std::span<const iovec> iov, uint64_t off) {
  uint64_t total = 0;
  for (const iovec& v : iov) total = checked_add<uint64_t>(total, v.iov_len).value_or(~uint64_t{0});
  return total >= off ? total - off : 0;
}

}  // namespace

struct CryptContext::Impl {
  // A data unit split across iovecs on either side is gathered here, crypted in
  // place and scattered: the side that must see only final output (the driver's
  // buffer on IN, the backend's on OUT) gets exactly that. Allocated once per worker.
  std::unique_ptr<uint8_t[]> scratch = std::make_unique<uint8_t[]>(kMaxDataUnitSize);
  ~Impl() { OPENSSL_cleanse(scratch.get(), kMaxDataUnitSize); }
};

// Resolving the ciphers (a fetch and a provider query each) happens when the first
// worker's context is made, not on its first request.
CryptContext::CryptContext() : impl_(std::make_unique<Impl>()) { (void)ciphers(); }
CryptContext::~CryptContext() = default;

Status CryptContext::crypt(const ProgrammedKey& pk, Direction dir, Dun first,
                           std::span<uint8_t> buf) {
  const iovec v{buf.data(), buf.size()};
  return crypt(pk, dir, first, {&v, 1}, 0, {&v, 1}, 0, buf.size());
}

Status CryptContext::crypt(const ProgrammedKey& pk, Direction dir, Dun first,
                           std::span<const uint8_t> in, std::span<uint8_t> out) {
  if (in.size() != out.size()) {
    return fail(Errc::kInvalidArgument, "input of {} bytes, output of {}", in.size(), out.size());
  }
  const iovec src{const_cast<uint8_t*>(in.data()), in.size()};
  const iovec dst{out.data(), out.size()};
  return crypt(pk, dir, first, {&src, 1}, 0, {&dst, 1}, 0, in.size());
}

Status CryptContext::check(const ProgrammedKey& pk, Dun first, std::span<const iovec> src,
                           uint64_t src_off, std::span<const iovec> dst, uint64_t dst_off,
                           uint64_t len) {
  const size_t dus = pk.key.mode().data_unit_size;
  // Spec §5 step 2: whole data units only.
  if (len == 0 || len % dus != 0) {
    return fail(Errc::kMisaligned, "length {} is not a non-zero multiple of the data unit size {}",
                len, dus);
  }
  const uint64_t units = len / dus;
  // Spec §5 step 3: the last DUN must not wrap.
  if (!checked_add<uint64_t>(first.value, units - 1)) {
    return fail(Errc::kOverflow, "data unit numbers {} + {} units overflow 64 bits", first.value,
                units);
  }
  if (bytes_from(src, src_off) < len || bytes_from(dst, dst_off) < len) {
    return fail(Errc::kOutOfRange, "{} bytes at {} / {} exceed the source or destination buffers",
                len, src_off, dst_off);
  }
  return {};
}

Status CryptContext::crypt(const ProgrammedKey& pk, Direction dir, Dun first,
                           std::span<const iovec> src, uint64_t src_off, std::span<const iovec> dst,
                           uint64_t dst_off, uint64_t len) {
  ICEBLK_TRY(check(pk, first, src, src_off, dst, dst_off, len));
  detail::CipherLease lease(pk.cipher_cache);
  ICEBLK_TRY(lease.ensure(pk.key, dir));
  return crypt_leased(lease, pk, dir, first, src, src_off, dst, dst_off, len);
}

Status CryptContext::crypt_leased(detail::CipherLease& lease, const ProgrammedKey& pk,
                                  Direction dir, Dun first, std::span<const iovec> src,
                                  uint64_t src_off, std::span<const iovec> dst, uint64_t dst_off,
                                  uint64_t len) {
  const CryptoMode& mode = pk.key.mode();
  const size_t dus = mode.data_unit_size;
  const uint64_t units = len / dus;
  IovCursor in(src), out(dst);
  (void)in.skip(src_off);
  (void)out.skip(dst_off);

  detail::CipherSet& set = lease.set();
  const bool enc = dir == Direction::kEncrypt;
  Keyed& ctx = enc ? set.enc : set.dec;
  uint8_t* scratch = impl_->scratch.get();

  std::array<uint8_t, 16> dun_block{};  // le64(dun) || le64(0), spec §5 step 4
  std::array<uint8_t, 16> essiv_iv{};
  for (uint64_t i = 0; i < units; ++i) {
    const uint64_t dun = first.value + i;             // no wrap: checked above
    std::memcpy(dun_block.data(), &dun, sizeof dun);  // little-endian host (base/le.h)
    const uint8_t* iv = dun_block.data();
    switch (mode.alg) {
      case Algorithm::kEssivAesCbc:
        if (!set.essiv.update(dun_block.data(), essiv_iv.data(), 16)) {
          lease.mark_failed();
          return fail(openssl_error("ESSIV IV encryption"));
        }
        iv = essiv_iv.data();
        [[fallthrough]];
      case Algorithm::kAesXts:
        if (!ctx.set_iv(iv)) {
          lease.mark_failed();
          return fail(openssl_error("setting the IV"));
        }
        break;
      case Algorithm::kAesEcb:  // ECB ignores the DUN (spec §5 step 4)
        break;
      default:
        return fail(Errc::kUnsupported, "unsupported algorithm {}",
                    algorithm_name(mode.alg, mode.key_size));
    }
    bool ok = false;
    if (in.run() >= dus && out.run() >= dus) {
      ok = ctx.update(in.ptr(), out.ptr(), dus);  // the common case: no copy
      (void)in.skip(dus);
      (void)out.skip(dus);
    } else {
      in.gather(scratch, dus);
      ok = ctx.update(scratch, scratch, dus);
      if (ok) out.scatter(scratch, dus);
    }
    if (!ok) {
      lease.mark_failed();
      return fail(openssl_error(enc ? "encryption" : "decryption"));
    }
  }
  OPENSSL_cleanse(essiv_iv.data(), essiv_iv.size());
  return {};
}

}  // namespace iceblk::ice
