// Stage 2: tile intersection. Groups every (Gaussian, tile) pair by tile, depth-sorted inside
// each tile, in static-size buffers and without any host synchronisation.
//
//  1. Sort the S·V·N (camera, Gaussian) pairs by key (camera << 32 | depth bits): depth as the
//     order-preserving integer image of the float32 bit pattern, i.e. full precision (no
//     quantisation). Culled Gaussians sort last in their camera.
//  2. Exclusive prefix sum (int64) of the tiles each Gaussian touches, in that order.
//  3. Each Gaussian writes its pairs to slots [offset, offset + tiles) of its scene's buffer of
//     M = max_intersections slots; slots ≥ M are not written (the farthest Gaussians of the last
//     cameras lose their pairs first, exactly as in the pure-JAX backend) and are counted.
//  4. Stable radix sort of the slots by 32-bit tile key (scene, camera, tile). Because the slots
//     were written in depth order, the stable sort leaves every tile's run depth-sorted: the same
//     order as one sort on 64-bit (tile | depth) keys, with fewer key bits to sort.
//  5. Per-tile runs from the sorted keys; per-tile true counts from a 2D difference array;
//     overflow = Σ_tiles (true count − composited) per camera, as in the JAX backend.
// All sizes are static (S·M slots are always sorted); unused slots carry a per-scene sentinel key
// that sorts after the scene's real tiles, so each scene keeps its own M-slot segment.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <climits>

#include "common.h"
#include "launch.h"

namespace splat {
namespace {

constexpr int kBlock = 256;

inline unsigned blocks_for(int64_t n) { return unsigned((n + kBlock - 1) / kBlock); }

inline int bits_for(uint64_t max_value) {
  int bits = 1;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

__global__ void depth_keys_kernel(const float* depths, const bool* valid, int64_t num_pairs, int64_t N,
                                  uint64_t* keys, int32_t* ids) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_pairs) return;
  const uint64_t camera = uint64_t(i / N);
  const uint32_t depth_key = valid[i] ? orderable_float_bits(depths[i]) : 0xffffffffu;
  keys[i] = (camera << 32) | depth_key;
  ids[i] = int32_t(i);
}

// counts[r] = tiles of the r-th Gaussian in depth order (counts[num_pairs] = 0 so that the
// exclusive scan also yields the grand total); also fills the 2D difference array of true counts.
__global__ void tile_counts_kernel(const int32_t* sorted_ids, const float* means2d, const int32_t* radii,
                                   const bool* valid, int64_t num_pairs, int64_t N, int tile_size, int tiles_x,
                                   int tiles_y, int64_t* counts, int32_t* diff) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r > num_pairs) return;
  if (r == num_pairs) {
    counts[r] = 0;
    return;
  }
  const int64_t i = sorted_ids[r];
  const TileRect rect = tile_rect(means2d[2 * i], means2d[2 * i + 1], float(radii[2 * i]), float(radii[2 * i + 1]),
                                  valid[i], tile_size, tiles_x, tiles_y);
  const int64_t count = rect.count();
  counts[r] = count;
  if (count == 0) return;
  const int64_t stride = int64_t(tiles_x) + 1;
  int32_t* d = diff + (i / N) * stride * (int64_t(tiles_y) + 1);
  atomicAdd(d + rect.y0 * stride + rect.x0, 1);
  atomicAdd(d + rect.y0 * stride + rect.x1, -1);
  atomicAdd(d + rect.y1 * stride + rect.x0, -1);
  atomicAdd(d + rect.y1 * stride + rect.x1, 1);
}

__global__ void fill_unused_kernel(const int64_t* offsets, int64_t scenes, int64_t pairs_per_scene, int64_t M,
                                   uint32_t keys_per_scene, uint32_t* keys, int32_t* values) {
  const int64_t slot = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slot >= scenes * M) return;
  const int64_t s = slot / M, local = slot % M;
  const int64_t used = offsets[(s + 1) * pairs_per_scene] - offsets[s * pairs_per_scene];
  if (local < used) return;
  keys[slot] = uint32_t(s) * keys_per_scene + (keys_per_scene - 1);  // the scene's sentinel
  values[slot] = -1;
}

