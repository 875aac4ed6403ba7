// Causal self-attention with segment ids for XLA:CPU, float32, forward and backward, as two XLA FFI
// custom calls (built and loaded by cpu_attention.py).
//
// Layouts: q [B, T, H, D], k and v [B, T, K, D] (H = K * G query heads share a key/value head),
// segment ids [B, T] int32. A query i attends to key j when j <= i, seg[j] == seg[i] and seg[i] != 0;
// a query of segment 0 attends nowhere (output 0). Outputs: o [B, T, H, D] and the row log-sum-exp
// lse [B, H, T] (+inf for rows that attend nowhere), which the backward pass uses to recompute the
// probabilities block by block (no T x T array is kept between the two calls).
//
// Work is split into (batch row, key/value head) tasks run on XLA's intra-op thread pool; a task
// walks the G query heads in blocks of kBlock queries (32: 3-4% faster than 16, 48, 64 or 128),
// each against only the keys from the block's lowest segment start to its last row (the causal and
// document masks skip whole column ranges).
// The products are register-blocked loops over GCC vector types (16 floats: AVX-512 where the
// compiler targets it, pairs of AVX2 registers otherwise); D must be a multiple of 16.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t iv16 __attribute__((vector_size(64)));
constexpr int W = 16;
#ifndef IJ_BLOCK
#define IJ_BLOCK 32
#endif
constexpr int kBlock = IJ_BLOCK;  // query rows per block

