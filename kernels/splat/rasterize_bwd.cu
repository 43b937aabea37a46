// Stage 4: backward of the compositing. Same blocks as the forward; each tile's list is walked
// back to front from the largest `stop` of the block, in shared-memory batches. Each pixel
// recovers the transmittance before a Gaussian from the one after it, T_before = T_after/(1 − α)
// (α ≤ 0.999 keeps the division bounded), starting from the final T the forward stored, and
// carries one scalar `later` = Σ_{j after} αⱼTⱼ(fⱼ·ḡ) + T_final·ḡ_T instead of a per-channel
// buffer (common.h backward_pair). Per Gaussian, the pixel cotangents are summed over the warp
// with shuffles and lane 0 adds them to global memory with atomics; warps in which no pixel
// touched the Gaussian skip both.
//
// Wide feature vectors run in passes of ≤ 32 channels like the forward: the cotangents are
// linear in (ḡ, ḡ_T), so each pass adds the contribution of its channels, and ḡ_T is counted
// in the first pass only.
#include "raster_common.cuh"

namespace splat {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(kFullMask, x, offset);
  return x;
}

template <int F>
__global__ void __launch_bounds__(kMaxRasterThreads)
    rasterize_backward_kernel(const RasterBackwardArgs a, const int feat_offset, const int feat_count,
                              const bool with_trans_cotangent) {
  extern __shared__ float4 smem[];
  const int B = blockDim.x * blockDim.y;
  float4* s_conic_opacity = smem;
  float2* s_mean = reinterpret_cast<float2*>(s_conic_opacity + B);
  int32_t* s_id = reinterpret_cast<int32_t*>(s_mean + B);
  float* s_feat = reinterpret_cast<float*>(s_id + B);
  __shared__ int s_max_stop;

  const int64_t N = a.sz.gaussians;
  const int64_t tiles = a.sz.tiles_per_view();
  const int64_t gt = blockIdx.x;
  const int64_t gv = gt / tiles, tile = gt % tiles, s = gv / a.sz.views;
  const int px = int(tile % a.sz.tiles_x) * a.sz.tile_size + threadIdx.x;
  const int py = int(tile / a.sz.tiles_x) * a.sz.tile_size + threadIdx.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = tid & 31;
  const bool inside = px < a.sz.width && py < a.sz.height;
  const float pxf = float(px) + 0.5f, pyf = float(py) + 0.5f;
  const int64_t pix = (gv * a.sz.height + py) * int64_t(a.sz.width) + px;

  const int32_t* list = a.flatten_ids + s * a.max_intersections + a.tile_offsets[gt];
  const int my_stop = inside ? a.stop[pix] : 0;
  float cot[F];
#pragma unroll
  for (int k = 0; k < F; ++k)
    cot[k] = (inside && k < feat_count) ? a.cot_features[pix * a.feat.num_features + feat_offset + k] : 0.0f;
  BackwardPixel state;
  state.T = inside ? a.trans[pix] : 1.0f;
  state.later = (inside && with_trans_cotangent) ? state.T * a.cot_trans[pix] : 0.0f;

  if (tid == 0) s_max_stop = 0;
  __syncthreads();
  if (my_stop > 0) atomicMax(&s_max_stop, my_stop);
  __syncthreads();
  const int end = s_max_stop;

  for (int batch_end = end; batch_end > 0; batch_end -= B) {
    const int batch_start = batch_end > B ? batch_end - B : 0;
    __syncthreads();  // the previous batch has been consumed by every thread
    const int idx = batch_start + tid;
    if (idx < batch_end) {
      const int64_t g = list[idx];
      s_id[tid] = int32_t(g);
      if (g >= 0) {
        const Splat2D sp = load_splat(a.means2d, a.conics, a.opacities, gv, s, N, g);
        s_mean[tid] = make_float2(sp.mx, sp.my);
        s_conic_opacity[tid] = make_float4(sp.ca, sp.cb, sp.cc, sp.opacity);
#pragma unroll
        for (int k = 0; k < F; ++k)
          s_feat[tid * F + k] =
              k < feat_count ? load_feature(a.feat, a.colors, a.depths, gv, s, N, g, feat_offset + k) : 0.0f;
      } else {
        s_mean[tid] = make_float2(0.0f, 0.0f);
        s_conic_opacity[tid] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int k = 0; k < F; ++k) s_feat[tid * F + k] = 0.0f;
      }
    }
    __syncthreads();
    for (int j = batch_end - batch_start - 1; j >= 0; --j) {
      const int position = batch_start + j;
      PairGrads pg;
      bool touched = false;
      if (position < my_stop) {
        const float2 m = s_mean[j];
        const float4 co = s_conic_opacity[j];
        const Splat2D sp = {m.x, m.y, co.x, co.y, co.z, co.w};
        const AlphaEval e = eval_alpha(sp, pxf, pyf);
        if (e.keep) {
          float dot = 0.0f;
#pragma unroll
          for (int k = 0; k < F; ++k) dot += s_feat[j * F + k] * cot[k];
          pg = backward_pair(sp, e, dot, state);
          touched = true;
        }
      }
      if (!__any_sync(kFullMask, touched)) continue;
      if (!touched) {
        pg.weight = pg.opacity = 0.0f;
        pg.mean2d[0] = pg.mean2d[1] = 0.0f;
        pg.conic[0] = pg.conic[1] = pg.conic[2] = 0.0f;
      }
      const int64_t g = s_id[j];
      const int64_t vg = gv * N + g;
      float v;
      v = warp_sum(pg.mean2d[0]);
      if (lane == 0) atomicAdd(a.v_means2d + vg * 2 + 0, v);
      v = warp_sum(pg.mean2d[1]);
      if (lane == 0) atomicAdd(a.v_means2d + vg * 2 + 1, v);
#pragma unroll
      for (int i = 0; i < 3; ++i) {
        v = warp_sum(pg.conic[i]);
        if (lane == 0) atomicAdd(a.v_conics + vg * 3 + i, v);
      }
      v = warp_sum(pg.opacity);
      if (lane == 0) atomicAdd(a.v_opacities + s * N + g, v);
#pragma unroll
      for (int k = 0; k < F; ++k) {
        if (k >= feat_count) break;  // uniform: the shuffles stay converged
        v = warp_sum(pg.weight * cot[k]);
        if (lane == 0) {
          const int channel = feat_offset + k;
          float* target = channel < a.feat.color_features ? a.v_colors + (s * N + g) * a.feat.num_colors + channel
                                                          : a.v_depths + vg;
          atomicAdd(target, v);
        }
      }
    }
  }
}

