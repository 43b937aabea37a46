// Per-Gaussian and per-pixel math of the splatting pipeline, shared by the CUDA kernels and the
// serial C++ reference handlers (reference_cpu.cc), so that the CPU test suite checks the exact
// formulas the GPU runs. Plain C++17 + float arithmetic: no CUDA types, no std:: containers.
//
// Semantics are those of the pure-JAX reference (flexavatar_jax/render/projection.py and
// jax_backend.py, gsplat 1.5.3 classic mode); every constant below has its twin there.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SPLAT_HD __host__ __device__ inline
#else
#define SPLAT_HD inline
#endif

namespace splat {

// Bump when the handler signatures or semantics change: cuda_backend.py refuses a library whose
// `flexavatar_splat_abi_version()` differs (a stale build must never run silently).
constexpr int kAbiVersion = 1;

constexpr float kMaxExtend = 3.33f;             // projection.MAX_EXTEND
constexpr float kAlphaThreshold = 1.0f / 255.0f;  // projection.ALPHA_THRESHOLD
constexpr float kFrustumClampMargin = 0.3f;      // projection.FRUSTUM_CLAMP_MARGIN
constexpr float kMaxRadius = 16777216.0f;        // projection._MAX_RADIUS = 2^24
constexpr float kMaxAlpha = 0.999f;              // rasterize.MAX_ALPHA
constexpr float kTransmittanceEps = 1e-4f;       // rasterize.TRANSMITTANCE_EPS

SPLAT_HD bool is_finite(float x) { return std::isfinite(x); }
SPLAT_HD float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

// Depth as an unsigned key whose integer order is the float order (negative depths included:
// near_plane may be negative), so a radix sort on it sorts by full-precision depth.
SPLAT_HD uint32_t orderable_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// ------------------------------------------------------------------------------------------------
// Cameras
// ------------------------------------------------------------------------------------------------

struct Camera {
  float R[3][3];  // world->camera rotation (viewmat[:3, :3])
  float t[3];     // viewmat[:3, 3]
  float fx, fy, cx, cy;
  bool ok;  // every entry of viewmat and K finite; otherwise the identity camera, all culled
};

SPLAT_HD Camera load_camera(const float* viewmat, const float* K) {
  Camera cam;
  bool ok = true;
  for (int i = 0; i < 16; ++i) ok = ok && is_finite(viewmat[i]);
  for (int i = 0; i < 9; ++i) ok = ok && is_finite(K[i]);
  cam.ok = ok;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i][j] = ok ? viewmat[i * 4 + j] : (i == j ? 1.0f : 0.0f);
    cam.t[i] = ok ? viewmat[i * 4 + 3] : 0.0f;
  }
  cam.fx = ok ? K[0] : 1.0f;
  cam.fy = ok ? K[4] : 1.0f;
  cam.cx = ok ? K[2] : 0.0f;
  cam.cy = ok ? K[5] : 0.0f;
  return cam;
}

// Half-extents of the frustum clamp, in units of x/z and y/z (gsplat `persp_proj`).
struct FrustumLimits {
  float x_pos, x_neg, y_pos, y_neg;
};

SPLAT_HD FrustumLimits frustum_limits(const Camera& cam, float width, float height) {
  const float tan_fovx = 0.5f * width / cam.fx;
  const float tan_fovy = 0.5f * height / cam.fy;
  FrustumLimits lim;
  lim.x_pos = (width - cam.cx) / cam.fx + kFrustumClampMargin * tan_fovx;
  lim.x_neg = cam.cx / cam.fx + kFrustumClampMargin * tan_fovx;
  lim.y_pos = (height - cam.cy) / cam.fy + kFrustumClampMargin * tan_fovy;
  lim.y_neg = cam.cy / cam.fy + kFrustumClampMargin * tan_fovy;
  return lim;
}

// ------------------------------------------------------------------------------------------------
// Gaussians
// ------------------------------------------------------------------------------------------------

// wxyz quaternion -> rotation. A zero or non-finite quaternion maps to the identity (and gets a
// zero gradient), as in projection.quat_to_rotmat.
struct UnitQuat {
  float q[4];      // normalised (or identity)
  float inv_norm;  // 1/|q| (1 when not usable)
  bool usable;
};