inline v16 ld(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline iv16 ldi(const int32_t* p) {
  iv16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float hsum(v16 v) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}

// exp(x) for x <= 0 or moderate x: Cephes' expf polynomial after range reduction, ~1 ulp.
inline v16 vexp(v16 x) {
  const v16 hi = v16{} + 88.3762626647949f, lo = v16{} - 87.3365447504f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  v16 n = x * 1.44269504088896341f + 12582912.f;  // round to nearest via 1.5 * 2^23
  n = n - 12582912.f;
  v16 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v16 p = v16{} + 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  v16 y = p * r * r + r + 1.f;
  iv16 e = (__builtin_convertvector(n, iv16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, sizeof scale);
  return y * scale;
}

// C[r, c] = sum_d A[r, d] * Bt[d, c] for r < R, c < nc (nc a multiple of 16).
template <int R>
inline void abt_rows(const float* A, int lda, const float* Bt, int ldb, int D, float* C, int ldc, int nc) {
  int c = 0;
  for (; c + 4 * W <= nc; c += 4 * W) {
    v16 acc[R][4] = {};
    for (int d = 0; d < D; ++d) {
      const float* b = Bt + (size_t)d * ldb + c;
      const v16 b0 = ld(b), b1 = ld(b + W), b2 = ld(b + 2 * W), b3 = ld(b + 3 * W);
      for (int r = 0; r < R; ++r) {
        const float a = A[r * lda + d];
        acc[r][0] += a * b0;
        acc[r][1] += a * b1;
        acc[r][2] += a * b2;
        acc[r][3] += a * b3;
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) st(C + (size_t)r * ldc + c + u * W, acc[r][u]);
  }
  for (; c < nc; c += W) {
    v16 acc[R] = {};
    for (int d = 0; d < D; ++d) {
      const v16 b0 = ld(Bt + (size_t)d * ldb + c);
      for (int r = 0; r < R; ++r) acc[r] += A[r * lda + d] * b0;
    }
    for (int r = 0; r < R; ++r) st(C + (size_t)r * ldc + c, acc[r]);
  }
}

void abt(const float* A, int lda, int rows, const float* Bt, int ldb, int D, float* C, int ldc, int nc) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) abt_rows<4>(A + r * lda, lda, Bt, ldb, D, C + (size_t)r * ldc, ldc, nc);
  switch (rows - r) {
    case 3: abt_rows<3>(A + r * lda, lda, Bt, ldb, D, C + (size_t)r * ldc, ldc, nc); break;
    case 2: abt_rows<2>(A + r * lda, lda, Bt, ldb, D, C + (size_t)r * ldc, ldc, nc); break;
    case 1: abt_rows<1>(A + r * lda, lda, Bt, ldb, D, C + (size_t)r * ldc, ldc, nc); break;
    default: break;
  }
}

// C[r, :] = alpha[r] * sum_j P[r, j] * Bm[j, :] for r < R, j < n; Bm rows hold NV * 16 floats.
template <int NV, int R>
inline void ab_rows(const float* P, int ldp, const float* Bm, int n, const float* alpha, float* C, int ldc) {
  v16 acc[R][NV] = {};
  for (int j = 0; j < n; ++j) {
    v16 b[NV];
    for (int u = 0; u < NV; ++u) b[u] = ld(Bm + (size_t)j * NV * W + u * W);
    for (int r = 0; r < R; ++r) {
      const float p = P[(size_t)r * ldp + j];
      for (int u = 0; u < NV; ++u) acc[r][u] += p * b[u];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) st(C + (size_t)r * ldc + u * W, acc[r][u] * alpha[r]);
}

template <int NV>
void ab(const float* P, int ldp, int rows, const float* Bm, int n, const float* alpha, float* C, int ldc) {
  constexpr int R = NV >= 16 ? 1 : 16 / NV;
  int r = 0;
  for (; r + R <= rows; r += R) ab_rows<NV, R>(P + (size_t)r * ldp, ldp, Bm, n, alpha + r, C + (size_t)r * ldc, ldc);
  for (; r < rows; ++r) ab_rows<NV, 1>(P + (size_t)r * ldp, ldp, Bm, n, alpha + r, C + (size_t)r * ldc, ldc);
}

// C[j, :] += sum_r P[r, j] * A[r, :] for j < R (keys), r < rows; A and C rows hold NV * 16 floats.
template <int NV, int R>
inline void atb_cols(const float* P, int ldp, int rows, const float* A, float* C) {
  v16 acc[R][NV];
  for (int j = 0; j < R; ++j)
    for (int u = 0; u < NV; ++u) acc[j][u] = ld(C + (size_t)j * NV * W + u * W);
  for (int r = 0; r < rows; ++r) {
    v16 a[NV];
    for (int u = 0; u < NV; ++u) a[u] = ld(A + (size_t)r * NV * W + u * W);
    const float* p = P + (size_t)r * ldp;
    for (int j = 0; j < R; ++j)
      for (int u = 0; u < NV; ++u) acc[j][u] += p[j] * a[u];
  }
  for (int j = 0; j < R; ++j)
    for (int u = 0; u < NV; ++u) st(C + (size_t)j * NV * W + u * W, acc[j][u]);
}

template <int NV>
void atb(const float* P, int ldp, int rows, const float* A, int n, float* C) {
  constexpr int R = NV >= 16 ? 1 : 16 / NV;
  int j = 0;
  for (; j + R <= n; j += R) atb_cols<NV, R>(P + j, ldp, rows, A, C + (size_t)j * NV * W);
  for (; j < n; ++j) atb_cols<NV, 1>(P + j, ldp, rows, A, C + (size_t)j * NV * W);
}

// Runs fn(task) for task < n on the calling thread and the pool's threads. The caller waits only
// for helpers that started, so it cannot deadlock on a busy pool.
void parallel_for(ffi::ThreadPool& pool, int n, const std::function<void(int)>& fn) {
  struct State {
    std::atomic<int> next{0};
    std::mutex m;
    std::condition_variable cv;
    int running = 0;
    bool closed = false;
    int n = 0;
    const std::function<void(int)>* fn = nullptr;
  };
  auto s = std::make_shared<State>();
  s->n = n;
  s->fn = &fn;
  auto drain = [](State* st) {
    for (int t; (t = st->next.fetch_add(1)) < st->n;) (*st->fn)(t);
  };
  const int helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int i = 0; i < helpers; ++i) {
    pool.Schedule([s, drain]() {
      {
        std::lock_guard<std::mutex> g(s->m);
        if (s->closed) return;
        ++s->running;
      }
      drain(s.get());
      std::lock_guard<std::mutex> g(s->m);
      if (--s->running == 0) s->cv.notify_all();
    });
  }
  drain(s.get());
  std::unique_lock<std::mutex> g(s->m);
  s->closed = true;
  s->cv.wait(g, [&] { return s->running == 0; });
}

struct Dims {
  int B, T, H, K, D, G, T16;
};

// Per (batch row, key/value head): keys and values gathered as [D, T16] (transposed) and [T16, D]
// (rows), zero beyond T; each query's lowest possible key (its segment's first position).
struct Task {
  std::vector<float> kt, vt, kr, vr;
  std::vector<int32_t> seg;  // [T16], padded with a value no query has
  std::vector<int> lo;

  void load(const Dims& z, const float* k, const float* v, const int32_t* segb, int b, int kh, bool backward) {
    const size_t TD = (size_t)z.T16 * z.D;
    kt.assign(TD, 0.f);
    vr.assign(TD, 0.f);
    if (backward) {
      vt.assign(TD, 0.f);
      kr.assign(TD, 0.f);
    }
    for (int t = 0; t < z.T; ++t) {
      const float* ks = k + (((size_t)b * z.T + t) * z.K + kh) * z.D;
      const float* vs = v + (((size_t)b * z.T + t) * z.K + kh) * z.D;
      std::memcpy(&vr[(size_t)t * z.D], vs, z.D * sizeof(float));
      for (int d = 0; d < z.D; ++d) kt[(size_t)d * z.T16 + t] = ks[d];
      if (backward) {
        std::memcpy(&kr[(size_t)t * z.D], ks, z.D * sizeof(float));
        for (int d = 0; d < z.D; ++d) vt[(size_t)d * z.T16 + t] = vs[d];
      }
    }
    seg.assign(z.T16, std::numeric_limits<int32_t>::min());
    std::memcpy(seg.data(), segb, z.T * sizeof(int32_t));
    lo.resize(z.T);
    std::unordered_map<int32_t, int> first;
    for (int t = 0; t < z.T; ++t) lo[t] = first.emplace(segb[t], t).first->second;
  }

  // The block's key columns [c0, c1): from its lowest segment start (rounded down to 16) to its end
  // (rounded up); false when every query of the block is padding.
  bool columns(int i0, int i1, int* c0, int* c1) const {
    int l = i1;
    for (int i = i0; i < i1; ++i)
      if (seg[i] != 0) l = std::min(l, lo[i]);
    if (l == i1) return false;
    *c0 = l & ~(W - 1);
    *c1 = (i1 + W - 1) & ~(W - 1);
    return true;
  }
};

// Masks one score row in place: keys outside [lo, i] or of another segment become -inf.
inline void mask_row(float* s, int c0, int c1, int lo, int i, const int32_t* seg) {
  const iv16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const int32_t si = seg[i];
  const v16 ninf = v16{} - std::numeric_limits<float>::infinity();
  for (int c = c0; c < c1; c += W) {
    const iv16 j = iota + c;
    const iv16 ok = (j >= lo) & (j <= i) & (ldi(seg + c) == si);
    float* p = s + (c - c0);
    st(p, ok ? ld(p) : ninf);
  }
}

template <int NV>
void forward_task(const Dims& z, const float* q, const float* k, const float* v, const int32_t* seg, float* o,
                  float* lse, int task) {
  constexpr int D = NV * W;
  const int b = task / z.K, kh = task % z.K;
  const float scale = 1.f / std::sqrt((float)D);
  Task tk;
  tk.load(z, k, v, seg + (size_t)b * z.T, b, kh, false);
  std::vector<float> S((size_t)kBlock * z.T16), Qs((size_t)kBlock * D), Ob((size_t)kBlock * D), inv(kBlock);
  for (int g = 0; g < z.G; ++g) {
    const int h = kh * z.G + g;
    for (int i0 = 0; i0 < z.T; i0 += kBlock) {
      const int i1 = std::min(i0 + kBlock, z.T), rows = i1 - i0;
      int c0, c1;
      const bool any = tk.columns(i0, i1, &c0, &c1);
      for (int r = 0; r < rows; ++r) {
        const float* qs = q + (((size_t)b * z.T + i0 + r) * z.H + h) * D;
        for (int d = 0; d < D; ++d) Qs[r * D + d] = qs[d] * scale;
      }
      const int nc = any ? c1 - c0 : 0;
      if (any) abt(Qs.data(), D, rows, tk.kt.data() + c0, z.T16, D, S.data(), nc, nc);
      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r;
        float* s = S.data() + (size_t)r * nc;
        float* lrow = lse + ((size_t)b * z.H + h) * z.T + i;
        if (tk.seg[i] == 0) {
          if (nc) std::fill(s, s + nc, 0.f);
          *lrow = std::numeric_limits<float>::infinity();
          inv[r] = 0.f;
          continue;
        }
        mask_row(s, c0, c1, tk.lo[i], i, tk.seg.data());
        v16 mv = v16{} - std::numeric_limits<float>::infinity();
        for (int c = 0; c < nc; c += W) {
          const v16 x = ld(s + c);
          mv = x > mv ? x : mv;
        }
        const float m = hmax(mv);
        v16 sum = {};
        for (int c = 0; c < nc; c += W) {
          const v16 x = ld(s + c);
          const v16 p = x == -std::numeric_limits<float>::infinity() ? v16{} : vexp(x - m);
          sum += p;
          st(s + c, p);
        }
        const float tot = hsum(sum);
        inv[r] = 1.f / tot;  // the normalisation is applied to the p . V rows
        *lrow = m + std::log(tot);
      }
      if (any) {
        ab<NV>(S.data(), nc, rows, tk.vr.data() + (size_t)c0 * D, nc, inv.data(), Ob.data(), D);
      } else {
        std::fill(Ob.begin(), Ob.end(), 0.f);
      }
      for (int r = 0; r < rows; ++r)
        std::memcpy(o + (((size_t)b * z.T + i0 + r) * z.H + h) * D, &Ob[r * D], D * sizeof(float));
    }
  }
}

