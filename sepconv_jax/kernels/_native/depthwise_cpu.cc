// Depthwise convolution on the CPU, called from XLA through its FFI.
//
// Three handlers, one per map of sepconv_jax.kernels.op: the forward convolution,
// its transpose in the input (the input gradient) and its transpose in the kernel
// (the kernel gradient). Each takes float32 channels-last arrays of one image batch:
//
//   x, dx: (N, H, W, C)     y, g: (N, OH, OW, C)     kernel, dkernel: (KH, KW, C)
//
// with zero padding, and one int64 array attribute "geometry":
//
//   (N, H, W, C, OH, OW, KH, KW, stride_h, stride_w, dilation_h, dilation_w,
//    pad_top, pad_left)
//
// A 1-D problem is passed with H = OH = KH = 1. The Python side
// (sepconv_jax/kernels/native.py) checks every shape before the call.
//
// The loops keep blocks of channels in SIMD registers while they sum a pixel's taps,
// and skip the taps that fall in the padding by precomputed ranges rather than
// reading zeros. Channels are the innermost, contiguous dimension. The forward loop
// goes pixel by pixel in memory order (all channels of a pixel, then the next) and,
// inside the row, four output pixels at a time, loading each tap's weights once for
// the four. Work is split over rows of the image and shared with XLA's intra-op
// thread pool; the calling thread takes rows too, so a call never waits on a queued
// task. The kernel gradient sums per fixed chunk of rows and then adds the chunks in
// order, so its result does not depend on the number of threads.
//
// The library is built with -O3 -march=native for the machine that runs it
// (sepconv_jax/kernels/native.py); the vector types are GCC/Clang extensions, so
// it builds for any x86-64 or Arm CPU those compilers target.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw;
};

// Runs body(t) for t in [0, tasks) on the calling thread and the pool's threads.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t tasks, const F& body) {
  if (tasks <= 0) return;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks - 1);
  if (helpers <= 0) {
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;
  // A helper that starts after every task was taken returns at once without
  // touching `body`, so it may outlive this call.
  auto run = [state, tasks, fn]() {
    for (int64_t t; (t = state->next.fetch_add(1)) < tasks;) {
      (*fn)(t);
      if (state->done.fetch_add(1) + 1 == tasks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([run] { run(); });
  run();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == tasks; });
}

// One SIMD register of floats: 16 lanes where the compiler targets AVX-512, else 8
// (AVX2, or two SSE registers). GCC and Clang vector extensions, so the same code
// builds for any x86-64 or Arm CPU.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// NV registers of accumulators for a block of NV * kLanes channels (NV = 0: one
// channel, scalar), kept in registers across a pixel's taps.
template <int NV>
struct Acc {
  static constexpr int kRegisters = NV;
  Vec v[NV];
  Acc() {
    for (int r = 0; r < NV; ++r) v[r] = Vec{};
  }
  void Fma(const float* a, const float* b) {
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r) v[r] += Load(a + r * kLanes) * Load(b + r * kLanes);
  }
  void StoreTo(float* p) const {
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r) Store(p + r * kLanes, v[r]);
  }
  void AddTo(float* p) const {
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r) Store(p + r * kLanes, Load(p + r * kLanes) + v[r]);
  }
};
template <>
struct Acc<0> {
  static constexpr int kRegisters = 0;
  float v = 0.0f;
  void Fma(const float* a, const float* b) { v += *a * *b; }
  void StoreTo(float* p) const { *p = v; }
  void AddTo(float* p) const { *p += v; }
};

// Calls block(Acc<NV>{}, c0) over [0, c) in blocks of 8, 4, 2 and 1 registers of
// channels, then single channels.
template <typename F>
inline void ForChannelBlocks(int64_t c, const F& block) {
  int64_t c0 = 0;
  for (; c0 + 8 * kLanes <= c; c0 += 8 * kLanes) block(Acc<8>{}, c0);
  for (; c0 + 4 * kLanes <= c; c0 += 4 * kLanes) block(Acc<4>{}, c0);
  for (; c0 + 2 * kLanes <= c; c0 += 2 * kLanes) block(Acc<2>{}, c0);
  for (; c0 + kLanes <= c; c0 += kLanes) block(Acc<1>{}, c0);
  for (; c0 < c; ++c0) block(Acc<0>{}, c0);
}

// The taps [lo, hi) of a window of `k` taps (dilation `d`) that land inside
// [0, size) for the output position `o` (stride `s`, low padding `p`).
inline void TapRange(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t size,
                     int64_t* lo, int64_t* hi) {
  const int64_t start = o * s - p;  // input position of tap 0
  int64_t a = start >= 0 ? 0 : (-start + d - 1) / d;
  int64_t b = start + (k - 1) * d < size ? k : (size - 1 - start) / d + 1;
  if (start > size - 1) b = 0;
  *lo = std::min(a, k);
  *hi = std::max(*lo, std::min(b, k));
}