SPLAT_HD UnitQuat normalise_quat(const float* quat) {
  UnitQuat u;
  const float norm2 = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  u.usable = norm2 > 1e-24f && is_finite(norm2);
  u.inv_norm = u.usable ? 1.0f / sqrtf(norm2) : 1.0f;
  for (int i = 0; i < 4; ++i) u.q[i] = u.usable ? quat[i] * u.inv_norm : (i == 0 ? 1.0f : 0.0f);
  return u;
}

SPLAT_HD void rotmat_from_unit_quat(const float* q, float R[3][3]) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  R[0][0] = 1.0f - 2.0f * (y * y + z * z);
  R[0][1] = 2.0f * (x * y - w * z);
  R[0][2] = 2.0f * (x * z + w * y);
  R[1][0] = 2.0f * (x * y + w * z);
  R[1][1] = 1.0f - 2.0f * (x * x + z * z);
  R[1][2] = 2.0f * (y * z - w * x);
  R[2][0] = 2.0f * (x * z - w * y);
  R[2][1] = 2.0f * (y * z + w * x);
  R[2][2] = 1.0f - 2.0f * (x * x + y * y);
}

// Forward intermediates of one (camera, Gaussian) projection, kept for the VJP.
struct ProjectionState {
  UnitQuat quat;
  float R[3][3];      // rotation of the Gaussian
  float M[3][3];      // R · diag(scale)
  float cov[3][3];    // world covariance M Mᵀ
  float WS[3][3];     // W Σ (camera rotation times world covariance)
  float cov_cam[3][3];
  float p[3];         // camera-space mean
  float rz;           // 1 / z
  float ux, uy;       // x/z, y/z before the frustum clamp
  int clip_x, clip_y; // -1 clamped low, +1 clamped high, 0 inside
  float tx, ty;       // z · clamp(x/z), z · clamp(y/z)
  float J[2][3];
  float JS[2][3];     // J Σc
  float cov2d[2][2];
  float a, b, c, det;
  FrustumLimits lim;
};

struct Projected {
  float mean2d[2];
  float depth;
  float conic[3];
  float radius[2];  // float pixel half-extents, 0 when culled (int32 on output)
  bool valid;
};

// Tile rectangle [x0, x1) × [y0, y1) a projected Gaussian touches (empty when culled), with the
// exact float expressions of projection._project so both backends bin identically.
struct TileRect {
  int x0, y0, x1, y1;
  SPLAT_HD int64_t count() const { return int64_t(x1 - x0) * int64_t(y1 - y0); }
};

SPLAT_HD TileRect tile_rect(float mx, float my, float rx, float ry, bool valid, int tile_size, int tiles_x,
                            int tiles_y) {
  TileRect r = {0, 0, 0, 0};
  if (!valid) return r;
  const float ts = float(tile_size);
  r.x0 = int(clampf(floorf((mx - rx) / ts), 0.0f, float(tiles_x)));
  r.x1 = int(clampf(ceilf((mx + rx) / ts), 0.0f, float(tiles_x)));
  r.y0 = int(clampf(floorf((my - ry) / ts), 0.0f, float(tiles_y)));
  r.y1 = int(clampf(ceilf((my + ry) / ts), 0.0f, float(tiles_y)));
  if (r.x1 < r.x0) r.x1 = r.x0;
  if (r.y1 < r.y0) r.y1 = r.y0;
  return r;
}