template <int NV>
void backward_task(const Dims& z, const float* q, const float* k, const float* v, const int32_t* seg,
                   const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int task) {
  constexpr int D = NV * W;
  const int b = task / z.K, kh = task % z.K;
  const float scale = 1.f / std::sqrt((float)D);
  Task tk;
  tk.load(z, k, v, seg + (size_t)b * z.T, b, kh, true);
  std::vector<float> P((size_t)kBlock * z.T16), dP((size_t)kBlock * z.T16), Qs((size_t)kBlock * D),
      dOb((size_t)kBlock * D), dQb((size_t)kBlock * D), delta(kBlock), scales(kBlock, scale);
  std::vector<float> dK((size_t)z.T16 * D, 0.f), dV((size_t)z.T16 * D, 0.f);
  for (int g = 0; g < z.G; ++g) {
    const int h = kh * z.G + g;
    for (int i0 = 0; i0 < z.T; i0 += kBlock) {
      const int i1 = std::min(i0 + kBlock, z.T), rows = i1 - i0;
      int c0, c1;
      if (!tk.columns(i0, i1, &c0, &c1)) {
        for (int r = 0; r < rows; ++r)
          std::memset(dq + (((size_t)b * z.T + i0 + r) * z.H + h) * D, 0, D * sizeof(float));
        continue;
      }
      const int nc = c1 - c0;
      for (int r = 0; r < rows; ++r) {
        const size_t off = (((size_t)b * z.T + i0 + r) * z.H + h) * D;
        float dl = 0.f;
        for (int d = 0; d < D; ++d) {
          Qs[r * D + d] = q[off + d] * scale;
          dOb[r * D + d] = dout[off + d];
          dl += dout[off + d] * o[off + d];
        }
        delta[r] = dl;
      }
      abt(Qs.data(), D, rows, tk.kt.data() + c0, z.T16, D, P.data(), nc, nc);
      abt(dOb.data(), D, rows, tk.vt.data() + c0, z.T16, D, dP.data(), nc, nc);
      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r;
        float* p = P.data() + (size_t)r * nc;
        float* dp = dP.data() + (size_t)r * nc;
        if (tk.seg[i] == 0) {
          std::fill(p, p + nc, 0.f);
          std::fill(dp, dp + nc, 0.f);
          continue;
        }
        mask_row(p, c0, c1, tk.lo[i], i, tk.seg.data());
        const float l = lse[((size_t)b * z.H + h) * z.T + i], dl = delta[r];
        for (int c = 0; c < nc; c += W) {
          const v16 x = ld(p + c);
          const v16 pr = x == -std::numeric_limits<float>::infinity() ? v16{} : vexp(x - l);
          st(p + c, pr);
          st(dp + c, pr * (ld(dp + c) - dl));  // dS = P * (dP - delta)
        }
      }
      atb<NV>(P.data(), nc, rows, dOb.data(), nc, dV.data() + (size_t)c0 * D);
      atb<NV>(dP.data(), nc, rows, Qs.data(), nc, dK.data() + (size_t)c0 * D);
      ab<NV>(dP.data(), nc, rows, tk.kr.data() + (size_t)c0 * D, nc, scales.data(), dQb.data(), D);
      for (int r = 0; r < rows; ++r)
        std::memcpy(dq + (((size_t)b * z.T + i0 + r) * z.H + h) * D, &dQb[r * D], D * sizeof(float));
    }
  }
  for (int t = 0; t < z.T; ++t) {
    const size_t off = (((size_t)b * z.T + t) * z.K + kh) * D;
    std::memcpy(dk + off, &dK[(size_t)t * D], D * sizeof(float));
    std::memcpy(dv + off, &dV[(size_t)t * D], D * sizeof(float));
  }
}

