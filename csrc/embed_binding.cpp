// Torch binding of the fused embedding op: `rembert_fast._C.embed`, the CUDA backend of `ops.embed`.
//
// Checks every argument (TORCH_CHECK_VALUE -> Python ValueError naming the value), maps the table dtype to
// the kernel's, runs embed_kernel.cu on the current CUDA stream of the ids' device, then applies the
// optional 256 -> hidden projection (`embedding_hidden_mapping_in`) with at::linear, i.e. cuBLAS.
//
// Why the projection is not fused into the kernel: it is a (T, 256) x (256, 1152) GEMM, 0.59 MFLOP per
// token, which only tensor cores run at speed; cuBLAS already does that near peak. Fusing would save one
// write and one read of the (T, 256) LayerNorm output (1 KB per bf16 token), a fifth of the stage's
// traffic (about 4.4 KB per token including the 2.3 KB projection output), at the price of a hand-written
// tensor-core GEMM inside a gather kernel: not a trade worth making for a stage that runs once per forward.
//
// Synchronisation: ids are validated inside the kernel, so reporting a bad id needs the error word on the
// host: one 8-byte device-to-host copy after the launches, which waits for the kernel and the projection
// (and whatever the stream had queued before them). This replaces the three host-side min/max reductions (three syncs) of the
// eager path. Callers that validated the ids already pass check_ids=false to stay asynchronous; while the
// stream is being captured into a CUDA graph the copy is impossible and is skipped too. Bad ids then give
// zero rows instead of an error (never an out-of-bounds read).

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "embed_kernel.h"

namespace {

using rembert_fast::EmbedDtype;

EmbedDtype kernel_dtype(const at::Tensor& word_weight) {
  const at::ScalarType type = word_weight.scalar_type();
  TORCH_CHECK_VALUE(type == at::kFloat || type == at::kHalf || type == at::kBFloat16,
                    "word_weight has dtype ", type, "; expected one of float32, float16, bfloat16");
  if (type == at::kHalf) return EmbedDtype::kFloat16;
  if (type == at::kBFloat16) return EmbedDtype::kBFloat16;
  return EmbedDtype::kFloat32;
}

void check_device(const char* name, const at::Tensor& t, const at::Tensor& input_ids) {
  TORCH_CHECK_VALUE(t.device() == input_ids.device(), name, " is on ", t.device(), " but input_ids is on ",
                    input_ids.device(), "; move both to the same CUDA device");
}

void check_id_tensor(const char* name, const at::Tensor& ids, const at::Tensor& input_ids) {
  check_device(name, ids, input_ids);
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, name,
                    " must be int64 or int32, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.sizes() == input_ids.sizes(), name, " has shape ", ids.sizes(), "; input_ids has ",
                    input_ids.sizes());
}

// A (rows, dim) table when is_table, else a (dim,) vector; in word_weight's dtype and contiguous.
void check_param(const char* name, const at::Tensor& t, const at::Tensor& word_weight, int64_t dim,
                 const at::Tensor& input_ids, bool is_table) {
  check_device(name, t, input_ids);
  TORCH_CHECK_VALUE(t.scalar_type() == word_weight.scalar_type(), name, " has dtype ", t.scalar_type(),
                    " but word_weight has ", word_weight.scalar_type(), "; all weights must share one dtype");
  if (is_table) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == dim, name, " has shape ", t.sizes(), "; expected (rows, ",
                      dim, ") like word_weight");
  } else {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == dim, name, " has shape ", t.sizes(), "; expected (", dim,
                      ",)");
  }
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " with strides ", t.strides(),
                    " is not contiguous; pass .contiguous()");
}

