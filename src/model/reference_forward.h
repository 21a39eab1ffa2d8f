// The reference forward pass: plain f32, whole sequences, every layer plan. It is the
// specification the engine and the trainer are tested against, so it favours being obviously
// right over being fast (scalar kernels from ops/scalar_ops.h).
//
// Per layer i (pre-norm; Llama-style block):
//   h = RMSNorm(x) * input_norm
//   q = RoPE(h Wq^T)                                   [T, NH, D]
//   owner:  K_i = RoPE(h Wk^T), V_i = h Wv^T           [T, KVH, D]   (stored as layer i's KV)
//   reader: K_i, V_i = the stored KV of kv_source(i)   (no projection, no second RoPE)
//   x += Attention(q, K, V; causal, layer i's own window) Wo^T
//   x += (silu(RMSNorm(x) * post_norm Wg^T) * (... Wu^T)) Wd^T
// logits = RMSNorm(x) * final_norm W_out^T
#pragma once

#include <span>

#include "core/tensor.h"
#include "model/config.h"
#include "model/weights.h"

namespace mixattn {

// Logits [T, V] for tokens[T] at positions 0..T-1. Throws mixattn::Error for an empty sequence,
// a token outside [0, V) or a sequence longer than max_position_embeddings.
Tensor ReferenceForward(const ModelConfig& config, const ModelWeights& weights,
                        std::span<const int> tokens);

}  // namespace mixattn