template <int F>
Status launch_backward(const RasterBackwardArgs& a, int offset, int count, bool first, cudaStream_t stream) {
  const int ts = a.sz.tile_size;
  const size_t threads = size_t(ts) * ts;
  const size_t smem = threads * (sizeof(float4) + sizeof(float2) + sizeof(int32_t) + F * sizeof(float));
  const int64_t blocks = a.sz.total_views() * a.sz.tiles_per_view();
  rasterize_backward_kernel<F><<<unsigned(blocks), dim3(ts, ts), smem, stream>>>(a, offset, count, first);
  SPLAT_TRY_LAUNCH("rasterize_backward_kernel");
  return Ok();
}

Status backward_pass(const RasterBackwardArgs& a, int offset, int count, bool first, cudaStream_t stream) {
  switch (pass_width(count)) {
    case 1: return launch_backward<1>(a, offset, count, first, stream);
    case 2: return launch_backward<2>(a, offset, count, first, stream);
    case 3: return launch_backward<3>(a, offset, count, first, stream);
    case 4: return launch_backward<4>(a, offset, count, first, stream);
    case 8: return launch_backward<8>(a, offset, count, first, stream);
    case 16: return launch_backward<16>(a, offset, count, first, stream);
    default: return launch_backward<32>(a, offset, count, first, stream);
  }
}

}  // namespace

Status rasterize_backward(const RasterBackwardArgs& a, cudaStream_t stream) {
  const int64_t S = a.sz.scenes, V = a.sz.total_views(), N = a.sz.gaussians;
  SPLAT_TRY(cudaMemsetAsync(a.v_means2d, 0, sizeof(float) * V * N * 2, stream));
  SPLAT_TRY(cudaMemsetAsync(a.v_depths, 0, sizeof(float) * V * N, stream));
  SPLAT_TRY(cudaMemsetAsync(a.v_conics, 0, sizeof(float) * V * N * 3, stream));
  SPLAT_TRY(cudaMemsetAsync(a.v_opacities, 0, sizeof(float) * S * N, stream));
  SPLAT_TRY(cudaMemsetAsync(a.v_colors, 0, sizeof(float) * S * N * a.feat.num_colors, stream));
  if (V * a.sz.tiles_per_view() == 0) return Ok();
  const int F = a.feat.num_features;
  for (int offset = 0; offset == 0 || offset < F; offset += kMaxPassFeatures) {
    const int count = F - offset < kMaxPassFeatures ? F - offset : kMaxPassFeatures;
    const Status st = backward_pass(a, offset, count, offset == 0, stream);
    if (!st.ok()) return st;
  }
  return Ok();
}

}  // namespace splat
