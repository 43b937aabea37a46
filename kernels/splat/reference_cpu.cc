// Serial C++ reference of the CUDA backend, exported as XLA FFI handlers for the CPU platform under
// the same symbol names, argument lists, shape parsing (ffi_common.h) and per-Gaussian/per-pixel
// math (common.h) as ffi.cu. It exists for testing on machines without a GPU: it exercises the
// Python binding (custom VJP wiring, vmap batching, attributes, output shapes) and the formulas the
// kernels run, against the pure-JAX backend. It is not a renderer to use: one thread, no tiling
// tricks. What it cannot check is the CUDA-specific part: thread/block indexing, shared-memory
// batching, warp reductions, atomics and the CUB calls.
//
// The binning mirrors intersect.cu step by step (stable depth sort per camera, pairs enumerated
// into M slots per scene, stable sort by tile), so overflow and capacity behave identically.
#include <algorithm>
#include <climits>
#include <cstring>
#include <numeric>
#include <vector>

#include "ffi_common.h"

namespace splat {
namespace {

void project_forward_cpu(const ProjectForwardArgs& a) {
  const int64_t N = a.sz.gaussians;
  for (int64_t gv = 0; gv < a.sz.total_views(); ++gv) {
    const int64_t s = gv / a.sz.views;
    const Camera cam = load_camera(a.viewmats + gv * 16, a.Ks + gv * 9);
    const float* planes = a.planes + s * 3;
    for (int64_t g = 0; g < N; ++g) {
      const int64_t sg = s * N + g, idx = gv * N + g;
      const Projected p = project_gaussian(a.means + sg * 3, a.quats + sg * 4, a.scales + sg * 3, a.opacities[sg],
                                           a.extra_valid[sg], cam, float(a.sz.width), float(a.sz.height),
                                           planes[0], planes[1], planes[2]);
      const TileRect rect = tile_rect(p.mean2d[0], p.mean2d[1], p.radius[0], p.radius[1], p.valid, a.sz.tile_size,
                                      a.sz.tiles_x, a.sz.tiles_y);
      a.means2d[idx * 2 + 0] = p.mean2d[0];
      a.means2d[idx * 2 + 1] = p.mean2d[1];
      a.depths[idx] = p.depth;
      for (int i = 0; i < 3; ++i) a.conics[idx * 3 + i] = p.conic[i];
      a.radii[idx * 2 + 0] = int32_t(p.radius[0]);
      a.radii[idx * 2 + 1] = int32_t(p.radius[1]);
      a.valid[idx] = p.valid;
      a.tiles_per_gaussian[idx] = int32_t(rect.count());
    }
  }
}

TileRect rect_of(const BinningArgs& a, int64_t i) {
  return tile_rect(a.means2d[2 * i], a.means2d[2 * i + 1], float(a.radii[2 * i]), float(a.radii[2 * i + 1]),
                   a.valid[i], a.sz.tile_size, a.sz.tiles_x, a.sz.tiles_y);
}

void bin_intersections_cpu(const BinningArgs& a) {
  const int64_t V = a.sz.views, N = a.sz.gaussians, M = a.max_intersections, T = a.sz.tiles_per_view();
  const uint32_t keys_per_scene = uint32_t(V * T + 1);
  for (int64_t s = 0; s < a.sz.scenes; ++s) {
    // 1. (camera, depth) order, stable: culled Gaussians last in their camera.
    std::vector<int64_t> order(V * N);
    std::iota(order.begin(), order.end(), s * V * N);
    auto depth_key = [&](int64_t i) {
      return (uint64_t(i / N) << 32) | (a.valid[i] ? orderable_float_bits(a.depths[i]) : 0xffffffffu);
    };
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return depth_key(x) < depth_key(y); });
    // 2-3. enumerate the pairs into M slots.
    std::vector<uint32_t> keys(M, uint32_t(s) * keys_per_scene + keys_per_scene - 1);
    std::vector<int32_t> values(M, -1);
    int64_t offset = 0;
    for (const int64_t i : order) {
      const TileRect rect = rect_of(a, i);
      const int64_t count = rect.count(), width = rect.x1 - rect.x0;
      const int64_t v = (i / N) % V, g = i % N;
      for (int64_t j = 0; j < count && offset + j < M; ++j) {
        const int64_t tile = (rect.y0 + j / width) * a.sz.tiles_x + (rect.x0 + j % width);
        keys[offset + j] = uint32_t(s) * keys_per_scene + uint32_t(v * T + tile);
        values[offset + j] = int32_t(g);
      }
      offset += count;
    }
    // 4. stable sort by tile key.
    std::vector<int64_t> slot_order(M);
    std::iota(slot_order.begin(), slot_order.end(), 0);
    std::stable_sort(slot_order.begin(), slot_order.end(), [&](int64_t x, int64_t y) { return keys[x] < keys[y]; });
    std::vector<int64_t> binned(V * T, 0);
    for (int64_t k = 0; k < M; ++k) {
      const uint32_t key = keys[slot_order[k]];
      a.flatten_ids[s * M + k] = values[slot_order[k]];
      if (key % keys_per_scene != keys_per_scene - 1) ++binned[key % keys_per_scene];
    }
    // 5. per-tile runs, true counts, overflow.
    std::vector<int64_t> truth(V * T, 0);
    for (int64_t i = s * V * N; i < (s + 1) * V * N; ++i) {
      const TileRect rect = rect_of(a, i);
      const int64_t v = (i / N) % V;
      for (int y = rect.y0; y < rect.y1; ++y)
        for (int x = rect.x0; x < rect.x1; ++x) ++truth[v * T + int64_t(y) * a.sz.tiles_x + x];
    }
    int64_t start = 0;
    for (int64_t v = 0; v < V; ++v) {
      int64_t dropped = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t vt = v * T + t, gt = s * V * T + vt;
        const int64_t composited = std::min<int64_t>(binned[vt], a.capacity);
        a.tile_offsets[gt] = int32_t(start);
        a.tile_composited[gt] = int32_t(composited);
        a.tile_counts[gt] = int32_t(truth[vt]);
        dropped += truth[vt] - composited;
        start += binned[vt];
      }
      a.overflow[s * V + v] = int32_t(std::min<int64_t>(dropped, INT_MAX));
    }
  }
}

