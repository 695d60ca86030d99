// Fused RemBERT embedding gather + LayerNorm: the framework-free interface of embed_kernel.cu.
//
//   out[t] = LN_E(word[input_ids[t]] + type[token_type_ids[t]] + pos[position_ids[t]])
//
// summed in transformers' order ((word + type) + position), statistics in fp32, written in the table
// dtype. Only CUDA headers are included so the kernel file compiles with plain nvcc; the torch binding
// (embed_binding.cpp) owns argument checking, dtype mapping, streams and the projection.
//
// Id validation protocol: the launcher first sets *error to kEmbedNoError, then every out-of-range id
// does atomicMin(error, token << 2 | table). Afterwards *error is either kEmbedNoError or encodes the
// lowest bad token index and, for that token, the first bad table in EmbedTable order. The value itself
// is read back from the id tensor by the caller; the bad row is written as zeros, never read.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace rembert_fast {

enum class EmbedDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Table codes in the error word (2 bits); the order decides which error a token with several reports.
enum EmbedTable : int { kWordTable = 0, kPositionTable = 1, kTypeTable = 2 };

constexpr int kEmbedMaxDim = 4096;                     // the largest embedding width E supported
constexpr unsigned long long kEmbedNoError = ~0ull;  // the error word when every id was in range

struct EmbedParams {
  const void* input_ids;       // (T,) int64 or int32
  const void* position_ids;    // (T,) int64 or int32
  const void* token_type_ids;  // (T,) int64 or int32
  bool input_ids_int64;        // false: int32
  bool position_ids_int64;
  bool token_type_ids_int64;
  int64_t num_tokens;          // T
  const void* word;            // (vocab_size, dim), contiguous, table dtype
  int64_t vocab_size;
  const void* position;        // (num_positions, dim)
  int64_t num_positions;
  const void* type;            // (num_types, dim)
  int64_t num_types;
  const void* ln_weight;       // (dim,) table dtype
  const void* ln_bias;         // (dim,) table dtype
  float eps;
  int dim;                     // E, 1 <= E <= kEmbedMaxDim
  void* out;                   // (T, dim) table dtype
  unsigned long long* error;   // one device word, see the protocol above
};

// Resets *error and enqueues the kernel on `stream`; returns the first CUDA error (cudaErrorInvalidValue
// for a dim outside [1, kEmbedMaxDim]). Never synchronises.
cudaError_t launch_embed(const EmbedParams& params, EmbedDtype dtype, cudaStream_t stream);

}  // namespace rembert_fast
