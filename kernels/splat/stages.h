// Sizes and argument blocks of the four pipeline stages, free of CUDA types so that the CUDA
// launchers (launch.h) and the serial C++ reference (reference_cpu.cc) share them, and with them
// the shape parsing of the FFI handlers (ffi_common.h).
//
// Layout conventions (row-major, leading "scene" axis from vmap, see ffi_common.h):
//   S scenes (product of the vmap batch dims, 1 without vmap), V cameras per scene, N Gaussians
//   per scene, global camera index gv = s·V + v, T = tiles_x·tiles_y tiles per camera.
//   Gaussians [S,N,...]; per-camera Gaussians [S·V,N,...]; images [S·V,H,W,...];
//   tile arrays [S·V,T]; flatten_ids [S,M] (M = max_intersections per scene).
#pragma once

#include <cstdint>

#include "common.h"

namespace splat {

struct Sizes {
  int64_t scenes;     // S
  int64_t views;      // V, per scene
  int64_t gaussians;  // N, per scene
  int width, height, tile_size, tiles_x, tiles_y;
  SPLAT_HD int64_t total_views() const { return scenes * views; }
  SPLAT_HD int64_t tiles_per_view() const { return int64_t(tiles_x) * tiles_y; }
};

struct ProjectForwardArgs {
  Sizes sz;
  const float* means;      // [S,N,3]
  const float* quats;      // [S,N,4]
  const float* scales;     // [S,N,3]
  const float* opacities;  // [S,N]
  const bool* extra_valid; // [S,N]
  const float* viewmats;   // [S·V,4,4]
  const float* Ks;         // [S·V,3,3]
  const float* planes;     // [S,3] near, far, eps2d
  float* means2d;          // [S·V,N,2]
  float* depths;           // [S·V,N]
  float* conics;           // [S·V,N,3]
  int32_t* radii;          // [S·V,N,2]
  bool* valid;             // [S·V,N]
  int32_t* tiles_per_gaussian;  // [S·V,N]
};

struct ProjectBackwardArgs {
  Sizes sz;
  const float* means;
  const float* quats;
  const float* scales;
  const float* opacities;
  const float* viewmats;
  const float* Ks;
  const float* planes;
  const bool* valid;       // [S·V,N] from the forward
  const float* v_means2d;  // [S·V,N,2]
  const float* v_depths;   // [S·V,N]
  const float* v_conics;   // [S·V,N,3]
  float* v_means;          // [S,N,3]
  float* v_quats;          // [S,N,4]
  float* v_scales;         // [S,N,3]
  float* v_viewmats;       // [S·V,4,4]
  float* v_Ks;             // [S·V,3,3]
};

struct BinningArgs {
  Sizes sz;
  int64_t max_intersections;  // M, per scene
  int64_t capacity;           // max Gaussians composited per tile
  const float* means2d;
  const float* depths;
  const int32_t* radii;
  const bool* valid;
  const int32_t* tiles_per_gaussian;
  int32_t* flatten_ids;      // [S,M] Gaussian index (into N) per slot, -1 unused
  int32_t* tile_offsets;     // [S·V,T] start of each tile's run in its scene's flatten_ids
  int32_t* tile_counts;      // [S·V,T] true number of Gaussians touching the tile
  int32_t* tile_composited;  // [S·V,T] run length composited (≤ capacity)
  int32_t* overflow;         // [S·V] intersections not composited
};

// Features composited per pixel: the C colour channels (when render_colors) then the camera depth
// (when with_depth), F = render_colors·C + with_depth channels in all.
struct FeatureLayout {
  int num_colors;    // C, the colour array's channel count
  int color_features;  // C when colours are rendered, else 0
  int num_features;    // F
};

struct RasterForwardArgs {
  Sizes sz;
  int64_t max_intersections;
  FeatureLayout feat;
  const float* means2d;
  const float* depths;
  const float* conics;
  const float* opacities;  // [S,N]
  const float* colors;     // [S,N,C]
  const int32_t* flatten_ids;
  const int32_t* tile_offsets;
  const int32_t* tile_composited;
  float* features;     // [S·V,H,W,F]
  float* trans;        // [S·V,H,W] final transmittance
  int32_t* stop;       // [S·V,H,W] list entries consumed (the backward's starting point)
  int32_t* n_contrib;  // [S·V,H,W]
};

struct RasterBackwardArgs {
  Sizes sz;
  int64_t max_intersections;
  FeatureLayout feat;
  const float* means2d;
  const float* depths;
  const float* conics;
  const float* opacities;
  const float* colors;
  const int32_t* flatten_ids;
  const int32_t* tile_offsets;
  const int32_t* tile_composited;
  const float* trans;
  const int32_t* stop;
  const float* cot_features;  // [S·V,H,W,F]
  const float* cot_trans;     // [S·V,H,W]
  float* v_means2d;    // [S·V,N,2]
  float* v_depths;     // [S·V,N]
  float* v_conics;     // [S·V,N,3]
  float* v_opacities;  // [S,N]
  float* v_colors;     // [S,N,C]
};

}  // namespace splat
