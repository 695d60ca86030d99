// Fused RemBERT embedding gather + LayerNorm over the real (unpadded) tokens.
//
// Math:   x[t] = (word[input_ids[t]] + type[token_type_ids[t]]) + pos[position_ids[t]]  (transformers' order)
//         out[t] = (x[t] - mean(x[t])) * rsqrt(var(x[t]) + eps) * ln_weight + ln_bias     (biased variance)
// Grid:   one warp per token row, kWarpsPerBlock warps per block, ceil(T / kWarpsPerBlock) blocks.
// Dtypes: tables, LN parameters and output share one dtype (fp32, fp16 or bf16); the sum, the mean, the
//         variance and the normalisation are fp32 (no rounding between the three adds, unlike eager
//         half-precision PyTorch, which rounds after each add). Ids are int64 or int32, per tensor.
// Loads:  16-byte vectors (8 bf16/fp16 or 4 fp32 per lane) when E is a multiple of the vector and every
//         table, LN parameter and output pointer is 16-byte aligned; one element per lane otherwise.
// Limits: 1 <= E <= kEmbedMaxDim (4096). A row that fits in 8 loads per lane (E <= 2048 bf16/fp16,
//         1024 fp32, 256 on the scalar path) stays in registers and each table element is read once;
//         wider rows take a three-pass loop that re-reads the row (from L1/L2) instead of holding it.
// Errors: an id outside its table is never dereferenced: its row is written as zeros and the token is
//         recorded in the error word (protocol in embed_kernel.h); the binding turns it into ValueError.
//
// Why a warp per row: RemBERT's E = 256 is 512 bytes in bf16, exactly one 16-byte load per lane per
// table, so a warp covers a row with no idle lanes and reduces mean and variance with register shuffles:
// no shared memory and no __syncthreads. A block per row would need only 32 threads for the same loads
// (a larger block would idle lanes) and would add a shared-memory reduction with two barriers. Parallelism
// is not short either: at full occupancy an SM keeps 64 warps x 3 rows x 512 B = 96 KB of gathers in
// flight, against the ~15 KB per SM that Little's law asks for (3.35 TB/s x ~600 ns / 132 SMs on H100),
// so several rows per warp would add registers without adding useful memory parallelism. Four warps per
// block keep blocks small, so the tail of a short batch (T = a few hundred tokens) still spreads over
// many SMs. benches/bench_embed.py measures the result against device-to-device copy bandwidth.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "embed_kernel.h"

namespace rembert_fast {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpSize * kWarpsPerBlock;
constexpr int kMaxItemsInRegisters = 8;  // vector loads per lane per table kept in registers
constexpr int64_t kMaxBlocks = 2147483647;  // gridDim.x limit

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC consecutive elements moved as one aligned load or store (16 bytes on the vector path).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_floats(const T* src, float (&dst)[VEC]) {
  const Pack<T, VEC> pack = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] = to_float(pack.v[j]);
}

__device__ __forceinline__ int64_t load_id(const void* ids, bool is_int64, int64_t token) {
  return is_int64 ? static_cast<const int64_t*>(ids)[token]
                  : static_cast<int64_t>(static_cast<const int32_t*>(ids)[token]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
struct Rows {
  const T* word;
  const T* position;
  const T* type;
};

// The three table rows of `token`, or false after recording the token's first out-of-range id. Every lane
// of the warp reads the same ids (one broadcast transaction each) and so takes the same branch.
template <typename T>
__device__ __forceinline__ bool lookup_rows(const EmbedParams& p, int64_t token, int lane, Rows<T>* rows) {
  const int64_t word_id = load_id(p.input_ids, p.input_ids_int64, token);
  const int64_t position_id = load_id(p.position_ids, p.position_ids_int64, token);
  const int64_t type_id = load_id(p.token_type_ids, p.token_type_ids_int64, token);
  int bad_table = -1;
  if (word_id < 0 || word_id >= p.vocab_size) {
    bad_table = kWordTable;
  } else if (position_id < 0 || position_id >= p.num_positions) {
    bad_table = kPositionTable;
  } else if (type_id < 0 || type_id >= p.num_types) {
    bad_table = kTypeTable;
  }
  if (bad_table >= 0) {
    if (lane == 0) {
      const unsigned long long code = static_cast<unsigned long long>(bad_table);
      atomicMin(p.error, (static_cast<unsigned long long>(token) << 2) | code);
    }
    return false;
  }
  rows->word = static_cast<const T*>(p.word) + word_id * p.dim;
  rows->position = static_cast<const T*>(p.position) + position_id * p.dim;
  rows->type = static_cast<const T*>(p.type) + type_id * p.dim;
  return true;
}

// x = (word + type) + position for the VEC elements of vector `v`, in fp32.
template <typename T, int VEC>
__device__ __forceinline__ void gather_sum(const Rows<T>& rows, int v, float (&x)[VEC]) {
  float word[VEC], type[VEC], position[VEC];
  load_floats<T, VEC>(rows.word + v * VEC, word);
  load_floats<T, VEC>(rows.type + v * VEC, type);
  load_floats<T, VEC>(rows.position + v * VEC, position);
#pragma unroll
  for (int j = 0; j < VEC; ++j) x[j] = (word[j] + type[j]) + position[j];
}

// out[v*VEC : (v+1)*VEC] = (x - mean) * rstd * ln_weight + ln_bias, rounded to T.
template <typename T, int VEC>
__device__ __forceinline__ void store_normalized(const EmbedParams& p, T* out, int v, const float (&x)[VEC],
                                                 float mean, float rstd) {
  float weight[VEC], bias[VEC];
  load_floats<T, VEC>(static_cast<const T*>(p.ln_weight) + v * VEC, weight);
  load_floats<T, VEC>(static_cast<const T*>(p.ln_bias) + v * VEC, bias);
  Pack<T, VEC> pack;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pack.v[j] = from_float<T>((x[j] - mean) * rstd * weight[j] + bias[j]);
  *reinterpret_cast<Pack<T, VEC>*>(out + v * VEC) = pack;
}

template <typename T>
__device__ __forceinline__ void zero_row(T* out, int dim, int lane) {
  for (int c = lane; c < dim; c += kWarpSize) out[c] = from_float<T>(0.0f);
}

// Register path: lane `lane` owns vectors lane, lane + 32, ... (ITEMS of them, masked past E).
template <typename T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kThreads) embed_ln_kernel(const EmbedParams p) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (token >= p.num_tokens) return;  // the whole warp leaves together, so the shuffles below stay full
  const int lane = threadIdx.x % kWarpSize;
  T* out = static_cast<T*>(p.out) + token * p.dim;
  Rows<T> rows;
  if (!lookup_rows<T>(p, token, lane, &rows)) {
    zero_row<T>(out, p.dim, lane);
    return;
  }
  const int vectors = p.dim / VEC;
  float x[ITEMS][VEC];
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int v = i * kWarpSize + lane;
    if (v < vectors) {
      gather_sum<T, VEC>(rows, v, x[i]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += x[i][j];
    }
  }
  const float mean = warp_sum(sum) / static_cast<float>(p.dim);
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    if (i * kWarpSize + lane < vectors) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = x[i][j] - mean;
        squares += d * d;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(squares) / static_cast<float>(p.dim) + p.eps);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int v = i * kWarpSize + lane;
    if (v < vectors) store_normalized<T, VEC>(p, out, v, x[i], mean, rstd);
  }
}

