// Shape parsing shared by the CUDA handlers (ffi.cu) and the serial C++ reference handlers
// (reference_cpu.cc): both bind the same argument lists and turn them into the stage argument
// blocks of stages.h, rejecting inconsistent shapes with an InvalidArgument error.
//
// Batching (vmap): cuda_backend.py calls every handler with vmap_method="broadcast_all", so under
// jax.vmap every argument and result gains the same leading batch dimensions. The handlers fold
// all leading dimensions into one "scene" axis S (each scene has its own Gaussians, cameras,
// near/far/eps2d and its own M-slot intersection buffer), so a vmapped call is one batched launch
// per stage, not a loop.
#pragma once

#include <cstdint>
#include <string>

#include "stages.h"
#include "xla/ffi/api/ffi.h"

// The libraries are built with hidden visibility; only these C symbols are exported (declared
// here with default visibility, which the XLA_FFI_DEFINE_HANDLER_SYMBOL definitions inherit).
#define SPLAT_EXPORT extern "C" __attribute__((visibility("default")))
SPLAT_EXPORT XLA_FFI_Error* FlexavatarSplatProjectFwd(XLA_FFI_CallFrame* call_frame);
SPLAT_EXPORT XLA_FFI_Error* FlexavatarSplatRasterizeFwd(XLA_FFI_CallFrame* call_frame);
SPLAT_EXPORT XLA_FFI_Error* FlexavatarSplatRasterizeBwd(XLA_FFI_CallFrame* call_frame);
SPLAT_EXPORT XLA_FFI_Error* FlexavatarSplatProjectBwd(XLA_FFI_CallFrame* call_frame);
SPLAT_EXPORT int flexavatar_splat_abi_version();
SPLAT_EXPORT const char* flexavatar_splat_platform();

