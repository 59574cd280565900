// Result<T> = tl::expected<T, Error>. Every fallible function returns one.
#pragma once

#include <tl/expected.hpp>

#include "iceblk/error.h"

namespace iceblk {

template <typename T>
using Result = tl::expected<T, Error>;
using Status = tl::expected<void, Error>;

inline tl::unexpected<Error> fail(Error e) { return tl::unexpected<Error>(std::move(e)); }

template <typename... Args>
tl::unexpected<Error> fail(Errc c, fmt::format_string<Args...> f, Args&&... args) {
  return tl::unexpected<Error>(make_error(c, f, std::forward<Args>(args)...));
}

}  // namespace iceblk

// Propagate an error from an expression returning Result/Status.
#define ICEBLK_TRY(expr)                                               \
  do {                                                                 \
    auto iceblk_try_r_ = (expr);                                       \
    if (!iceblk_try_r_) return tl::unexpected(std::move(iceblk_try_r_).error()); \
  } while (0)

// Assign the value of a Result expression to `lhs`, or propagate its error.
#define ICEBLK_ASSIGN_OR_RETURN(lhs, expr) ICEBLK_ASSIGN_OR_RETURN_IMPL(ICEBLK_CAT(r_, __LINE__), lhs, expr)
#define ICEBLK_CAT2(a, b) a##b
#define ICEBLK_CAT(a, b) ICEBLK_CAT2(a, b)
#define ICEBLK_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)               \
  auto tmp = (expr);                                               \
  if (!tmp) return tl::unexpected(std::move(tmp).error());         \
  lhs = std::move(*tmp)