// ---------------------------------------------------------------- forward

// Output pixels per tile of the forward loop: a tile loads each tap's weights once
// for kTile pixels, so a multiply-add reads one vector from memory instead of two.
constexpr int kTile = 4;

// One output pixel, channels [c0, c0 + width), its taps [ilo, ihi) x [jlo, jhi).
template <typename A>
inline void ForwardPixel(A acc, const float* x_img, const float* k, float* y_row,
                         const Geometry& g, int64_t oh, int64_t ow, int64_t c0, int64_t ilo,
                         int64_t ihi, int64_t jlo, int64_t jhi) {
  const int64_t iw0 = ow * g.sw - g.pw;
  for (int64_t i = ilo; i < ihi; ++i) {
    const int64_t ih = oh * g.sh - g.ph + i * g.dh;
    const float* xr = x_img + ih * g.w * g.c + c0;
    const float* kr = k + i * g.kw * g.c + c0;
    for (int64_t j = jlo; j < jhi; ++j) acc.Fma(xr + (iw0 + j * g.dw) * g.c, kr + j * g.c);
  }
  acc.StoreTo(y_row + ow * g.c + c0);
}

// kTile output pixels [ow0, ow0 + kTile) whose windows lie inside the row (every
// column tap valid), NV registers of channels from c0.
template <int NV>
inline void ForwardTile(const float* x_img, const float* k, float* y_row, const Geometry& g,
                        int64_t oh, int64_t ow0, int64_t c0, int64_t ilo, int64_t ihi) {
  Vec acc[kTile][NV];
  for (int p = 0; p < kTile; ++p)
    for (int r = 0; r < NV; ++r) acc[p][r] = Vec{};
  const int64_t step = g.sw * g.c;
  for (int64_t i = ilo; i < ihi; ++i) {
    const int64_t ih = oh * g.sh - g.ph + i * g.dh;
    const float* xr = x_img + ih * g.w * g.c + (ow0 * g.sw - g.pw) * g.c + c0;
    const float* kr = k + i * g.kw * g.c + c0;
    for (int64_t j = 0; j < g.kw; ++j) {
      Vec w[NV];
      for (int r = 0; r < NV; ++r) w[r] = Load(kr + j * g.c + r * kLanes);
      const float* xp = xr + j * g.dw * g.c;
#pragma GCC unroll 4
      for (int p = 0; p < kTile; ++p)
#pragma GCC unroll 2
        for (int r = 0; r < NV; ++r) acc[p][r] += Load(xp + p * step + r * kLanes) * w[r];
    }
  }
  for (int p = 0; p < kTile; ++p)
    for (int r = 0; r < NV; ++r) Store(y_row + (ow0 + p) * g.c + c0 + r * kLanes, acc[p][r]);
}

void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* k,
             float* y) {
  std::vector<int64_t> jlo(g.ow), jhi(g.ow);
  for (int64_t ow = 0; ow < g.ow; ++ow) TapRange(ow, g.sw, g.pw, g.dw, g.kw, g.w, &jlo[ow], &jhi[ow]);
  // The interior [a, b): output columns whose every column tap lands in the input.
  int64_t a = 0, b = 0;
  for (int64_t ow = 0; ow < g.ow; ++ow) {
    if (jlo[ow] == 0 && jhi[ow] == g.kw) {
      if (b <= a) a = ow;
      b = ow + 1;
    }
  }
  ParallelFor(pool, g.n * g.oh, [&](int64_t row) {
    const int64_t n = row / g.oh, oh = row % g.oh;
    int64_t ilo, ihi;
    TapRange(oh, g.sh, g.ph, g.dh, g.kh, g.h, &ilo, &ihi);
    const float* x_img = x + n * g.h * g.w * g.c;
    float* y_row = y + row * g.ow * g.c;
    // Pixel by pixel, all channels of a pixel (or tile) before the next, so that
    // x and y are read and written in memory order.
    auto blocks = [&](const auto& fn) {
      int64_t c0 = 0;
      for (; c0 + 2 * kLanes <= g.c; c0 += 2 * kLanes) fn(Acc<2>{}, c0);
      for (; c0 + kLanes <= g.c; c0 += kLanes) fn(Acc<1>{}, c0);
      for (; c0 < g.c; ++c0) fn(Acc<0>{}, c0);
    };
    auto pixel = [&](int64_t ow) {
      blocks([&](auto zero, int64_t c0) {
        ForwardPixel(zero, x_img, k, y_row, g, oh, ow, c0, ilo, ihi, jlo[ow], jhi[ow]);
      });
    };
    for (int64_t ow = 0; ow < a; ++ow) pixel(ow);
    int64_t ow = a;
    for (; ow + kTile <= b; ow += kTile) {
      blocks([&](auto zero, int64_t c0) {
        constexpr int NV = decltype(zero)::kRegisters;
        if constexpr (NV > 0) {
          ForwardTile<NV>(x_img, k, y_row, g, oh, ow, c0, ilo, ihi);
        } else {
          for (int p = 0; p < kTile; ++p)
            ForwardPixel(zero, x_img, k, y_row, g, oh, ow + p, c0, ilo, ihi, 0, g.kw);
        }
      });
    }
    for (; ow < g.ow; ++ow) pixel(ow);
  });
}