float feature_of(const FeatureLayout& feat, const float* colors, const float* depths, int64_t gv, int64_t s,
                 int64_t N, int64_t g, int channel) {
  return channel < feat.color_features ? colors[(s * N + g) * feat.num_colors + channel] : depths[gv * N + g];
}

Splat2D splat_of(const float* means2d, const float* conics, const float* opacities, int64_t gv, int64_t s,
                 int64_t N, int64_t g) {
  const int64_t vg = gv * N + g;
  return Splat2D{means2d[vg * 2], means2d[vg * 2 + 1], conics[vg * 3], conics[vg * 3 + 1], conics[vg * 3 + 2],
                 opacities[s * N + g]};
}

// Calls fn(gv, s, tile, px, py, pix) for every pixel of every camera, with its tile index.
template <typename Fn>
void for_each_pixel(const Sizes& sz, Fn fn) {
  for (int64_t gv = 0; gv < sz.total_views(); ++gv)
    for (int py = 0; py < sz.height; ++py)
      for (int px = 0; px < sz.width; ++px) {
        const int64_t tile = int64_t(py / sz.tile_size) * sz.tiles_x + px / sz.tile_size;
        fn(gv, gv / sz.views, gv * sz.tiles_per_view() + tile, px, py, (gv * sz.height + py) * int64_t(sz.width) + px);
      }
}

void rasterize_forward_cpu(const RasterForwardArgs& a) {
  const int64_t N = a.sz.gaussians;
  const int F = a.feat.num_features;
  std::vector<float> acc(F);
  for_each_pixel(a.sz, [&](int64_t gv, int64_t s, int64_t gt, int px, int py, int64_t pix) {
    const int32_t* list = a.flatten_ids + s * a.max_intersections + a.tile_offsets[gt];
    const int count = a.tile_composited[gt];
    std::fill(acc.begin(), acc.end(), 0.0f);
    float T = 1.0f;
    int stop = count, contributors = 0;
    for (int j = 0; j < count; ++j) {
      const int64_t g = list[j];
      if (g < 0) continue;
      const Splat2D sp = splat_of(a.means2d, a.conics, a.opacities, gv, s, N, g);
      const AlphaEval e = eval_alpha(sp, px + 0.5f, py + 0.5f);
      if (!e.keep) continue;
      const float next_T = T * (1.0f - e.alpha);
      if (next_T <= kTransmittanceEps) {
        stop = j;
        break;
      }
      const float w = e.alpha * T;
      for (int k = 0; k < F; ++k) acc[k] += w * feature_of(a.feat, a.colors, a.depths, gv, s, N, g, k);
      T = next_T;
      ++contributors;
    }
    for (int k = 0; k < F; ++k) a.features[pix * F + k] = acc[k];
    a.trans[pix] = T;
    a.stop[pix] = stop;
    a.n_contrib[pix] = contributors;
  });
}

void rasterize_backward_cpu(const RasterBackwardArgs& a) {
  const int64_t S = a.sz.scenes, V = a.sz.total_views(), N = a.sz.gaussians;
  const int F = a.feat.num_features;
  std::fill(a.v_means2d, a.v_means2d + V * N * 2, 0.0f);
  std::fill(a.v_depths, a.v_depths + V * N, 0.0f);
  std::fill(a.v_conics, a.v_conics + V * N * 3, 0.0f);
  std::fill(a.v_opacities, a.v_opacities + S * N, 0.0f);
  std::fill(a.v_colors, a.v_colors + S * N * a.feat.num_colors, 0.0f);
  for_each_pixel(a.sz, [&](int64_t gv, int64_t s, int64_t gt, int px, int py, int64_t pix) {
    const int32_t* list = a.flatten_ids + s * a.max_intersections + a.tile_offsets[gt];
    const float* cot = a.cot_features + pix * F;
    BackwardPixel state{a.trans[pix], a.trans[pix] * a.cot_trans[pix]};
    for (int j = a.stop[pix] - 1; j >= 0; --j) {
      const int64_t g = list[j];
      if (g < 0) continue;
      const Splat2D sp = splat_of(a.means2d, a.conics, a.opacities, gv, s, N, g);
      const AlphaEval e = eval_alpha(sp, px + 0.5f, py + 0.5f);
      if (!e.keep) continue;
      float dot = 0.0f;
      for (int k = 0; k < F; ++k) dot += feature_of(a.feat, a.colors, a.depths, gv, s, N, g, k) * cot[k];
      const PairGrads pg = backward_pair(sp, e, dot, state);
      const int64_t vg = gv * N + g;
      a.v_means2d[vg * 2 + 0] += pg.mean2d[0];
      a.v_means2d[vg * 2 + 1] += pg.mean2d[1];
      for (int i = 0; i < 3; ++i) a.v_conics[vg * 3 + i] += pg.conic[i];
      a.v_opacities[s * N + g] += pg.opacity;
      for (int k = 0; k < F; ++k) {
        float* target = k < a.feat.color_features ? a.v_colors + (s * N + g) * a.feat.num_colors + k : a.v_depths + vg;
        *target += pg.weight * cot[k];
      }
    }
  });
}

void project_backward_cpu(const ProjectBackwardArgs& a) {
  const int64_t S = a.sz.scenes, N = a.sz.gaussians, V = a.sz.views;
  std::fill(a.v_means, a.v_means + S * N * 3, 0.0f);
  std::fill(a.v_quats, a.v_quats + S * N * 4, 0.0f);
  std::fill(a.v_scales, a.v_scales + S * N * 3, 0.0f);
  std::fill(a.v_viewmats, a.v_viewmats + S * V * 16, 0.0f);
  std::fill(a.v_Ks, a.v_Ks + S * V * 9, 0.0f);
  for (int64_t gv = 0; gv < S * V; ++gv) {
    const int64_t s = gv / V;
    const Camera cam = load_camera(a.viewmats + gv * 16, a.Ks + gv * 9);
    const float* planes = a.planes + s * 3;
    for (int64_t g = 0; g < N; ++g) {
      const int64_t vg = gv * N + g, sg = s * N + g;
      if (!a.valid[vg]) continue;
      ProjectionGrads pg;
      project_gaussian_vjp(a.means + sg * 3, a.quats + sg * 4, a.scales + sg * 3, a.opacities[sg], cam,
                           float(a.sz.width), float(a.sz.height), planes[0], planes[1], planes[2],
                           a.v_means2d + vg * 2, a.v_depths[vg], a.v_conics + vg * 3, pg);
      for (int i = 0; i < 3; ++i) a.v_means[sg * 3 + i] += pg.mean[i];
      for (int i = 0; i < 4; ++i) a.v_quats[sg * 4 + i] += pg.quat[i];
      for (int i = 0; i < 3; ++i) a.v_scales[sg * 3 + i] += pg.scale[i];
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) a.v_viewmats[gv * 16 + i * 4 + j] += pg.viewmat_R[i][j];
        a.v_viewmats[gv * 16 + i * 4 + 3] += pg.viewmat_t[i];
      }
      a.v_Ks[gv * 9 + 0] += pg.fx;
      a.v_Ks[gv * 9 + 4] += pg.fy;
      a.v_Ks[gv * 9 + 2] += pg.cx;
      a.v_Ks[gv * 9 + 5] += pg.cy;
    }
  }
}