namespace splat {

namespace ffi = xla::ffi;

using F32Buffer = ffi::Buffer<ffi::F32>;
using S32Buffer = ffi::Buffer<ffi::S32>;
using PredBuffer = ffi::Buffer<ffi::PRED>;
using F32Result = ffi::Result<ffi::Buffer<ffi::F32>>;
using S32Result = ffi::Result<ffi::Buffer<ffi::S32>>;
using PredResult = ffi::Result<ffi::Buffer<ffi::PRED>>;

// The names every target is registered under (cuda_backend.py registers the same names).
constexpr const char* kProjectForwardName = "flexavatar_splat_project_fwd";
constexpr const char* kRasterizeForwardName = "flexavatar_splat_rasterize_fwd";
constexpr const char* kRasterizeBackwardName = "flexavatar_splat_rasterize_bwd";
constexpr const char* kProjectBackwardName = "flexavatar_splat_project_bwd";

inline ffi::Error invalid(const char* handler, const std::string& message) {
  return ffi::Error::InvalidArgument(std::string(handler) + ": " + message);
}

// Product of all but the last `trailing` dimensions (the vmap batch); -1 when the rank is short.
template <typename Dims>
int64_t batch_size(const Dims& dims, size_t trailing) {
  if (dims.size() < trailing) return -1;
  int64_t batch = 1;
  for (size_t i = 0; i + trailing < dims.size(); ++i) batch *= dims[i];
  return batch;
}

template <typename Dims>
std::string dims_string(const Dims& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + std::to_string(dims[i]);
  return out + "]";
}

template <typename Buffer>
ffi::Error expect_count(const char* handler, const char* name, const Buffer& buffer, int64_t expected) {
  const int64_t actual = int64_t(buffer.element_count());
  if (actual != expected)
    return invalid(handler, std::string(name) + " has shape " + dims_string(buffer.dimensions()) + " (" +
                                std::to_string(actual) + " elements), expected " + std::to_string(expected) +
                                " elements");
  return ffi::Error::Success();
}

#define SPLAT_RETURN_IF_ERROR(expr)             \
  do {                                          \
    ffi::Error splat_error_ = (expr);           \
    if (splat_error_.failure()) return splat_error_; \
  } while (0)

// S (scenes), V, N plus the image/tile geometry, with the index-range limits of the kernels.
inline ffi::Error make_sizes(const char* handler, int64_t S, int64_t V, int64_t N, int64_t width, int64_t height,
                             int64_t tile_size, Sizes* sz) {
  if (S < 0 || V < 1 || N < 1)
    return invalid(handler, "need at least one camera and one Gaussian per scene, got S=" + std::to_string(S) +
                                " V=" + std::to_string(V) + " N=" + std::to_string(N));
  if (width < 1 || height < 1 || width > (1 << 20) || height > (1 << 20))
    return invalid(handler, "image size out of range: " + std::to_string(width) + "x" + std::to_string(height));
  if (tile_size != 8 && tile_size != 16)
    return invalid(handler, "tile_size must be 8 or 16, got " + std::to_string(tile_size));
  sz->scenes = S;
  sz->views = V;
  sz->gaussians = N;
  sz->width = int(width);
  sz->height = int(height);
  sz->tile_size = int(tile_size);
  sz->tiles_x = int((width + tile_size - 1) / tile_size);
  sz->tiles_y = int((height + tile_size - 1) / tile_size);
  const int64_t limit = (int64_t(1) << 31) - 1;
  if (S * V * N > limit)
    return invalid(handler, "batch·cameras·Gaussians = " + std::to_string(S * V * N) + " exceeds 2^31 - 1");
  if (S * (V * sz->tiles_per_view() + 1) > limit)
    return invalid(handler, "batch·cameras·tiles exceeds 2^31 - 1");
  return ffi::Error::Success();
}

inline ffi::Error parse_project_forward(F32Buffer means, F32Buffer quats, F32Buffer scales, F32Buffer opacities,
                                        PredBuffer extra_valid, F32Buffer viewmats, F32Buffer Ks, F32Buffer planes,
                                        F32Result means2d, F32Result depths, F32Result conics, S32Result radii,
                                        PredResult valid, S32Result tiles_per_gaussian, int64_t width,
                                        int64_t height, int64_t tile_size, ProjectForwardArgs* a) {
  const char* h = kProjectForwardName;
  const auto md = means.dimensions(), vd = viewmats.dimensions();
  if (md.size() < 2 || md[md.size() - 1] != 3) return invalid(h, "means must be [..., N, 3], got " + dims_string(md));
  if (vd.size() < 3 || vd[vd.size() - 1] != 4 || vd[vd.size() - 2] != 4)
    return invalid(h, "viewmats must be [..., V, 4, 4], got " + dims_string(vd));
  const int64_t S = batch_size(md, 2), N = md[md.size() - 2], V = vd[vd.size() - 3];
  if (batch_size(vd, 3) != S) return invalid(h, "viewmats and means have different batch dimensions");
  SPLAT_RETURN_IF_ERROR(make_sizes(h, S, V, N, width, height, tile_size, &a->sz));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "quats", quats, S * N * 4));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "scales", scales, S * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "opacities", opacities, S * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "extra_valid", extra_valid, S * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "Ks", Ks, S * V * 9));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "planes", planes, S * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "means2d", *means2d, S * V * N * 2));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "depths", *depths, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "conics", *conics, S * V * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "radii", *radii, S * V * N * 2));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "valid", *valid, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tiles_per_gaussian", *tiles_per_gaussian, S * V * N));
  a->means = means.typed_data();
  a->quats = quats.typed_data();
  a->scales = scales.typed_data();
  a->opacities = opacities.typed_data();
  a->extra_valid = extra_valid.typed_data();
  a->viewmats = viewmats.typed_data();
  a->Ks = Ks.typed_data();
  a->planes = planes.typed_data();
  a->means2d = means2d->typed_data();
  a->depths = depths->typed_data();
  a->conics = conics->typed_data();
  a->radii = radii->typed_data();
  a->valid = valid->typed_data();
  a->tiles_per_gaussian = tiles_per_gaussian->typed_data();
  return ffi::Error::Success();
}