__global__ void enumerate_kernel(const int32_t* sorted_ids, const int64_t* counts, const int64_t* offsets,
                                 const float* means2d, const int32_t* radii, const bool* valid, int64_t num_pairs,
                                 int64_t V, int64_t N, int64_t M, int tile_size, int tiles_x, int tiles_y,
                                 uint32_t keys_per_scene, uint32_t* keys, int32_t* values) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= num_pairs) return;
  const int64_t count = counts[r];
  if (count == 0) return;
  const int64_t i = sorted_ids[r];
  const int64_t gv = i / N, g = i % N, s = gv / V, v = gv % V;
  const int64_t local = offsets[r] - offsets[s * V * N];
  if (local >= M) return;
  const TileRect rect = tile_rect(means2d[2 * i], means2d[2 * i + 1], float(radii[2 * i]), float(radii[2 * i + 1]),
                                  valid[i], tile_size, tiles_x, tiles_y);
  const int64_t width = rect.x1 - rect.x0;
  const int64_t n = count < M - local ? count : M - local;
  const uint32_t key_base = uint32_t(s) * keys_per_scene + uint32_t(v * int64_t(tiles_x) * tiles_y);
  const int64_t base = s * M + local;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t tile = (rect.y0 + j / width) * tiles_x + (rect.x0 + j % width);
    keys[base + j] = key_base + uint32_t(tile);
    values[base + j] = int32_t(g);
  }
}

__global__ void tile_bounds_kernel(const uint32_t* keys, int64_t num_slots, uint32_t keys_per_scene,
                                   int64_t tiles_per_view_x_views, int32_t* begin, int32_t* end) {
  const int64_t slot = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slot >= num_slots) return;
  const uint32_t key = keys[slot];
  const uint32_t local = key % keys_per_scene;
  if (local == keys_per_scene - 1) return;  // sentinel
  const int64_t tile = int64_t(key / keys_per_scene) * tiles_per_view_x_views + local;
  if (slot == 0 || keys[slot - 1] != key) begin[tile] = int32_t(slot);
  if (slot == num_slots - 1 || keys[slot + 1] != key) end[tile] = int32_t(slot + 1);
}

__global__ void binned_counts_kernel(const int32_t* begin, const int32_t* end, int64_t num_tiles, int32_t* binned) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < num_tiles) binned[t] = end[t] - begin[t];
}

// One block per camera: 2D inclusive prefix sum of its difference array -> true tile counts.
__global__ void true_counts_kernel(int32_t* diff, int tiles_x, int tiles_y, int32_t* tile_counts) {
  const int64_t gv = blockIdx.x;
  const int stride = tiles_x + 1;
  int32_t* d = diff + gv * int64_t(stride) * (tiles_y + 1);
  for (int x = threadIdx.x; x < stride; x += blockDim.x) {
    int32_t running = 0;
    for (int y = 0; y <= tiles_y; ++y) {
      running += d[y * stride + x];
      d[y * stride + x] = running;
    }
  }
  __syncthreads();
  for (int y = threadIdx.x; y <= tiles_y; y += blockDim.x) {
    int32_t running = 0;
    for (int x = 0; x < stride; ++x) {
      running += d[y * stride + x];
      d[y * stride + x] = running;
    }
  }
  __syncthreads();
  const int64_t tiles = int64_t(tiles_x) * tiles_y;
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x)
    tile_counts[gv * tiles + t] = d[(t / tiles_x) * stride + (t % tiles_x)];
}

__global__ void finalize_tiles_kernel(const int32_t* binned, const int32_t* scan, const int32_t* tile_counts,
                                      int64_t num_tiles, int64_t tiles_per_view, int64_t views, int64_t capacity,
                                      int32_t* tile_offsets, int32_t* tile_composited,
                                      unsigned long long* dropped) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= num_tiles) return;
  const int64_t gv = t / tiles_per_view, s = gv / views;
  const int32_t composited = int32_t(binned[t] < capacity ? binned[t] : capacity);
  tile_offsets[t] = scan[t] - scan[s * views * tiles_per_view];
  tile_composited[t] = composited;
  const int32_t lost = tile_counts[t] - composited;
  if (lost > 0) atomicAdd(dropped + gv, (unsigned long long)lost);
}

__global__ void overflow_kernel(const unsigned long long* dropped, int64_t views, int32_t* overflow) {
  const int64_t gv = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (gv < views) overflow[gv] = int32_t(dropped[gv] < (unsigned long long)INT_MAX ? dropped[gv] : INT_MAX);
}

template <typename T>
T* alloc(const ScratchFn& scratch, int64_t count) {
  return static_cast<T*>(scratch(size_t(count > 0 ? count : 1) * sizeof(T)));
}

}  // namespace

Status bin_intersections(const BinningArgs& a, const ScratchFn& scratch, cudaStream_t stream) {
  const Sizes& sz = a.sz;
  const int64_t S = sz.scenes, V = sz.views, N = sz.gaussians, M = a.max_intersections;
  const int64_t num_pairs = S * V * N;
  const int64_t tiles_per_view = sz.tiles_per_view();
  const int64_t num_tiles = S * V * tiles_per_view;
  const int64_t num_slots = S * M;
  const uint32_t keys_per_scene = uint32_t(V * tiles_per_view + 1);  // + the sentinel
  const Status no_memory{cudaErrorMemoryAllocation, "scratch allocation for tile intersection"};

  // ---- 1. depth sort ------------------------------------------------------------------------
  uint64_t* depth_keys[2] = {alloc<uint64_t>(scratch, num_pairs), alloc<uint64_t>(scratch, num_pairs)};
  int32_t* pair_ids[2] = {alloc<int32_t>(scratch, num_pairs), alloc<int32_t>(scratch, num_pairs)};
  int64_t* counts = alloc<int64_t>(scratch, num_pairs + 1);
  int64_t* offsets = alloc<int64_t>(scratch, num_pairs + 1);
  const int64_t diff_size = S * V * (int64_t(sz.tiles_x) + 1) * (int64_t(sz.tiles_y) + 1);
  int32_t* diff = alloc<int32_t>(scratch, diff_size);
  if (!depth_keys[0] || !depth_keys[1] || !pair_ids[0] || !pair_ids[1] || !counts || !offsets || !diff)
    return no_memory;
  SPLAT_TRY(cudaMemsetAsync(diff, 0, sizeof(int32_t) * diff_size, stream));

  const int32_t* sorted_ids = pair_ids[0];
  if (num_pairs > 0) {
    depth_keys_kernel<<<blocks_for(num_pairs), kBlock, 0, stream>>>(a.depths, a.valid, num_pairs, N, depth_keys[0],
                                                                    pair_ids[0]);
    SPLAT_TRY_LAUNCH("depth_keys_kernel");
    cub::DoubleBuffer<uint64_t> keys(depth_keys[0], depth_keys[1]);
    cub::DoubleBuffer<int32_t> values(pair_ids[0], pair_ids[1]);
    const int end_bit = 32 + bits_for(uint64_t(S * V - 1));
    size_t temp_bytes = 0;
    SPLAT_TRY(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, values, int(num_pairs), 0, end_bit, stream));
    void* temp = scratch(temp_bytes);
    if (!temp) return no_memory;
    SPLAT_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, values, int(num_pairs), 0, end_bit, stream));
    sorted_ids = values.Current();
  }

  // ---- 2. tiles per Gaussian and their prefix sum --------------------------------------------
  tile_counts_kernel<<<blocks_for(num_pairs + 1), kBlock, 0, stream>>>(
      sorted_ids, a.means2d, a.radii, a.valid, num_pairs, N, sz.tile_size, sz.tiles_x, sz.tiles_y, counts, diff);
  SPLAT_TRY_LAUNCH("tile_counts_kernel");
  {
    size_t temp_bytes = 0;
    SPLAT_TRY(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, counts, offsets, int(num_pairs + 1), stream));
    void* temp = scratch(temp_bytes);
    if (!temp) return no_memory;
    SPLAT_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, counts, offsets, int(num_pairs + 1), stream));
  }

  // ---- 3. enumerate the pairs into each scene's M slots --------------------------------------
  uint32_t* tile_keys[2] = {alloc<uint32_t>(scratch, num_slots), alloc<uint32_t>(scratch, num_slots)};
  int32_t* slot_values = alloc<int32_t>(scratch, num_slots);
  if (!tile_keys[0] || !tile_keys[1] || !slot_values) return no_memory;
  if (num_slots > 0) {
    fill_unused_kernel<<<blocks_for(num_slots), kBlock, 0, stream>>>(offsets, S, V * N, M, keys_per_scene,
                                                                     tile_keys[0], slot_values);
    SPLAT_TRY_LAUNCH("fill_unused_kernel");
  }
  if (num_pairs > 0) {
    enumerate_kernel<<<blocks_for(num_pairs), kBlock, 0, stream>>>(
        sorted_ids, counts, offsets, a.means2d, a.radii, a.valid, num_pairs, V, N, M, sz.tile_size, sz.tiles_x,
        sz.tiles_y, keys_per_scene, tile_keys[0], slot_values);
    SPLAT_TRY_LAUNCH("enumerate_kernel");
  }

  // ---- 4. stable sort of the slots by tile -----------------------------------------------------
  if (num_slots > 0) {
    cub::DoubleBuffer<uint32_t> keys(tile_keys[0], tile_keys[1]);
    cub::DoubleBuffer<int32_t> values(slot_values, a.flatten_ids);
    const int end_bit = bits_for(uint64_t(S) * keys_per_scene - 1);
    size_t temp_bytes = 0;
    SPLAT_TRY(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, values, int(num_slots), 0, end_bit, stream));
    void* temp = scratch(temp_bytes);
    if (!temp) return no_memory;
    SPLAT_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, values, int(num_slots), 0, end_bit, stream));
    if (values.Current() != a.flatten_ids)
      SPLAT_TRY(cudaMemcpyAsync(a.flatten_ids, values.Current(), sizeof(int32_t) * num_slots,
                                cudaMemcpyDeviceToDevice, stream));
    tile_keys[0] = keys.Current();
  }

  // ---- 5. per-tile runs, true counts, overflow ------------------------------------------------
  int32_t* begin = alloc<int32_t>(scratch, num_tiles);
  int32_t* end = alloc<int32_t>(scratch, num_tiles);
  int32_t* binned = alloc<int32_t>(scratch, num_tiles);
  int32_t* scan = alloc<int32_t>(scratch, num_tiles);
  unsigned long long* dropped = alloc<unsigned long long>(scratch, S * V);
  if (!begin || !end || !binned || !scan || !dropped) return no_memory;
  SPLAT_TRY(cudaMemsetAsync(begin, 0, sizeof(int32_t) * num_tiles, stream));
  SPLAT_TRY(cudaMemsetAsync(end, 0, sizeof(int32_t) * num_tiles, stream));
  SPLAT_TRY(cudaMemsetAsync(dropped, 0, sizeof(unsigned long long) * S * V, stream));
  if (num_slots > 0) {
    tile_bounds_kernel<<<blocks_for(num_slots), kBlock, 0, stream>>>(tile_keys[0], num_slots, keys_per_scene,
                                                                     V * tiles_per_view, begin, end);
    SPLAT_TRY_LAUNCH("tile_bounds_kernel");
  }
  if (num_tiles == 0) {  // unreachable for width, height ≥ 1; keeps every launch non-empty
    SPLAT_TRY(cudaMemsetAsync(a.overflow, 0, sizeof(int32_t) * S * V, stream));
    return Ok();
  }
  binned_counts_kernel<<<blocks_for(num_tiles), kBlock, 0, stream>>>(begin, end, num_tiles, binned);
  SPLAT_TRY_LAUNCH("binned_counts_kernel");
  {
    size_t temp_bytes = 0;
    SPLAT_TRY(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, binned, scan, int(num_tiles), stream));
    void* temp = scratch(temp_bytes);
    if (!temp) return no_memory;
    SPLAT_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, binned, scan, int(num_tiles), stream));
  }
  true_counts_kernel<<<unsigned(S * V), kBlock, 0, stream>>>(diff, sz.tiles_x, sz.tiles_y, a.tile_counts);
  SPLAT_TRY_LAUNCH("true_counts_kernel");
  finalize_tiles_kernel<<<blocks_for(num_tiles), kBlock, 0, stream>>>(binned, scan, a.tile_counts, num_tiles,
                                                                      tiles_per_view, V, a.capacity, a.tile_offsets,
                                                                      a.tile_composited, dropped);
  SPLAT_TRY_LAUNCH("finalize_tiles_kernel");
  overflow_kernel<<<blocks_for(S * V), kBlock, 0, stream>>>(dropped, S * V, a.overflow);
  SPLAT_TRY_LAUNCH("overflow_kernel");
  return Ok();
}

}  // namespace splat
