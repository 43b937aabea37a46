// Pieces shared by the forward and backward compositing kernels.
#pragma once

#include "common.h"
#include "launch.h"

namespace splat {

// Threads per block = tile_size² (8 or 16, checked by the handler); the shared-memory batch
// holds one Gaussian per thread.
constexpr int kMaxRasterThreads = 256;

// The Gaussian of list entry `g` as the compositor sees it (camera gv, scene s).
__device__ __forceinline__ Splat2D load_splat(const float* means2d, const float* conics, const float* opacities,
                                              int64_t gv, int64_t s, int64_t N, int64_t g) {
  const int64_t vg = gv * N + g;
  Splat2D sp;
  sp.mx = means2d[vg * 2 + 0];
  sp.my = means2d[vg * 2 + 1];
  sp.ca = conics[vg * 3 + 0];
  sp.cb = conics[vg * 3 + 1];
  sp.cc = conics[vg * 3 + 2];
  sp.opacity = opacities[s * N + g];
  return sp;
}

// Channel `channel` of the feature vector (colours first, then depth) of Gaussian g.
__device__ __forceinline__ float load_feature(const FeatureLayout& feat, const float* colors, const float* depths,
                                              int64_t gv, int64_t s, int64_t N, int64_t g, int channel) {
  return channel < feat.color_features ? colors[(s * N + g) * feat.num_colors + channel] : depths[gv * N + g];
}

// Smallest compiled channel width ≥ count (count ≤ kMaxPassFeatures).
inline int pass_width(int count) {
  if (count <= 1) return 1;
  if (count <= 2) return 2;
  if (count <= 3) return 3;
  if (count <= 4) return 4;
  if (count <= 8) return 8;
  if (count <= 16) return 16;
  return 32;
}

}  // namespace splat