ffi::Error dims_of(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, const ffi::Buffer<ffi::F32>& v,
                   const ffi::Buffer<ffi::S32>& seg, Dims* z) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), sd = seg.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || sd.size() != 2)
    return ffi::Error::InvalidArgument("expected q, k, v of rank 4 and segment ids of rank 2");
  z->B = qd[0];
  z->T = qd[1];
  z->H = qd[2];
  z->D = qd[3];
  z->K = kd[2];
  if (kd[0] != z->B || kd[1] != z->T || kd[3] != z->D || vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] ||
      vd[3] != kd[3] || sd[0] != z->B || sd[1] != z->T || z->K == 0 || z->H % z->K != 0)
    return ffi::Error::InvalidArgument("q [B, T, H, D], k and v [B, T, K, D], segment ids [B, T] with K | H");
  if (z->D % W != 0 || z->D > 8 * W) return ffi::Error::InvalidArgument("head_dim must be 16, 32, ..., 128");
  z->G = z->H / z->K;
  z->T16 = (z->T + W - 1) & ~(W - 1);
  return ffi::Error::Success();
}

template <typename F>
void dispatch_nv(int D, F&& f) {
  switch (D / W) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> seg, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  Dims z;
  if (auto e = dims_of(q, k, v, seg, &z); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const int32_t* sp = seg.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  dispatch_nv(z.D, [&](auto nv) {
    parallel_for(pool, z.B * z.K, [&](int t) { forward_task<decltype(nv)::value>(z, qp, kp, vp, sp, op, lp, t); });
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Dims z;
  if (auto e = dims_of(q, k, v, seg, &z); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *op = o.typed_data(),
              *lp = lse.typed_data(), *gp = dout.typed_data();
  const int32_t* sp = seg.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  dispatch_nv(z.D, [&](auto nv) {
    parallel_for(pool, z.B * z.K, [&](int t) {
      backward_task<decltype(nv)::value>(z, qp, kp, vp, sp, op, lp, gp, dqp, dkp, dvp, t);
    });
  });
  return ffi::Error::Success();
}

}  // namespace

namespace {
using F32 = ffi::Buffer<ffi::F32>;
// Both calls take (thread pool, q, k, v, segment ids, ...).
auto qkv_seg() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<ffi::Buffer<ffi::S32>>();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IjCausalAttentionFwd, Forward, qkv_seg().Ret<F32>().Ret<F32>());  // -> o, lse

// (..., o, lse, do) -> dq, dk, dv
XLA_FFI_DEFINE_HANDLER_SYMBOL(IjCausalAttentionBwd, Backward,
                              qkv_seg().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
