// Host-side interface of the CUDA stages (one .cu file each); the XLA FFI handlers in ffi.cu
// validate shapes (ffi_common.h), then call these launchers on XLA's stream. Nothing here
// synchronises the stream or copies to the host: every count that depends on the data stays on
// the device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>

#include "stages.h"

namespace splat {

struct Status {
  cudaError_t code;
  const char* what;  // which call failed (a string literal)
  bool ok() const { return code == cudaSuccess; }
};

inline Status Ok() { return Status{cudaSuccess, ""}; }

#define SPLAT_TRY(expr)                                      \
  do {                                                       \
    const cudaError_t splat_err_ = (expr);                   \
    if (splat_err_ != cudaSuccess) return Status{splat_err_, #expr}; \
  } while (0)

// Checks the launch configuration of the kernel just launched (not its completion: that would
// need a stream synchronisation; asynchronous faults surface at XLA's next synchronisation).
#define SPLAT_TRY_LAUNCH(name)                                              \
  do {                                                                      \
    const cudaError_t splat_err_ = cudaGetLastError();                      \
    if (splat_err_ != cudaSuccess) return Status{splat_err_, "launch " name}; \
  } while (0)

// Device scratch memory that lives until the FFI handler returns (XLA's ScratchAllocator);
// returns nullptr when the allocation fails.
using ScratchFn = std::function<void*(size_t bytes)>;

Status project_forward(const ProjectForwardArgs& a, cudaStream_t stream);
Status project_backward(const ProjectBackwardArgs& a, cudaStream_t stream);
Status bin_intersections(const BinningArgs& a, const ScratchFn& scratch, cudaStream_t stream);
Status rasterize_forward(const RasterForwardArgs& a, cudaStream_t stream);
Status rasterize_backward(const RasterBackwardArgs& a, cudaStream_t stream);

// Channels composited per kernel pass; wider feature vectors run in several passes.
constexpr int kMaxPassFeatures = 32;

}  // namespace splat