// ---------------------------------------------------------------- input gradient

// The (tap, output position) pairs that read input position `in` along one axis.
void Contributors(int64_t in, int64_t s, int64_t p, int64_t d, int64_t k, int64_t out_size,
                  std::vector<int64_t>* taps, std::vector<int64_t>* outs) {
  taps->clear();
  outs->clear();
  for (int64_t t = 0; t < k; ++t) {
    const int64_t num = in + p - t * d;  // = o * s
    if (num < 0 || num % s != 0) continue;
    const int64_t o = num / s;
    if (o >= out_size) continue;
    taps->push_back(t);
    outs->push_back(o);
  }
}

void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* gy, const float* k,
               float* dx) {
  if (g.sh == 1 && g.sw == 1) {
    // Unstrided, the transpose is the forward correlation of g with the flipped
    // kernel: dx[i] = sum_t g[i + p - t d] k[t] = sum_t g[i - p' + t d] k[KH-1-t]
    // with p' = (K - 1) d - p (negative where the padding exceeds the window).
    std::vector<float> flipped(g.kh * g.kw * g.c);
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j)
        std::memcpy(&flipped[((g.kh - 1 - i) * g.kw + (g.kw - 1 - j)) * g.c],
                    k + (i * g.kw + j) * g.c, g.c * sizeof(float));
    const Geometry t{g.n,  g.oh, g.ow, g.c,  g.h,  g.w,
                     g.kh, g.kw, 1,    1,    g.dh, g.dw,
                     (g.kh - 1) * g.dh - g.ph, (g.kw - 1) * g.dw - g.pw};
    Forward(pool, t, gy, flipped.data(), dx);
    return;
  }
  // Per input column, the (tap, output column) pairs, kw slots each.
  std::vector<int64_t> col_tap(g.w * g.kw), col_out(g.w * g.kw), col_count(g.w);
  {
    std::vector<int64_t> taps, outs;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      Contributors(iw, g.sw, g.pw, g.dw, g.kw, g.ow, &taps, &outs);
      col_count[iw] = static_cast<int64_t>(taps.size());
      std::copy(taps.begin(), taps.end(), col_tap.begin() + iw * g.kw);
      std::copy(outs.begin(), outs.end(), col_out.begin() + iw * g.kw);
    }
  }
  ParallelFor(pool, g.n * g.h, [&](int64_t row) {
    const int64_t n = row / g.h, ih = row % g.h;
    std::vector<int64_t> row_tap, row_out;
    Contributors(ih, g.sh, g.ph, g.dh, g.kh, g.oh, &row_tap, &row_out);
    const float* g_img = gy + n * g.oh * g.ow * g.c;
    float* dx_row = dx + row * g.w * g.c;
    const int64_t rows = static_cast<int64_t>(row_tap.size());
    for (int64_t iw = 0; iw < g.w; ++iw) {  // pixel-major, as in Forward
      const int64_t* ct = col_tap.data() + iw * g.kw;
      const int64_t* co = col_out.data() + iw * g.kw;
      ForChannelBlocks(g.c, [&](auto zero, int64_t c0) {
        auto acc = zero;
        for (int64_t r = 0; r < rows; ++r) {
          const float* gr = g_img + row_out[r] * g.ow * g.c + c0;
          const float* kr = k + row_tap[r] * g.kw * g.c + c0;
          for (int64_t m = 0; m < col_count[iw]; ++m) acc.Fma(gr + co[m] * g.c, kr + ct[m] * g.c);
        }
        acc.StoreTo(dx_row + iw * g.c + c0);
      });
    }
  });
}

// ---------------------------------------------------------------- kernel gradient

constexpr int64_t kKernelGradChunks = 16;

void KernelGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* gy,
                float* dk) {
  const int64_t rows = g.n * g.oh;
  const int64_t taps = g.kh * g.kw * g.c;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, kKernelGradChunks));
  std::vector<float> partial(chunks * taps, 0.0f);
  std::vector<int64_t> owlo(g.kw), owhi(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) {
    // Output columns whose tap j lands inside the input.
    const int64_t off = j * g.dw - g.pw;  // iw = ow * sw + off
    int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
    int64_t hi = g.w - 1 - off < 0 ? 0 : (g.w - 1 - off) / g.sw + 1;
    owlo[j] = std::min(lo, g.ow);
    owhi[j] = std::max(owlo[j], std::min(hi, g.ow));
  }
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* part = partial.data() + chunk * taps;
    const int64_t r0 = rows * chunk / chunks, r1 = rows * (chunk + 1) / chunks;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / g.oh, oh = row % g.oh;
      const float* x_img = x + n * g.h * g.w * g.c;
      const float* g_row = gy + row * g.ow * g.c;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        const float* x_row = x_img + ih * g.w * g.c;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t off = j * g.dw - g.pw;
          float* pj = part + (i * g.kw + j) * g.c;
          ForChannelBlocks(g.c, [&](auto zero, int64_t c0) {
            auto acc = zero;
            for (int64_t ow = owlo[j]; ow < owhi[j]; ++ow) {
              acc.Fma(x_row + (ow * g.sw + off) * g.c + c0, g_row + ow * g.c + c0);
            }
            acc.AddTo(pj + c0);
          });
        }
      }
    }
  });
  std::memcpy(dk, partial.data(), taps * sizeof(float));
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* part = partial.data() + chunk * taps;
    for (int64_t t = 0; t < taps; ++t) dk[t] += part[t];
  }
}

// ---------------------------------------------------------------- FFI

ffi::Error ReadGeometry(ffi::Span<const int64_t> attr, Geometry* g) {
  if (attr.size() != 14) return ffi::Error::InvalidArgument("geometry must hold 14 integers");
  const int64_t* a = attr.begin();
  *g = Geometry{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11],
                a[12], a[13]};
  if (g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1)
    return ffi::Error::InvalidArgument("strides and dilations must be positive");
  return ffi::Error::Success();
}

ffi::Error CheckSize(size_t got, int64_t want, const char* what) {
  if (static_cast<int64_t>(got) != want)
    return ffi::Error::InvalidArgument(std::string(what) + " has the wrong number of elements");
  return ffi::Error::Success();
}

#define SEPCONV_RETURN_IF_ERROR(expr)    \
  do {                                   \
    ffi::Error _error = (expr);          \
    if (_error.failure()) return _error; \
  } while (0)

enum class Map { kForward, kInputGrad, kKernelGrad };

// One handler: checks the element counts of the operands a, b and the result
// against the geometry, then runs map M.
template <Map M>
ffi::Error Run(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> result, ffi::Span<const int64_t> geometry) {
  Geometry g;
  SEPCONV_RETURN_IF_ERROR(ReadGeometry(geometry, &g));
  const int64_t in = g.n * g.h * g.w * g.c, out = g.n * g.oh * g.ow * g.c;
  const int64_t taps = g.kh * g.kw * g.c;
  const int64_t sizes[3][3] = {{in, taps, out}, {out, taps, in}, {in, out, taps}};
  const int64_t* want = sizes[static_cast<int>(M)];
  SEPCONV_RETURN_IF_ERROR(CheckSize(a.element_count(), want[0], "the first operand"));
  SEPCONV_RETURN_IF_ERROR(CheckSize(b.element_count(), want[1], "the second operand"));
  SEPCONV_RETURN_IF_ERROR(CheckSize(result->element_count(), want[2], "the result"));
  const float *pa = a.typed_data(), *pb = b.typed_data();
  float* pr = result->typed_data();
  if constexpr (M == Map::kForward) Forward(pool, g, pa, pb, pr);
  if constexpr (M == Map::kInputGrad) InputGrad(pool, g, pa, pb, pr);
  if constexpr (M == Map::kKernelGrad) KernelGrad(pool, g, pa, pb, pr);
  return ffi::Error::Success();
}

}  // namespace

#define SEPCONV_BIND()                 \
  ffi::Ffi::Bind()                     \
      .Ctx<ffi::ThreadPool>()          \
      .Arg<ffi::Buffer<ffi::F32>>()    \
      .Arg<ffi::Buffer<ffi::F32>>()    \
      .Ret<ffi::Buffer<ffi::F32>>()    \
      .Attr<ffi::Span<const int64_t>>("geometry")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvDepthwiseForward, Run<Map::kForward>, SEPCONV_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvDepthwiseInputGrad, Run<Map::kInputGrad>, SEPCONV_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvDepthwiseKernelGrad, Run<Map::kKernelGrad>, SEPCONV_BIND());