// Wide rows: three passes over the row (sum, squared deviations, output), re-reading it from cache.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) embed_ln_looped_kernel(const EmbedParams p) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (token >= p.num_tokens) return;
  const int lane = threadIdx.x % kWarpSize;
  T* out = static_cast<T*>(p.out) + token * p.dim;
  Rows<T> rows;
  if (!lookup_rows<T>(p, token, lane, &rows)) {
    zero_row<T>(out, p.dim, lane);
    return;
  }
  const int vectors = p.dim / VEC;
  float x[VEC];
  float sum = 0.0f;
  for (int v = lane; v < vectors; v += kWarpSize) {
    gather_sum<T, VEC>(rows, v, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += x[j];
  }
  const float mean = warp_sum(sum) / static_cast<float>(p.dim);
  float squares = 0.0f;
  for (int v = lane; v < vectors; v += kWarpSize) {
    gather_sum<T, VEC>(rows, v, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = x[j] - mean;
      squares += d * d;
    }
  }
  const float rstd = rsqrtf(warp_sum(squares) / static_cast<float>(p.dim) + p.eps);
  for (int v = lane; v < vectors; v += kWarpSize) {
    gather_sum<T, VEC>(rows, v, x);
    store_normalized<T, VEC>(p, out, v, x, mean, rstd);
  }
}

template <typename T, int VEC>
cudaError_t launch_with_vector(const EmbedParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > kMaxBlocks) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned int>(blocks));
  const int per_lane = (p.dim / VEC + kWarpSize - 1) / kWarpSize;
  if (per_lane <= 1) {
    embed_ln_kernel<T, VEC, 1><<<grid, kThreads, 0, stream>>>(p);
  } else if (per_lane <= 2) {
    embed_ln_kernel<T, VEC, 2><<<grid, kThreads, 0, stream>>>(p);
  } else if (per_lane <= 4) {
    embed_ln_kernel<T, VEC, 4><<<grid, kThreads, 0, stream>>>(p);
  } else if (per_lane <= kMaxItemsInRegisters) {
    embed_ln_kernel<T, VEC, kMaxItemsInRegisters><<<grid, kThreads, 0, stream>>>(p);
  } else {
    embed_ln_looped_kernel<T, VEC><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

bool aligned_16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T>
cudaError_t launch_typed(const EmbedParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  // A dim that is a multiple of kVec keeps every row start 16-byte aligned once the base pointer is.
  const bool vectorizable = p.dim % kVec == 0 && aligned_16(p.word) && aligned_16(p.position) &&
                            aligned_16(p.type) && aligned_16(p.ln_weight) && aligned_16(p.ln_bias) &&
                            aligned_16(p.out);
  return vectorizable ? launch_with_vector<T, kVec>(p, stream) : launch_with_vector<T, 1>(p, stream);
}

}  // namespace

cudaError_t launch_embed(const EmbedParams& params, EmbedDtype dtype, cudaStream_t stream) {
  if (params.dim < 1 || params.dim > kEmbedMaxDim) return cudaErrorInvalidValue;
  const cudaError_t reset = cudaMemsetAsync(params.error, 0xFF, sizeof(unsigned long long), stream);
  if (reset != cudaSuccess) return reset;
  if (params.num_tokens == 0) return cudaSuccess;
  switch (dtype) {
    case EmbedDtype::kFloat32:
      return launch_typed<float>(params, stream);
    case EmbedDtype::kFloat16:
      return launch_typed<__half>(params, stream);
    case EmbedDtype::kBFloat16:
      return launch_typed<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace rembert_fast