ffi::Error ProjectForwardImpl(F32Buffer means, F32Buffer quats, F32Buffer scales, F32Buffer opacities,
                              PredBuffer extra_valid, F32Buffer viewmats, F32Buffer Ks, F32Buffer planes,
                              F32Result means2d, F32Result depths, F32Result conics, S32Result radii,
                              PredResult valid, S32Result tiles_per_gaussian, int64_t width, int64_t height,
                              int64_t tile_size) {
  ProjectForwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_project_forward(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes,
                                              means2d, depths, conics, radii, valid, tiles_per_gaussian, width,
                                              height, tile_size, &a));
  project_forward_cpu(a);
  return ffi::Error::Success();
}

ffi::Error RasterizeForwardImpl(F32Buffer means2d, F32Buffer depths, F32Buffer conics, S32Buffer radii,
                                PredBuffer valid, S32Buffer tiles_per_gaussian, F32Buffer opacities,
                                F32Buffer colors, F32Result features, F32Result trans, S32Result n_contrib,
                                S32Result stop, S32Result flatten_ids, S32Result tile_offsets, S32Result tile_counts,
                                S32Result tile_composited, S32Result overflow, int64_t width, int64_t height,
                                int64_t tile_size, int64_t render_colors, int64_t with_depth, int64_t capacity,
                                int64_t max_intersections) {
  BinningArgs bin;
  RasterForwardArgs ras;
  SPLAT_RETURN_IF_ERROR(parse_rasterize_forward(
      means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, features, trans, n_contrib, stop,
      flatten_ids, tile_offsets, tile_counts, tile_composited, overflow, width, height, tile_size, render_colors,
      with_depth, capacity, max_intersections, &bin, &ras));
  bin_intersections_cpu(bin);
  rasterize_forward_cpu(ras);
  return ffi::Error::Success();
}

ffi::Error RasterizeBackwardImpl(F32Buffer means2d, F32Buffer depths, F32Buffer conics, F32Buffer opacities,
                                 F32Buffer colors, S32Buffer flatten_ids, S32Buffer tile_offsets,
                                 S32Buffer tile_composited, F32Buffer trans, S32Buffer stop, F32Buffer cot_features,
                                 F32Buffer cot_trans, F32Result v_means2d, F32Result v_depths, F32Result v_conics,
                                 F32Result v_opacities, F32Result v_colors, int64_t width, int64_t height,
                                 int64_t tile_size, int64_t render_colors, int64_t with_depth,
                                 int64_t max_intersections) {
  RasterBackwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_rasterize_backward(
      means2d, depths, conics, opacities, colors, flatten_ids, tile_offsets, tile_composited, trans, stop,
      cot_features, cot_trans, v_means2d, v_depths, v_conics, v_opacities, v_colors, width, height, tile_size,
      render_colors, with_depth, max_intersections, &a));
  rasterize_backward_cpu(a);
  return ffi::Error::Success();
}

ffi::Error ProjectBackwardImpl(F32Buffer means, F32Buffer quats, F32Buffer scales, F32Buffer opacities,
                               F32Buffer viewmats, F32Buffer Ks, F32Buffer planes, PredBuffer valid,
                               F32Buffer v_means2d, F32Buffer v_depths, F32Buffer v_conics, F32Result v_means,
                               F32Result v_quats, F32Result v_scales, F32Result v_viewmats, F32Result v_Ks,
                               int64_t width, int64_t height, int64_t tile_size) {
  ProjectBackwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_project_backward(means, quats, scales, opacities, viewmats, Ks, planes, valid,
                                               v_means2d, v_depths, v_conics, v_means, v_quats, v_scales,
                                               v_viewmats, v_Ks, width, height, tile_size, &a));
  project_backward_cpu(a);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace splat

extern "C" int flexavatar_splat_abi_version() { return splat::kAbiVersion; }
extern "C" const char* flexavatar_splat_platform() { return "cpu"; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlexavatarSplatProjectFwd, splat::ProjectForwardImpl,
                              splat::bind_project_forward(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlexavatarSplatRasterizeFwd, splat::RasterizeForwardImpl,
                              splat::bind_rasterize_forward(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlexavatarSplatRasterizeBwd, splat::RasterizeBackwardImpl,
                              splat::bind_rasterize_backward(xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlexavatarSplatProjectBwd, splat::ProjectBackwardImpl,
                              splat::bind_project_backward(xla::ffi::Ffi::Bind()));