// S, V, N, C from opacities [..., N], means2d [..., V, N, 2] and colors [..., N, C].
inline ffi::Error raster_sizes(const char* h, const F32Buffer& means2d, const F32Buffer& opacities,
                               const F32Buffer& colors, int64_t width, int64_t height, int64_t tile_size,
                               int64_t render_colors, int64_t with_depth, Sizes* sz, FeatureLayout* feat) {
  const auto od = opacities.dimensions(), pd = means2d.dimensions(), cd = colors.dimensions();
  if (od.size() < 1) return invalid(h, "opacities must be [..., N]");
  if (pd.size() < 3 || pd[pd.size() - 1] != 2) return invalid(h, "means2d must be [..., V, N, 2], got " + dims_string(pd));
  if (cd.size() < 2) return invalid(h, "colors must be [..., N, C], got " + dims_string(cd));
  const int64_t S = batch_size(od, 1), N = od[od.size() - 1], V = pd[pd.size() - 3], C = cd[cd.size() - 1];
  if (batch_size(pd, 3) != S || pd[pd.size() - 2] != N)
    return invalid(h, "means2d " + dims_string(pd) + " does not match opacities " + dims_string(od));
  if (batch_size(cd, 2) != S || cd[cd.size() - 2] != N || C < 1)
    return invalid(h, "colors " + dims_string(cd) + " does not match opacities " + dims_string(od));
  if ((render_colors != 0 && render_colors != 1) || (with_depth != 0 && with_depth != 1) ||
      render_colors + with_depth == 0)
    return invalid(h, "render_colors and with_depth must be 0/1 and not both 0");
  SPLAT_RETURN_IF_ERROR(make_sizes(h, S, V, N, width, height, tile_size, sz));
  feat->num_colors = int(C);
  feat->color_features = render_colors ? int(C) : 0;
  feat->num_features = feat->color_features + int(with_depth);
  return ffi::Error::Success();
}

inline ffi::Error parse_rasterize_forward(F32Buffer means2d, F32Buffer depths, F32Buffer conics, S32Buffer radii,
                                          PredBuffer valid, S32Buffer tiles_per_gaussian, F32Buffer opacities,
                                          F32Buffer colors, F32Result features, F32Result trans,
                                          S32Result n_contrib, S32Result stop, S32Result flatten_ids,
                                          S32Result tile_offsets, S32Result tile_counts, S32Result tile_composited,
                                          S32Result overflow, int64_t width, int64_t height, int64_t tile_size,
                                          int64_t render_colors, int64_t with_depth, int64_t capacity,
                                          int64_t max_intersections, BinningArgs* bin, RasterForwardArgs* ras) {
  const char* h = kRasterizeForwardName;
  Sizes sz;
  FeatureLayout feat;
  SPLAT_RETURN_IF_ERROR(
      raster_sizes(h, means2d, opacities, colors, width, height, tile_size, render_colors, with_depth, &sz, &feat));
  const int64_t S = sz.scenes, V = sz.views, N = sz.gaussians, M = max_intersections;
  const int64_t pixels = S * V * int64_t(sz.height) * sz.width, tiles = S * V * sz.tiles_per_view();
  if (M < 1 || S * M > (int64_t(1) << 31) - 1)
    return invalid(h, "max_intersections must be in [1, (2^31 - 1)/batch], got " + std::to_string(M));
  if (capacity < 0) return invalid(h, "capacity must be >= 0");
  SPLAT_RETURN_IF_ERROR(expect_count(h, "depths", depths, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "conics", conics, S * V * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "radii", radii, S * V * N * 2));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "valid", valid, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tiles_per_gaussian", tiles_per_gaussian, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "features", *features, pixels * feat.num_features));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "trans", *trans, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "n_contrib", *n_contrib, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "stop", *stop, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "flatten_ids", *flatten_ids, S * M));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tile_offsets", *tile_offsets, tiles));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tile_counts", *tile_counts, tiles));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tile_composited", *tile_composited, tiles));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "overflow", *overflow, S * V));

  bin->sz = sz;
  bin->max_intersections = M;
  bin->capacity = capacity;
  bin->means2d = means2d.typed_data();
  bin->depths = depths.typed_data();
  bin->radii = radii.typed_data();
  bin->valid = valid.typed_data();
  bin->tiles_per_gaussian = tiles_per_gaussian.typed_data();
  bin->flatten_ids = flatten_ids->typed_data();
  bin->tile_offsets = tile_offsets->typed_data();
  bin->tile_counts = tile_counts->typed_data();
  bin->tile_composited = tile_composited->typed_data();
  bin->overflow = overflow->typed_data();

  ras->sz = sz;
  ras->max_intersections = M;
  ras->feat = feat;
  ras->means2d = means2d.typed_data();
  ras->depths = depths.typed_data();
  ras->conics = conics.typed_data();
  ras->opacities = opacities.typed_data();
  ras->colors = colors.typed_data();
  ras->flatten_ids = flatten_ids->typed_data();
  ras->tile_offsets = tile_offsets->typed_data();
  ras->tile_composited = tile_composited->typed_data();
  ras->features = features->typed_data();
  ras->trans = trans->typed_data();
  ras->stop = stop->typed_data();
  ras->n_contrib = n_contrib->typed_data();
  return ffi::Error::Success();
}

inline ffi::Error parse_rasterize_backward(F32Buffer means2d, F32Buffer depths, F32Buffer conics,
                                           F32Buffer opacities, F32Buffer colors, S32Buffer flatten_ids,
                                           S32Buffer tile_offsets, S32Buffer tile_composited, F32Buffer trans,
                                           S32Buffer stop, F32Buffer cot_features, F32Buffer cot_trans,
                                           F32Result v_means2d, F32Result v_depths, F32Result v_conics,
                                           F32Result v_opacities, F32Result v_colors, int64_t width, int64_t height,
                                           int64_t tile_size, int64_t render_colors, int64_t with_depth,
                                           int64_t max_intersections, RasterBackwardArgs* a) {
  const char* h = kRasterizeBackwardName;
  SPLAT_RETURN_IF_ERROR(raster_sizes(h, means2d, opacities, colors, width, height, tile_size, render_colors,
                                     with_depth, &a->sz, &a->feat));
  const Sizes& sz = a->sz;
  const int64_t S = sz.scenes, V = sz.views, N = sz.gaussians, M = max_intersections;
  const int64_t pixels = S * V * int64_t(sz.height) * sz.width, tiles = S * V * sz.tiles_per_view();
  if (M < 1 || S * M > (int64_t(1) << 31) - 1)
    return invalid(h, "max_intersections must be in [1, (2^31 - 1)/batch], got " + std::to_string(M));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "depths", depths, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "conics", conics, S * V * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "flatten_ids", flatten_ids, S * M));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tile_offsets", tile_offsets, tiles));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "tile_composited", tile_composited, tiles));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "trans", trans, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "stop", stop, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "cot_features", cot_features, pixels * a->feat.num_features));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "cot_trans", cot_trans, pixels));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_means2d", *v_means2d, S * V * N * 2));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_depths", *v_depths, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_conics", *v_conics, S * V * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_opacities", *v_opacities, S * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_colors", *v_colors, S * N * a->feat.num_colors));
  a->max_intersections = M;
  a->means2d = means2d.typed_data();
  a->depths = depths.typed_data();
  a->conics = conics.typed_data();
  a->opacities = opacities.typed_data();
  a->colors = colors.typed_data();
  a->flatten_ids = flatten_ids.typed_data();
  a->tile_offsets = tile_offsets.typed_data();
  a->tile_composited = tile_composited.typed_data();
  a->trans = trans.typed_data();
  a->stop = stop.typed_data();
  a->cot_features = cot_features.typed_data();
  a->cot_trans = cot_trans.typed_data();
  a->v_means2d = v_means2d->typed_data();
  a->v_depths = v_depths->typed_data();
  a->v_conics = v_conics->typed_data();
  a->v_opacities = v_opacities->typed_data();
  a->v_colors = v_colors->typed_data();
  return ffi::Error::Success();
}

