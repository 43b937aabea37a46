// Stage 1: EWA projection of every (camera, Gaussian) pair, and its VJP.
//
// Forward: one thread per (camera, Gaussian); the math is common.h's project_gaussian.
// Backward: one thread per Gaussian, looping over its scene's cameras, so the per-Gaussian
// gradients (summed over cameras) need no atomics; the per-camera gradients (viewmats, Ks) are
// reduced over the warp and added with one atomic per warp and camera.
#include "common.h"
#include "launch.h"

namespace splat {
namespace {

constexpr int kProjectBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

__global__ void __launch_bounds__(kProjectBlock) project_forward_kernel(ProjectForwardArgs a) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t N = a.sz.gaussians;
  if (idx >= a.sz.total_views() * N) return;
  const int64_t gv = idx / N, g = idx % N, s = gv / a.sz.views;
  const int64_t sg = s * N + g;
  const Camera cam = load_camera(a.viewmats + gv * 16, a.Ks + gv * 9);
  const float* planes = a.planes + s * 3;
  const Projected p =
      project_gaussian(a.means + sg * 3, a.quats + sg * 4, a.scales + sg * 3, a.opacities[sg], a.extra_valid[sg], cam,
                       float(a.sz.width), float(a.sz.height), planes[0], planes[1], planes[2]);
  const TileRect rect = tile_rect(p.mean2d[0], p.mean2d[1], p.radius[0], p.radius[1], p.valid, a.sz.tile_size,
                                  a.sz.tiles_x, a.sz.tiles_y);
  a.means2d[idx * 2 + 0] = p.mean2d[0];
  a.means2d[idx * 2 + 1] = p.mean2d[1];
  a.depths[idx] = p.depth;
  a.conics[idx * 3 + 0] = p.conic[0];
  a.conics[idx * 3 + 1] = p.conic[1];
  a.conics[idx * 3 + 2] = p.conic[2];
  a.radii[idx * 2 + 0] = int32_t(p.radius[0]);
  a.radii[idx * 2 + 1] = int32_t(p.radius[1]);
  a.valid[idx] = p.valid;
  // At most tiles_x·tiles_y ≤ 2^31 (checked by the handler).
  a.tiles_per_gaussian[idx] = int32_t(rect.count());
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(kFullMask, x, offset);
  return x;
}

// grid = (ceil(N / block), S): every lane of a warp belongs to the same scene, so the per-camera
// warp reduction never mixes cameras.
__global__ void __launch_bounds__(kProjectBlock) project_backward_kernel(ProjectBackwardArgs a) {
  const int64_t N = a.sz.gaussians;
  const int64_t s = blockIdx.y;
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool in_range = g < N;
  const int64_t sg = s * N + (in_range ? g : 0);
  const float* planes = a.planes + s * 3;
  const float width = float(a.sz.width), height = float(a.sz.height);

  float v_mean[3] = {0.0f, 0.0f, 0.0f}, v_quat[4] = {0.0f, 0.0f, 0.0f, 0.0f}, v_scale[3] = {0.0f, 0.0f, 0.0f};
  for (int64_t v = 0; v < a.sz.views; ++v) {  // uniform over the block: the shuffles below need it
    const int64_t gv = s * a.sz.views + v;
    const int64_t vg = gv * N + (in_range ? g : 0);
    const bool has = in_range && a.valid[vg];
    float cam_grad[16];  // viewmat rows 0-2 (12), then fx, fy, cx, cy
    for (int i = 0; i < 16; ++i) cam_grad[i] = 0.0f;
    if (has) {
      const Camera cam = load_camera(a.viewmats + gv * 16, a.Ks + gv * 9);
      ProjectionGrads pg;
      project_gaussian_vjp(a.means + sg * 3, a.quats + sg * 4, a.scales + sg * 3, a.opacities[sg], cam, width,
                           height, planes[0], planes[1], planes[2], a.v_means2d + vg * 2, a.v_depths[vg],
                           a.v_conics + vg * 3, pg);
      for (int i = 0; i < 3; ++i) v_mean[i] += pg.mean[i];
      for (int i = 0; i < 4; ++i) v_quat[i] += pg.quat[i];
      for (int i = 0; i < 3; ++i) v_scale[i] += pg.scale[i];
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) cam_grad[i * 4 + j] = pg.viewmat_R[i][j];
        cam_grad[i * 4 + 3] = pg.viewmat_t[i];
      }
      cam_grad[12] = pg.fx;
      cam_grad[13] = pg.fy;
      cam_grad[14] = pg.cx;
      cam_grad[15] = pg.cy;
    }
    if (__any_sync(kFullMask, has)) {
#pragma unroll
      for (int i = 0; i < 16; ++i) cam_grad[i] = warp_sum(cam_grad[i]);
      if ((threadIdx.x & 31) == 0) {
        for (int i = 0; i < 12; ++i) atomicAdd(a.v_viewmats + gv * 16 + i, cam_grad[i]);
        atomicAdd(a.v_Ks + gv * 9 + 0, cam_grad[12]);
        atomicAdd(a.v_Ks + gv * 9 + 4, cam_grad[13]);
        atomicAdd(a.v_Ks + gv * 9 + 2, cam_grad[14]);
        atomicAdd(a.v_Ks + gv * 9 + 5, cam_grad[15]);
      }
    }
  }
  if (!in_range) return;
  for (int i = 0; i < 3; ++i) a.v_means[sg * 3 + i] = v_mean[i];
  for (int i = 0; i < 4; ++i) a.v_quats[sg * 4 + i] = v_quat[i];
  for (int i = 0; i < 3; ++i) a.v_scales[sg * 3 + i] = v_scale[i];
}

}  // namespace

Status project_forward(const ProjectForwardArgs& a, cudaStream_t stream) {
  const int64_t total = a.sz.total_views() * a.sz.gaussians;
  if (total == 0) return Ok();
  const int64_t blocks = (total + kProjectBlock - 1) / kProjectBlock;
  project_forward_kernel<<<unsigned(blocks), kProjectBlock, 0, stream>>>(a);
  SPLAT_TRY_LAUNCH("project_forward_kernel");
  return Ok();
}

Status project_backward(const ProjectBackwardArgs& a, cudaStream_t stream) {
  const int64_t V = a.sz.total_views();
  SPLAT_TRY(cudaMemsetAsync(a.v_viewmats, 0, sizeof(float) * V * 16, stream));
  SPLAT_TRY(cudaMemsetAsync(a.v_Ks, 0, sizeof(float) * V * 9, stream));
  if (a.sz.gaussians == 0 || a.sz.scenes == 0) return Ok();
  const dim3 grid(unsigned((a.sz.gaussians + kProjectBlock - 1) / kProjectBlock), unsigned(a.sz.scenes));
  project_backward_kernel<<<grid, kProjectBlock, 0, stream>>>(a);
  SPLAT_TRY_LAUNCH("project_backward_kernel");
  return Ok();
}

}  // namespace splat
