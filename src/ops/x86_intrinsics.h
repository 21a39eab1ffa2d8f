// <immintrin.h> for the x86 kernels. GCC 12's AVX-512 intrinsics fill "undefined" operands with
// self-initialised variables, which -Wmaybe-uninitialized (or -Wuninitialized) flags once inlined
// (GCC PR 105593, fixed in GCC 13); those two warnings are off for the header only.
#pragma once

#if defined(__x86_64__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif
