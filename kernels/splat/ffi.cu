// XLA FFI handlers of the CUDA backend (typed FFI API). Each handler validates shapes
// (ffi_common.h), runs its stages on XLA's stream with temporaries from XLA's scratch allocator,
// and turns every CUDA error into an ffi::Error naming the call that failed.
//
//   FlexavatarSplatProjectFwd     stage 1          (means, quats, ...) -> means2d, depths, conics, radii, ...
//   FlexavatarSplatRasterizeFwd   stages 2 + 3     -> features, T, stop, ..., tile lists, overflow
//   FlexavatarSplatRasterizeBwd   stage 4          -> ∂means2d, ∂depths, ∂conics, ∂opacities, ∂colors
//   FlexavatarSplatProjectBwd     stage 1 VJP      -> ∂means, ∂quats, ∂scales, ∂viewmats, ∂Ks
//
// The residuals the backward needs (sorted Gaussian ids, tile runs, final T, stop positions) are
// outputs of the forward, so no handler keeps state between calls.
#include <cuda_runtime.h>

#include <string>

#include "ffi_common.h"
#include "launch.h"

namespace splat {
namespace {

ffi::Error to_ffi_error(const char* handler, const Status& status) {
  if (status.ok()) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(handler) + ": CUDA error in `" + status.what +
                              "`: " + cudaGetErrorName(status.code) + " (" + cudaGetErrorString(status.code) + ")");
}

ScratchFn scratch_fn(ffi::ScratchAllocator& scratch) {
  return [&scratch](size_t bytes) -> void* {
    const std::optional<void*> ptr = scratch.Allocate(bytes, 256);
    return ptr.has_value() ? *ptr : nullptr;
  };
}

ffi::Error ProjectForwardImpl(cudaStream_t stream, F32Buffer means, F32Buffer quats, F32Buffer scales,
                              F32Buffer opacities, PredBuffer extra_valid, F32Buffer viewmats, F32Buffer Ks,
                              F32Buffer planes, F32Result means2d, F32Result depths, F32Result conics,
                              S32Result radii, PredResult valid, S32Result tiles_per_gaussian, int64_t width,
                              int64_t height, int64_t tile_size) {
  ProjectForwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_project_forward(means, quats, scales, opacities, extra_valid, viewmats, Ks, planes,
                                              means2d, depths, conics, radii, valid, tiles_per_gaussian, width,
                                              height, tile_size, &a));
  if (a.sz.scenes == 0) return ffi::Error::Success();
  return to_ffi_error(kProjectForwardName, project_forward(a, stream));
}

ffi::Error RasterizeForwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, F32Buffer means2d,
                                F32Buffer depths, F32Buffer conics, S32Buffer radii, PredBuffer valid,
                                S32Buffer tiles_per_gaussian, F32Buffer opacities, F32Buffer colors,
                                F32Result features, F32Result trans, S32Result n_contrib, S32Result stop,
                                S32Result flatten_ids, S32Result tile_offsets, S32Result tile_counts,
                                S32Result tile_composited, S32Result overflow, int64_t width, int64_t height,
                                int64_t tile_size, int64_t render_colors, int64_t with_depth, int64_t capacity,
                                int64_t max_intersections) {
  BinningArgs bin;
  RasterForwardArgs ras;
  SPLAT_RETURN_IF_ERROR(parse_rasterize_forward(
      means2d, depths, conics, radii, valid, tiles_per_gaussian, opacities, colors, features, trans, n_contrib, stop,
      flatten_ids, tile_offsets, tile_counts, tile_composited, overflow, width, height, tile_size, render_colors,
      with_depth, capacity, max_intersections, &bin, &ras));
  if (bin.sz.scenes == 0) return ffi::Error::Success();
  const Status binned = bin_intersections(bin, scratch_fn(scratch), stream);
  if (!binned.ok()) return to_ffi_error(kRasterizeForwardName, binned);
  return to_ffi_error(kRasterizeForwardName, rasterize_forward(ras, stream));
}

ffi::Error RasterizeBackwardImpl(cudaStream_t stream, F32Buffer means2d, F32Buffer depths, F32Buffer conics,
                                 F32Buffer opacities, F32Buffer colors, S32Buffer flatten_ids,
                                 S32Buffer tile_offsets, S32Buffer tile_composited, F32Buffer trans, S32Buffer stop,
                                 F32Buffer cot_features, F32Buffer cot_trans, F32Result v_means2d,
                                 F32Result v_depths, F32Result v_conics, F32Result v_opacities, F32Result v_colors,
                                 int64_t width, int64_t height, int64_t tile_size, int64_t render_colors,
                                 int64_t with_depth, int64_t max_intersections) {
  RasterBackwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_rasterize_backward(
      means2d, depths, conics, opacities, colors, flatten_ids, tile_offsets, tile_composited, trans, stop,
      cot_features, cot_trans, v_means2d, v_depths, v_conics, v_opacities, v_colors, width, height, tile_size,
      render_colors, with_depth, max_intersections, &a));
  if (a.sz.scenes == 0) return ffi::Error::Success();
  return to_ffi_error(kRasterizeBackwardName, rasterize_backward(a, stream));
}

ffi::Error ProjectBackwardImpl(cudaStream_t stream, F32Buffer means, F32Buffer quats, F32Buffer scales,
                               F32Buffer opacities, F32Buffer viewmats, F32Buffer Ks, F32Buffer planes,
                               PredBuffer valid, F32Buffer v_means2d, F32Buffer v_depths, F32Buffer v_conics,
                               F32Result v_means, F32Result v_quats, F32Result v_scales, F32Result v_viewmats,
                               F32Result v_Ks, int64_t width, int64_t height, int64_t tile_size) {
  ProjectBackwardArgs a;
  SPLAT_RETURN_IF_ERROR(parse_project_backward(means, quats, scales, opacities, viewmats, Ks, planes, valid,
                                               v_means2d, v_depths, v_conics, v_means, v_quats, v_scales,
                                               v_viewmats, v_Ks, width, height, tile_size, &a));
  if (a.sz.scenes == 0) return ffi::Error::Success();
  return to_ffi_error(kProjectBackwardName, project_backward(a, stream));
}

}  // namespace
}  // namespace splat

extern "C" int flexavatar_splat_abi_version() { return splat::kAbiVersion; }
extern "C" const char* flexavatar_splat_platform() { return "CUDA"; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FlexavatarSplatProjectFwd, splat::ProjectForwardImpl,
    splat::bind_project_forward(xla::ffi::Ffi::Bind().Ctx<xla::ffi::PlatformStream<cudaStream_t>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlexavatarSplatRasterizeFwd, splat::RasterizeForwardImpl,
                              splat::bind_rasterize_forward(xla::ffi::Ffi::Bind()
                                                                .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                                                .Ctx<xla::ffi::ScratchAllocator>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FlexavatarSplatRasterizeBwd, splat::RasterizeBackwardImpl,
    splat::bind_rasterize_backward(xla::ffi::Ffi::Bind().Ctx<xla::ffi::PlatformStream<cudaStream_t>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FlexavatarSplatProjectBwd, splat::ProjectBackwardImpl,
    splat::bind_project_backward(xla::ffi::Ffi::Bind().Ctx<xla::ffi::PlatformStream<cudaStream_t>>()));