inline ffi::Error parse_project_backward(F32Buffer means, F32Buffer quats, F32Buffer scales, F32Buffer opacities,
                                         F32Buffer viewmats, F32Buffer Ks, F32Buffer planes, PredBuffer valid,
                                         F32Buffer v_means2d, F32Buffer v_depths, F32Buffer v_conics,
                                         F32Result v_means, F32Result v_quats, F32Result v_scales,
                                         F32Result v_viewmats, F32Result v_Ks, int64_t width, int64_t height,
                                         int64_t tile_size, ProjectBackwardArgs* a) {
  const char* h = kProjectBackwardName;
  const auto md = means.dimensions(), vd = viewmats.dimensions();
  if (md.size() < 2 || md[md.size() - 1] != 3) return invalid(h, "means must be [..., N, 3], got " + dims_string(md));
  if (vd.size() < 3 || vd[vd.size() - 1] != 4 || vd[vd.size() - 2] != 4)
    return invalid(h, "viewmats must be [..., V, 4, 4], got " + dims_string(vd));
  const int64_t S = batch_size(md, 2), N = md[md.size() - 2], V = vd[vd.size() - 3];
  if (batch_size(vd, 3) != S) return invalid(h, "viewmats and means have different batch dimensions");
  SPLAT_RETURN_IF_ERROR(make_sizes(h, S, V, N, width, height, tile_size, &a->sz));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "quats", quats, S * N * 4));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "scales", scales, S * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "opacities", opacities, S * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "Ks", Ks, S * V * 9));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "planes", planes, S * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "valid", valid, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_means2d", v_means2d, S * V * N * 2));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_depths", v_depths, S * V * N));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_conics", v_conics, S * V * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_means", *v_means, S * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_quats", *v_quats, S * N * 4));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_scales", *v_scales, S * N * 3));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_viewmats", *v_viewmats, S * V * 16));
  SPLAT_RETURN_IF_ERROR(expect_count(h, "v_Ks", *v_Ks, S * V * 9));
  a->means = means.typed_data();
  a->quats = quats.typed_data();
  a->scales = scales.typed_data();
  a->opacities = opacities.typed_data();
  a->viewmats = viewmats.typed_data();
  a->Ks = Ks.typed_data();
  a->planes = planes.typed_data();
  a->valid = valid.typed_data();
  a->v_means2d = v_means2d.typed_data();
  a->v_depths = v_depths.typed_data();
  a->v_conics = v_conics.typed_data();
  a->v_means = v_means->typed_data();
  a->v_quats = v_quats->typed_data();
  a->v_scales = v_scales->typed_data();
  a->v_viewmats = v_viewmats->typed_data();
  a->v_Ks = v_Ks->typed_data();
  return ffi::Error::Success();
}

// Binding helpers: the argument/result/attribute lists of the four handlers, with or without the
// CUDA context parameters in front (Binding is passed in so that ffi.cu can add Ctx<> first).
template <typename Binding>
auto bind_project_forward(Binding b) {
  return std::move(b)
      .template Arg<F32Buffer>()   // means
      .template Arg<F32Buffer>()   // quats
      .template Arg<F32Buffer>()   // scales
      .template Arg<F32Buffer>()   // opacities
      .template Arg<PredBuffer>()  // extra_valid
      .template Arg<F32Buffer>()   // viewmats
      .template Arg<F32Buffer>()   // Ks
      .template Arg<F32Buffer>()   // planes
      .template Ret<ffi::Buffer<ffi::F32>>()   // means2d
      .template Ret<ffi::Buffer<ffi::F32>>()   // depths
      .template Ret<ffi::Buffer<ffi::F32>>()   // conics
      .template Ret<ffi::Buffer<ffi::S32>>()   // radii
      .template Ret<ffi::Buffer<ffi::PRED>>()  // valid
      .template Ret<ffi::Buffer<ffi::S32>>()   // tiles_per_gaussian
      .template Attr<int64_t>("width")
      .template Attr<int64_t>("height")
      .template Attr<int64_t>("tile_size");
}