// The bad id recorded by the kernel, as a ValueError in ops.check_ids' words.
void raise_bad_id(uint64_t error, const at::Tensor& input_ids, const at::Tensor& position_ids,
                               const at::Tensor& token_type_ids, int64_t vocab_size, int64_t num_positions,
                               int64_t num_types) {
  const int64_t token = static_cast<int64_t>(error >> 2);
  const int table = static_cast<int>(error & 3);
  const char* name = "input_ids";
  const char* limit_name = "vocab_size";
  const at::Tensor* ids = &input_ids;
  int64_t limit = vocab_size;
  if (table == rembert_fast::kPositionTable) {
    name = "position_ids";
    limit_name = "max_position_embeddings";
    ids = &position_ids;
    limit = num_positions;
  } else if (table == rembert_fast::kTypeTable) {
    name = "token_type_ids";
    limit_name = "type_vocab_size";
    ids = &token_type_ids;
    limit = num_types;
  }
  const int64_t value = (*ids)[token].item<int64_t>();
  TORCH_CHECK_VALUE(false, name, " contains ", value, " (flat index ", token, "), outside [0, ", limit, ") (",
                    limit_name, "=", limit, ")");
}

at::Tensor embed(const at::Tensor& input_ids,       // (...) int64/int32
                 const at::Tensor& position_ids,    // (...) int64/int32
                 const at::Tensor& token_type_ids,  // (...) int64/int32
                 const at::Tensor& word_weight,     // (vocab, E)
                 const at::Tensor& position_weight, // (max_positions, E)
                 const at::Tensor& type_weight,     // (type_vocab, E)
                 const at::Tensor& ln_weight,       // (E,)
                 const at::Tensor& ln_bias,         // (E,)
                 double eps,
                 const std::optional<at::Tensor>& proj_weight,  // (hidden, E)
                 const std::optional<at::Tensor>& proj_bias,    // (hidden,)
                 bool check_ids) {                              // read the error word back (syncs)
  TORCH_CHECK_VALUE(input_ids.is_cuda(), "input_ids is on ", input_ids.device(),
                    "; rembert_fast._C.embed takes CUDA tensors (use rembert_fast.ops.embed for others)");
  check_id_tensor("input_ids", input_ids, input_ids);
  check_id_tensor("position_ids", position_ids, input_ids);
  check_id_tensor("token_type_ids", token_type_ids, input_ids);
  TORCH_CHECK_VALUE(word_weight.dim() == 2, "word_weight has shape ", word_weight.sizes(),
                    "; expected (vocab, E)");
  const int64_t dim = word_weight.size(1);
  TORCH_CHECK_VALUE(dim >= 1 && dim <= rembert_fast::kEmbedMaxDim, "the embedding width E=", dim,
                    " is outside the kernel's range [1, ", rembert_fast::kEmbedMaxDim,
                    "]; use rembert_fast.use_backend('eager')");
  const EmbedDtype dtype = kernel_dtype(word_weight);
  check_param("word_weight", word_weight, word_weight, dim, input_ids, true);
  check_param("position_weight", position_weight, word_weight, dim, input_ids, true);
  check_param("type_weight", type_weight, word_weight, dim, input_ids, true);
  check_param("ln_weight", ln_weight, word_weight, dim, input_ids, false);
  check_param("ln_bias", ln_bias, word_weight, dim, input_ids, false);
  TORCH_CHECK_VALUE(eps >= 0.0, "eps must be >= 0, got ", eps);
  if (proj_weight.has_value()) {
    const at::Tensor& w = *proj_weight;
    check_device("proj_weight", w, input_ids);
    TORCH_CHECK_VALUE(w.scalar_type() == word_weight.scalar_type(), "proj_weight has dtype ", w.scalar_type(),
                      " but word_weight has ", word_weight.scalar_type());
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == dim, "proj_weight has shape ", w.sizes(),
                      "; expected (hidden, ", dim, ")");
    if (proj_bias.has_value()) {
      check_device("proj_bias", *proj_bias, input_ids);
      TORCH_CHECK_VALUE(proj_bias->scalar_type() == word_weight.scalar_type(), "proj_bias has dtype ",
                        proj_bias->scalar_type(), " but word_weight has ", word_weight.scalar_type());
      TORCH_CHECK_VALUE(proj_bias->dim() == 1 && proj_bias->size(0) == w.size(0), "proj_bias has shape ",
                        proj_bias->sizes(), "; expected (", w.size(0), ",)");
    }
  } else {
    TORCH_CHECK_VALUE(!proj_bias.has_value(), "proj_bias was given without proj_weight");
  }

  const c10::cuda::CUDAGuard guard(input_ids.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input_ids.device().index()).stream();
  const at::Tensor flat_input_ids = input_ids.reshape(-1).contiguous();
  const at::Tensor flat_position_ids = position_ids.reshape(-1).contiguous();
  const at::Tensor flat_token_type_ids = token_type_ids.reshape(-1).contiguous();
  const int64_t num_tokens = flat_input_ids.numel();
  at::Tensor out = at::empty({num_tokens, dim}, word_weight.options());
  at::Tensor error = at::empty({1}, input_ids.options().dtype(at::kLong));

  rembert_fast::EmbedParams params;
  params.input_ids = flat_input_ids.const_data_ptr();
  params.position_ids = flat_position_ids.const_data_ptr();
  params.token_type_ids = flat_token_type_ids.const_data_ptr();
  params.input_ids_int64 = flat_input_ids.scalar_type() == at::kLong;
  params.position_ids_int64 = flat_position_ids.scalar_type() == at::kLong;
  params.token_type_ids_int64 = flat_token_type_ids.scalar_type() == at::kLong;
  params.num_tokens = num_tokens;
  params.word = word_weight.const_data_ptr();
  params.vocab_size = word_weight.size(0);
  params.position = position_weight.const_data_ptr();
  params.num_positions = position_weight.size(0);
  params.type = type_weight.const_data_ptr();
  params.num_types = type_weight.size(0);
  params.ln_weight = ln_weight.const_data_ptr();
  params.ln_bias = ln_bias.const_data_ptr();
  params.eps = static_cast<float>(eps);
  params.dim = static_cast<int>(dim);
  params.out = out.mutable_data_ptr();
  params.error = reinterpret_cast<unsigned long long*>(error.mutable_data_ptr<int64_t>());
  const cudaError_t launched = rembert_fast::launch_embed(params, dtype, stream);
  TORCH_CHECK(launched == cudaSuccess, "rembert_fast embed kernel failed to launch: ",
              cudaGetErrorString(launched));

  // The projection is queued before the error word is read, so the GPU runs it while the host waits
  // (after a bad id it multiplies zero rows and is thrown away with them).
  if (proj_weight.has_value()) {
    out = at::linear(out, *proj_weight, proj_bias);
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (check_ids) C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (check_ids && capture == cudaStreamCaptureStatusNone) {
    const uint64_t word = static_cast<uint64_t>(error.item<int64_t>());  // the one sync, see the header
    if (word != rembert_fast::kEmbedNoError) {
      raise_bad_id(word, flat_input_ids, flat_position_ids, flat_token_type_ids, params.vocab_size,
                   params.num_positions, params.num_types);
    }
  }

  std::vector<int64_t> shape(input_ids.sizes().begin(), input_ids.sizes().end());
  shape.push_back(out.size(1));
  return out.view(shape);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rembert_fast CUDA extension: the fused embedding gather + LayerNorm (+ projection)";
  m.def("embed", &embed,
        "LN(word[input_ids] + type[token_type_ids] + position[position_ids]) then the optional projection; "
        "CUDA tensors, (..., E or hidden) in the tables' dtype. Raises ValueError for a bad argument or id.",
        py::arg("input_ids"), py::arg("position_ids"), py::arg("token_type_ids"), py::arg("word_weight"),
        py::arg("position_weight"), py::arg("type_weight"), py::arg("ln_weight"), py::arg("ln_bias"),
        py::arg("eps"), py::arg("proj_weight") = py::none(), py::arg("proj_bias") = py::none(),
        py::arg("check_ids") = true);
  m.attr("MAX_DIM") = rembert_fast::kEmbedMaxDim;
}
