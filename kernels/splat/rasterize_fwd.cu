// Stage 3: front-to-back compositing. One thread block per (camera, tile), one thread per pixel;
// the tile's depth-sorted list is streamed through shared memory in batches of one Gaussian per
// thread, and the block stops as soon as every pixel has saturated (__syncthreads_count).
//
// Per pixel this is rasterize._composite_forward: skip σ < 0 or α < 1/255, stop *before* the
// Gaussian that would bring T to ≤ 1e-4, accumulate fᵢαᵢTᵢ. It records the final T and the list
// position where it stopped (`stop`, the backward's starting point).
//
// Channels: the kernel is compiled for widths 1, 2, 3, 4, 8, 16, 32; a feature vector of F
// channels runs in ceil(F/32) passes (the compositing is recomputed per pass; only the first
// pass writes T, stop and the contributor count).
#include "raster_common.cuh"

namespace splat {
namespace {

template <int F>
__global__ void __launch_bounds__(kMaxRasterThreads)
    rasterize_forward_kernel(const RasterForwardArgs a, const int feat_offset, const int feat_count,
                             const bool write_state) {
  extern __shared__ float4 smem[];
  const int B = blockDim.x * blockDim.y;
  float4* s_conic_opacity = smem;
  float2* s_mean = reinterpret_cast<float2*>(s_conic_opacity + B);
  float* s_feat = reinterpret_cast<float*>(s_mean + B);

  const int64_t N = a.sz.gaussians;
  const int64_t tiles = a.sz.tiles_per_view();
  const int64_t gt = blockIdx.x;  // camera-major tile index
  const int64_t gv = gt / tiles, tile = gt % tiles, s = gv / a.sz.views;
  const int px = int(tile % a.sz.tiles_x) * a.sz.tile_size + threadIdx.x;
  const int py = int(tile / a.sz.tiles_x) * a.sz.tile_size + threadIdx.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const bool inside = px < a.sz.width && py < a.sz.height;
  const float pxf = float(px) + 0.5f, pyf = float(py) + 0.5f;

  const int count = a.tile_composited[gt];
  const int32_t* list = a.flatten_ids + s * a.max_intersections + a.tile_offsets[gt];

  float T = 1.0f;
  float acc[F];
#pragma unroll
  for (int k = 0; k < F; ++k) acc[k] = 0.0f;
  int stop = count, contributors = 0;
  bool done = !inside;

  for (int base = 0; base < count; base += B) {
    // Also the barrier that lets the previous batch be overwritten.
    if (__syncthreads_count(done) == B) break;
    const int idx = base + tid;
    if (idx < count) {
      const int64_t g = list[idx];
      if (g >= 0) {
        const Splat2D sp = load_splat(a.means2d, a.conics, a.opacities, gv, s, N, g);
        s_mean[tid] = make_float2(sp.mx, sp.my);
        s_conic_opacity[tid] = make_float4(sp.ca, sp.cb, sp.cc, sp.opacity);
#pragma unroll
        for (int k = 0; k < F; ++k)
          s_feat[tid * F + k] =
              k < feat_count ? load_feature(a.feat, a.colors, a.depths, gv, s, N, g, feat_offset + k) : 0.0f;
      } else {  // cannot happen inside a tile's run; an α = 0 stand-in keeps it harmless
        s_mean[tid] = make_float2(0.0f, 0.0f);
        s_conic_opacity[tid] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int k = 0; k < F; ++k) s_feat[tid * F + k] = 0.0f;
      }
    }
    __syncthreads();
    const int n = min(B, count - base);
    for (int j = 0; !done && j < n; ++j) {
      const float2 m = s_mean[j];
      const float4 co = s_conic_opacity[j];
      const Splat2D sp = {m.x, m.y, co.x, co.y, co.z, co.w};
      const AlphaEval e = eval_alpha(sp, pxf, pyf);
      if (!e.keep) continue;
      const float next_T = T * (1.0f - e.alpha);
      if (next_T <= kTransmittanceEps) {
        done = true;
        stop = base + j;
        break;
      }
      const float w = e.alpha * T;
#pragma unroll
      for (int k = 0; k < F; ++k) acc[k] += w * s_feat[j * F + k];
      T = next_T;
      ++contributors;
    }
  }

  if (!inside) return;
  const int64_t pix = (gv * a.sz.height + py) * int64_t(a.sz.width) + px;
  float* out = a.features + pix * a.feat.num_features + feat_offset;
#pragma unroll
  for (int k = 0; k < F; ++k)
    if (k < feat_count) out[k] = acc[k];
  if (write_state) {
    a.trans[pix] = T;
    a.stop[pix] = stop;
    a.n_contrib[pix] = contributors;
  }
}

template <int F>
Status launch_forward(const RasterForwardArgs& a, int offset, int count, bool write_state, cudaStream_t stream) {
  const int ts = a.sz.tile_size;
  const size_t threads = size_t(ts) * ts;
  const size_t smem = threads * (sizeof(float4) + sizeof(float2) + F * sizeof(float));
  const int64_t blocks = a.sz.total_views() * a.sz.tiles_per_view();
  rasterize_forward_kernel<F><<<unsigned(blocks), dim3(ts, ts), smem, stream>>>(a, offset, count, write_state);
  SPLAT_TRY_LAUNCH("rasterize_forward_kernel");
  return Ok();
}

Status forward_pass(const RasterForwardArgs& a, int offset, int count, bool write_state, cudaStream_t stream) {
  switch (pass_width(count)) {
    case 1: return launch_forward<1>(a, offset, count, write_state, stream);
    case 2: return launch_forward<2>(a, offset, count, write_state, stream);
    case 3: return launch_forward<3>(a, offset, count, write_state, stream);
    case 4: return launch_forward<4>(a, offset, count, write_state, stream);
    case 8: return launch_forward<8>(a, offset, count, write_state, stream);
    case 16: return launch_forward<16>(a, offset, count, write_state, stream);
    default: return launch_forward<32>(a, offset, count, write_state, stream);
  }
}

}  // namespace

Status rasterize_forward(const RasterForwardArgs& a, cudaStream_t stream) {
  if (a.sz.total_views() * a.sz.tiles_per_view() == 0) return Ok();
  const int F = a.feat.num_features;
  // A pass over zero channels still composites (T, stop and contributor counts are outputs).
  for (int offset = 0; offset == 0 || offset < F; offset += kMaxPassFeatures) {
    const int count = F - offset < kMaxPassFeatures ? F - offset : kMaxPassFeatures;
    const Status st = forward_pass(a, offset, count, offset == 0, stream);
    if (!st.ok()) return st;
  }
  return Ok();
}

}  // namespace splat