template <typename Binding>
auto bind_rasterize_forward(Binding b) {
  return std::move(b)
      .template Arg<F32Buffer>()   // means2d
      .template Arg<F32Buffer>()   // depths
      .template Arg<F32Buffer>()   // conics
      .template Arg<S32Buffer>()   // radii
      .template Arg<PredBuffer>()  // valid
      .template Arg<S32Buffer>()   // tiles_per_gaussian
      .template Arg<F32Buffer>()   // opacities
      .template Arg<F32Buffer>()   // colors
      .template Ret<ffi::Buffer<ffi::F32>>()  // features
      .template Ret<ffi::Buffer<ffi::F32>>()  // trans
      .template Ret<ffi::Buffer<ffi::S32>>()  // n_contrib
      .template Ret<ffi::Buffer<ffi::S32>>()  // stop
      .template Ret<ffi::Buffer<ffi::S32>>()  // flatten_ids
      .template Ret<ffi::Buffer<ffi::S32>>()  // tile_offsets
      .template Ret<ffi::Buffer<ffi::S32>>()  // tile_counts
      .template Ret<ffi::Buffer<ffi::S32>>()  // tile_composited
      .template Ret<ffi::Buffer<ffi::S32>>()  // overflow
      .template Attr<int64_t>("width")
      .template Attr<int64_t>("height")
      .template Attr<int64_t>("tile_size")
      .template Attr<int64_t>("render_colors")
      .template Attr<int64_t>("with_depth")
      .template Attr<int64_t>("capacity")
      .template Attr<int64_t>("max_intersections");
}

template <typename Binding>
auto bind_rasterize_backward(Binding b) {
  return std::move(b)
      .template Arg<F32Buffer>()  // means2d
      .template Arg<F32Buffer>()  // depths
      .template Arg<F32Buffer>()  // conics
      .template Arg<F32Buffer>()  // opacities
      .template Arg<F32Buffer>()  // colors
      .template Arg<S32Buffer>()  // flatten_ids
      .template Arg<S32Buffer>()  // tile_offsets
      .template Arg<S32Buffer>()  // tile_composited
      .template Arg<F32Buffer>()  // trans
      .template Arg<S32Buffer>()  // stop
      .template Arg<F32Buffer>()  // cot_features
      .template Arg<F32Buffer>()  // cot_trans
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_means2d
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_depths
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_conics
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_opacities
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_colors
      .template Attr<int64_t>("width")
      .template Attr<int64_t>("height")
      .template Attr<int64_t>("tile_size")
      .template Attr<int64_t>("render_colors")
      .template Attr<int64_t>("with_depth")
      .template Attr<int64_t>("max_intersections");
}

template <typename Binding>
auto bind_project_backward(Binding b) {
  return std::move(b)
      .template Arg<F32Buffer>()   // means
      .template Arg<F32Buffer>()   // quats
      .template Arg<F32Buffer>()   // scales
      .template Arg<F32Buffer>()   // opacities
      .template Arg<F32Buffer>()   // viewmats
      .template Arg<F32Buffer>()   // Ks
      .template Arg<F32Buffer>()   // planes
      .template Arg<PredBuffer>()  // valid
      .template Arg<F32Buffer>()   // v_means2d
      .template Arg<F32Buffer>()   // v_depths
      .template Arg<F32Buffer>()   // v_conics
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_means
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_quats
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_scales
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_viewmats
      .template Ret<ffi::Buffer<ffi::F32>>()  // v_Ks
      .template Attr<int64_t>("width")
      .template Attr<int64_t>("height")
      .template Attr<int64_t>("tile_size");
}

}  // namespace splat