// The forward intermediates; returns false when the Gaussian is culled before the 2D stage
// (non-finite input, opacity below the alpha threshold, outside (near, far), bad camera).
SPLAT_HD bool projection_state(const float* mean, const float* quat, const float* scale, float opacity,
                               bool allowed, const Camera& cam, float width, float height, float near_plane,
                               float far_plane, float eps2d, ProjectionState& st) {
  bool ok = allowed && cam.ok && is_finite(opacity) && opacity >= kAlphaThreshold;
  for (int i = 0; i < 3; ++i) ok = ok && is_finite(mean[i]) && is_finite(scale[i]);
  for (int i = 0; i < 4; ++i) ok = ok && is_finite(quat[i]);
  if (!ok) return false;

  st.quat = normalise_quat(quat);
  rotmat_from_unit_quat(st.quat.q, st.R);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) st.M[i][j] = st.R[i][j] * scale[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      st.cov[i][j] = st.M[i][0] * st.M[j][0] + st.M[i][1] * st.M[j][1] + st.M[i][2] * st.M[j][2];
  for (int i = 0; i < 3; ++i)
    st.p[i] = cam.R[i][0] * mean[0] + cam.R[i][1] * mean[1] + cam.R[i][2] * mean[2] + cam.t[i];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      st.WS[i][j] = cam.R[i][0] * st.cov[0][j] + cam.R[i][1] * st.cov[1][j] + cam.R[i][2] * st.cov[2][j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      st.cov_cam[i][j] = st.WS[i][0] * cam.R[j][0] + st.WS[i][1] * cam.R[j][1] + st.WS[i][2] * cam.R[j][2];

  const float z = st.p[2];
  if (!(z > near_plane && z < far_plane)) return false;
  st.lim = frustum_limits(cam, width, height);
  st.rz = 1.0f / z;
  st.ux = st.p[0] * st.rz;
  st.uy = st.p[1] * st.rz;
  st.clip_x = st.ux < -st.lim.x_neg ? -1 : (st.ux > st.lim.x_pos ? 1 : 0);
  st.clip_y = st.uy < -st.lim.y_neg ? -1 : (st.uy > st.lim.y_pos ? 1 : 0);
  st.tx = z * clampf(st.ux, -st.lim.x_neg, st.lim.x_pos);
  st.ty = z * clampf(st.uy, -st.lim.y_neg, st.lim.y_pos);
  st.J[0][0] = cam.fx * st.rz;
  st.J[0][1] = 0.0f;
  st.J[0][2] = -cam.fx * st.tx * st.rz * st.rz;
  st.J[1][0] = 0.0f;
  st.J[1][1] = cam.fy * st.rz;
  st.J[1][2] = -cam.fy * st.ty * st.rz * st.rz;
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j)
      st.JS[r][j] = st.J[r][0] * st.cov_cam[0][j] + st.J[r][1] * st.cov_cam[1][j] + st.J[r][2] * st.cov_cam[2][j];
  for (int r = 0; r < 2; ++r)
    for (int q = 0; q < 2; ++q)
      st.cov2d[r][q] = st.JS[r][0] * st.J[q][0] + st.JS[r][1] * st.J[q][1] + st.JS[r][2] * st.J[q][2];
  st.a = st.cov2d[0][0] + eps2d;
  st.b = 0.5f * (st.cov2d[0][1] + st.cov2d[1][0]);
  st.c = st.cov2d[1][1] + eps2d;
  st.det = st.a * st.c - st.b * st.b;
  return true;
}

// EWA projection and culling of one Gaussian in one camera (projection._project).
SPLAT_HD Projected project_gaussian(const float* mean, const float* quat, const float* scale, float opacity,
                                    bool allowed, const Camera& cam, float width, float height,
                                    float near_plane, float far_plane, float eps2d) {
  Projected out = {{0.0f, 0.0f}, 0.0f, {0.0f, 0.0f, 0.0f}, {0.0f, 0.0f}, false};
  ProjectionState st;
  if (!projection_state(mean, quat, scale, opacity, allowed, cam, width, height, near_plane, far_plane, eps2d,
                        st))
    return out;
  const float mx = cam.fx * st.p[0] * st.rz + cam.cx;
  const float my = cam.fy * st.p[1] * st.rz + cam.cy;
  bool valid = st.det > 0.0f;
  const float det = valid ? st.det : 1.0f;
  const float conic[3] = {st.c / det, -st.b / det, st.a / det};
  const float extend = fminf(kMaxExtend, sqrtf(2.0f * logf(fmaxf(opacity / kAlphaThreshold, 1.0f))));
  const float rx = ceilf(extend * sqrtf(fmaxf(st.a, 0.0f)));
  const float ry = ceilf(extend * sqrtf(fmaxf(st.c, 0.0f)));
  valid = valid && (mx + rx > 0.0f) && (mx - rx < width) && (my + ry > 0.0f) && (my - ry < height);
  bool finite = is_finite(st.p[2]) && is_finite(st.det) && is_finite(rx) && is_finite(ry) && is_finite(mx) &&
                is_finite(my) && is_finite(conic[0]) && is_finite(conic[1]) && is_finite(conic[2]);
  for (int i = 0; i < 3; ++i) {
    finite = finite && is_finite(st.p[i]);
    for (int j = 0; j < 3; ++j) finite = finite && is_finite(st.cov_cam[i][j]);
  }
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j) finite = finite && is_finite(st.J[r][j]);
  valid = valid && finite;
  if (!valid) return out;
  out.valid = true;
  out.mean2d[0] = mx;
  out.mean2d[1] = my;
  out.depth = st.p[2];
  for (int i = 0; i < 3; ++i) out.conic[i] = conic[i];
  out.radius[0] = fminf(rx, kMaxRadius);
  out.radius[1] = fminf(ry, kMaxRadius);
  return out;
}

// Cotangents of one (camera, Gaussian) projection.
struct ProjectionGrads {
  float mean[3], quat[4], scale[3];
  float viewmat_R[3][3], viewmat_t[3];
  float fx, fy, cx, cy;
};

// VJP of project_gaussian for a valid Gaussian: (∂L/∂mean2d, ∂L/∂depth, ∂L/∂conic) -> inputs.
// The derivation follows the forward line by line (see projection._project).
SPLAT_HD void project_gaussian_vjp(const float* mean, const float* quat, const float* scale, float opacity,
                                   const Camera& cam, float width, float height, float near_plane,
                                   float far_plane, float eps2d, const float* v_mean2d, float v_depth,
                                   const float* v_conic, ProjectionGrads& g) {
  ProjectionState st;
  for (int i = 0; i < 3; ++i) g.mean[i] = g.scale[i] = g.viewmat_t[i] = 0.0f;
  for (int i = 0; i < 4; ++i) g.quat[i] = 0.0f;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.viewmat_R[i][j] = 0.0f;
  g.fx = g.fy = g.cx = g.cy = 0.0f;
  if (!projection_state(mean, quat, scale, opacity, true, cam, width, height, near_plane, far_plane, eps2d, st))
    return;
  const float x = st.p[0], y = st.p[1], z = st.p[2], rz = st.rz;

  // conic = inverse([[a, b], [b, c]]): ∂L/∂cov2d = -Inv G Inv with G the symmetric cotangent
  // [[g_a, g_b/2], [g_b/2, g_c]]; b = (cov01 + cov10)/2 gives each off-diagonal half of g_b.
  const float inv_det = 1.0f / st.det;
  const float inv[2][2] = {{st.c * inv_det, -st.b * inv_det}, {-st.b * inv_det, st.a * inv_det}};
  const float G[2][2] = {{v_conic[0], 0.5f * v_conic[1]}, {0.5f * v_conic[1], v_conic[2]}};
  float IG[2][2], V2[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) IG[i][j] = inv[i][0] * G[0][j] + inv[i][1] * G[1][j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) V2[i][j] = -(IG[i][0] * inv[0][j] + IG[i][1] * inv[1][j]);

  // cov2d = J Σc Jᵀ.
  float v_J[2][3], v_cov_cam[3][3];
  {
    float JSt[2][3];  // J Σcᵀ
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 3; ++j)
        JSt[r][j] = st.J[r][0] * st.cov_cam[j][0] + st.J[r][1] * st.cov_cam[j][1] + st.J[r][2] * st.cov_cam[j][2];
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 3; ++j)
        v_J[r][j] = V2[r][0] * JSt[0][j] + V2[r][1] * JSt[1][j] + V2[0][r] * st.JS[0][j] + V2[1][r] * st.JS[1][j];
    float VJ[2][3];  // V2 J
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 3; ++j) VJ[r][j] = V2[r][0] * st.J[0][j] + V2[r][1] * st.J[1][j];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) v_cov_cam[i][j] = st.J[0][i] * VJ[0][j] + st.J[1][i] * VJ[1][j];
  }

  // J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]].
  float v_rz = cam.fx * v_J[0][0] + cam.fy * v_J[1][1] - 2.0f * cam.fx * st.tx * rz * v_J[0][2] -
               2.0f * cam.fy * st.ty * rz * v_J[1][2];
  const float v_tx = -cam.fx * rz * rz * v_J[0][2];
  const float v_ty = -cam.fy * rz * rz * v_J[1][2];
  g.fx += rz * v_J[0][0] - st.tx * rz * rz * v_J[0][2];
  g.fy += rz * v_J[1][1] - st.ty * rz * rz * v_J[1][2];

  // mean2d = (fx x/z + cx, fy y/z + cy); depth = z.
  float v_p[3] = {cam.fx * rz * v_mean2d[0], cam.fy * rz * v_mean2d[1], v_depth};
  v_rz += cam.fx * x * v_mean2d[0] + cam.fy * y * v_mean2d[1];
  g.fx += x * rz * v_mean2d[0];
  g.fy += y * rz * v_mean2d[1];
  g.cx += v_mean2d[0];
  g.cy += v_mean2d[1];

  // tx = z · clamp(x/z, -lim_neg, lim_pos): through the clamp or into the limit it hit.
  float v_lim_x_pos = 0.0f, v_lim_x_neg = 0.0f, v_lim_y_pos = 0.0f, v_lim_y_neg = 0.0f;
  v_p[2] += clampf(st.ux, -st.lim.x_neg, st.lim.x_pos) * v_tx;
  if (st.clip_x == 0) {
    v_p[0] += rz * z * v_tx;
    v_rz += x * z * v_tx;
  } else if (st.clip_x > 0) {
    v_lim_x_pos += z * v_tx;
  } else {
    v_lim_x_neg -= z * v_tx;
  }
  v_p[2] += clampf(st.uy, -st.lim.y_neg, st.lim.y_pos) * v_ty;
  if (st.clip_y == 0) {
    v_p[1] += rz * z * v_ty;
    v_rz += y * z * v_ty;
  } else if (st.clip_y > 0) {
    v_lim_y_pos += z * v_ty;
  } else {
    v_lim_y_neg -= z * v_ty;
  }
  // lim_x_pos = (W - cx)/fx + 0.15 W/fx, lim_x_neg = cx/fx + 0.15 W/fx (likewise for y).
  g.cx += (v_lim_x_neg - v_lim_x_pos) / cam.fx;
  g.fx -= (st.lim.x_pos * v_lim_x_pos + st.lim.x_neg * v_lim_x_neg) / cam.fx;
  g.cy += (v_lim_y_neg - v_lim_y_pos) / cam.fy;
  g.fy -= (st.lim.y_pos * v_lim_y_pos + st.lim.y_neg * v_lim_y_neg) / cam.fy;
  v_p[2] += -rz * rz * v_rz;

  // p = W mean + t.
  for (int j = 0; j < 3; ++j) g.mean[j] = cam.R[0][j] * v_p[0] + cam.R[1][j] * v_p[1] + cam.R[2][j] * v_p[2];
  for (int i = 0; i < 3; ++i) {
    g.viewmat_t[i] = v_p[i];
    for (int j = 0; j < 3; ++j) g.viewmat_R[i][j] = v_p[i] * mean[j];
  }

  // Σc = W Σ Wᵀ: ∂W += V W Σᵀ + Vᵀ W Σ, ∂Σ = Wᵀ V W.
  float v_cov[3][3];
  {
    float VW[3][3], VtW[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        VW[i][j] = v_cov_cam[i][0] * cam.R[0][j] + v_cov_cam[i][1] * cam.R[1][j] + v_cov_cam[i][2] * cam.R[2][j];
        VtW[i][j] = v_cov_cam[0][i] * cam.R[0][j] + v_cov_cam[1][i] * cam.R[1][j] + v_cov_cam[2][i] * cam.R[2][j];
      }
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        g.viewmat_R[i][j] += VW[i][0] * st.cov[j][0] + VW[i][1] * st.cov[j][1] + VW[i][2] * st.cov[j][2] +
                             VtW[i][0] * st.cov[0][j] + VtW[i][1] * st.cov[1][j] + VtW[i][2] * st.cov[2][j];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) v_cov[i][j] = cam.R[0][i] * VW[0][j] + cam.R[1][i] * VW[1][j] + cam.R[2][i] * VW[2][j];
  }

  // Σ = M Mᵀ, M = R diag(s).
  float v_R[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      float v_m = 0.0f;
      for (int k = 0; k < 3; ++k) v_m += (v_cov[i][k] + v_cov[k][i]) * st.M[k][j];
      v_R[i][j] = v_m * scale[j];
      g.scale[j] += v_m * st.R[i][j];
    }

  // R(q) for the unit quaternion, then through q / |q|.
  if (st.quat.usable) {
    const float w = st.quat.q[0], qx = st.quat.q[1], qy = st.quat.q[2], qz = st.quat.q[3];
    float v_q[4];
    v_q[0] = 2.0f * (-qz * v_R[0][1] + qy * v_R[0][2] + qz * v_R[1][0] - qx * v_R[1][2] - qy * v_R[2][0] +
                     qx * v_R[2][1]);
    v_q[1] = 2.0f * (qy * v_R[0][1] + qz * v_R[0][2] + qy * v_R[1][0] - 2.0f * qx * v_R[1][1] - w * v_R[1][2] +
                     qz * v_R[2][0] + w * v_R[2][1] - 2.0f * qx * v_R[2][2]);
    v_q[2] = 2.0f * (-2.0f * qy * v_R[0][0] + qx * v_R[0][1] + w * v_R[0][2] + qx * v_R[1][0] + qz * v_R[1][2] -
                     w * v_R[2][0] + qz * v_R[2][1] - 2.0f * qy * v_R[2][2]);
    v_q[3] = 2.0f * (-2.0f * qz * v_R[0][0] - w * v_R[0][1] + qx * v_R[0][2] + w * v_R[1][0] -
                     2.0f * qz * v_R[1][1] + qy * v_R[1][2] + qx * v_R[2][0] + qy * v_R[2][1]);
    const float dot = v_q[0] * st.quat.q[0] + v_q[1] * st.quat.q[1] + v_q[2] * st.quat.q[2] + v_q[3] * st.quat.q[3];
    for (int i = 0; i < 4; ++i) g.quat[i] = (v_q[i] - st.quat.q[i] * dot) * st.quat.inv_norm;
  }
}

// ------------------------------------------------------------------------------------------------
// Compositing
// ------------------------------------------------------------------------------------------------

// One projected splat as the compositor sees it.
struct Splat2D {
  float mx, my;      // mean, pixels
  float ca, cb, cc;  // conic
  float opacity;
};

// α of one splat at one pixel centre. `keep` is false where the compositor skips it (σ < 0 or
// α < 1/255); the other fields are what the backward needs.
struct AlphaEval {
  float alpha, vis, raw, dx, dy;
  bool keep;
};

SPLAT_HD AlphaEval eval_alpha(const Splat2D& s, float px, float py) {
  AlphaEval e;
  e.dx = s.mx - px;
  e.dy = s.my - py;
  const float sigma = 0.5f * (s.ca * e.dx * e.dx + s.cc * e.dy * e.dy) + s.cb * e.dx * e.dy;
  e.vis = expf(-fmaxf(sigma, 0.0f));
  e.raw = s.opacity * e.vis;
  e.alpha = fminf(kMaxAlpha, e.raw);
  e.keep = sigma >= 0.0f && e.alpha >= kAlphaThreshold;
  return e;
}

// Back-to-front state of one pixel: T is the transmittance after the current Gaussian (starts
// at the final T), `later` = Σ_{j after} αⱼTⱼ(fⱼ·ḡ) + T_final·ḡ_T.
struct BackwardPixel {
  float T;
  float later;
};

// Cotangents of one kept (pixel, Gaussian) pair, given dot = fᵢ·ḡ. With Tᵢ = T_after/(1-αᵢ):
//   ∂L/∂fᵢ = αᵢTᵢ ḡ,   ∂L/∂αᵢ = Tᵢ dot − later/(1−αᵢ)   (zero through a clamped α),
//   σ = ½(a dx² + c dy²) + b dx dy,  α = o·exp(−σ).
struct PairGrads {
  float weight;  // αᵢTᵢ: the feature cotangent is weight·ḡ
  float mean2d[2], conic[3], opacity;
};

SPLAT_HD PairGrads backward_pair(const Splat2D& s, const AlphaEval& e, float dot, BackwardPixel& px) {
  PairGrads g;
  const float ra = 1.0f / (1.0f - e.alpha);
  const float T_before = px.T * ra;
  g.weight = e.alpha * T_before;
  const float v_alpha = T_before * dot - px.later * ra;
  px.later += g.weight * dot;
  px.T = T_before;
  if (e.raw < kMaxAlpha) {
    const float v_sigma = -e.raw * v_alpha;
    g.opacity = e.vis * v_alpha;
    g.mean2d[0] = v_sigma * (s.ca * e.dx + s.cb * e.dy);
    g.mean2d[1] = v_sigma * (s.cb * e.dx + s.cc * e.dy);
    g.conic[0] = 0.5f * v_sigma * e.dx * e.dx;
    g.conic[1] = v_sigma * e.dx * e.dy;
    g.conic[2] = 0.5f * v_sigma * e.dy * e.dy;
  } else {
    g.opacity = g.mean2d[0] = g.mean2d[1] = g.conic[0] = g.conic[1] = g.conic[2] = 0.0f;
  }
  return g;
}

}  // namespace splat
