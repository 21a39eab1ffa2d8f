#include "engine/engine.h"

#include <algorithm>

#include "core/error.h"

namespace mixattn {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kNone:
      break;
  }
  return "none";
}

namespace {

int64_t PoolBlocks(const ModelConfig& config, const EngineOptions& options) {
  if (options.block_tokens < 1) Fail("KV block size must be at least 1 token");
  if (options.prefill_chunk < 1) Fail("prefill chunk must be at least 1 token");
  if (options.max_batch_tokens < 1) Fail("max batch tokens must be at least 1");
  if (options.max_running < 1) Fail("max running requests must be at least 1");
  const int64_t block_bytes = KvBlockPool::BlockBytes(
      options.block_tokens, config.num_key_value_heads, config.head_dim, options.kv_dtype);
  const int64_t blocks = options.kv_memory_bytes / block_bytes;
  if (blocks < 1)
    Fail("KV memory of ", options.kv_memory_bytes, " bytes holds no block of ", block_bytes,
         " bytes");
  return blocks;
}

}  // namespace

Engine::Engine(const ModelConfig& config, const ModelWeights& weights, const EngineOptions& options,
               const Tokenizer* tokenizer)
    : config_(config),
      options_(options),
      tokenizer_(tokenizer),
      runner_(
          config, weights, options.weights_dtype,
          options.batch_invariant ? ops::LargeBatches::kRowInvariant : ops::LargeBatches::kOneDnn),
      pool_(PoolBlocks(config, options), options.block_tokens, config.num_key_value_heads,
            config.head_dim, options.kv_dtype),
      cache_(runner_.plan(), pool_) {}

int64_t Engine::BlocksToReserve(const Request& request) const {
  const int64_t longest =
      std::min<int64_t>(config_.max_position_embeddings,
                        static_cast<int64_t>(request.spec.prompt.size()) + request.spec.max_tokens);
  return cache_.BlocksToReserve(longest, options_.prefill_chunk);
}

RequestId Engine::Submit(GenerationRequest spec) {
  if (spec.prompt.empty()) Fail("the prompt is empty; give at least one token");
  for (size_t i = 0; i < spec.prompt.size(); ++i) {
    if (spec.prompt[i] < 0 || spec.prompt[i] >= config_.vocab_size) {
      Fail("prompt token ", spec.prompt[i], " at position ", i, " is outside the vocabulary [0, ",
           config_.vocab_size, ")");
    }
  }
  if (spec.max_tokens < 1) Fail("max_tokens = ", spec.max_tokens, " must be at least 1");
  const int64_t prompt_length = static_cast<int64_t>(spec.prompt.size());
  if (prompt_length >= config_.max_position_embeddings) {
    Fail("the prompt has ", prompt_length, " tokens; the model's context is ",
         config_.max_position_embeddings, " tokens, leaving no room to generate");
  }
  ValidateSamplingParams(spec.sampling);
  if (!spec.stop.empty() && tokenizer_ == nullptr)
    Fail("stop strings need a model with a tokenizer");
  for (const std::string& stop : spec.stop) {
    if (stop.empty()) Fail("stop strings must not be empty");
  }

  auto request = std::make_unique<Request>();
  request->id = next_id_++;
  request->tokens = spec.prompt;
  request->sampler = std::make_unique<Sampler>(spec.sampling, spec.prompt);
  if (tokenizer_) request->decoder = std::make_unique<TokenStreamDecoder>(*tokenizer_);
  request->spec = std::move(spec);
  request->reserved_blocks = BlocksToReserve(*request);
  if (request->reserved_blocks > pool_.num_blocks()) {
    Fail("this request needs ", request->reserved_blocks,
         " KV blocks at its full length but the KV memory holds ", pool_.num_blocks(),
         "; give more KV memory or ask for fewer tokens");
  }
  const RequestId id = request->id;
  waiting_.push_back(std::move(request));
  return id;
}

void Engine::Cancel(RequestId id) {
  for (auto& request : running_) {
    if (request->id == id) request->cancelled = true;
  }
  for (auto& request : waiting_) {
    if (request->id == id) request->cancelled = true;
  }
}

void Engine::Admit() {
  // Optimistic admission: blocks the first chunks of the requests admitted here will take, so
  // that requests admitted together fit together (none is admitted only to be preempted at once).
  int64_t first_chunks_blocks = 0;
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
    Request& next = *waiting_.front();
    if (!next.cancelled) {
      if (options_.admission == EngineOptions::Admission::kReserveFull) {
        if (reserved_blocks_ + next.reserved_blocks > pool_.num_blocks()) return;
      } else {
        const int64_t first_chunk =
            std::min<int64_t>(options_.prefill_chunk, static_cast<int64_t>(next.tokens.size()));
        const int64_t need = cache_.BlocksToReserve(first_chunk, options_.prefill_chunk);
        if (first_chunks_blocks + need > pool_.num_free()) return;
        first_chunks_blocks += need;
      }
      next.sequence = cache_.AddSequence();
      next.cached = 0;
      reserved_blocks_ += next.reserved_blocks;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Engine::Preempt(Request& request) {
  cache_.Release(*request.sequence);
  request.sequence.reset();
  request.cached = 0;
  reserved_blocks_ -= request.reserved_blocks;
  ++counters_.preemptions;
}

void Engine::Finish(Request& request, FinishReason reason, std::vector<EngineEvent>& events) {
  if (request.sequence) {
    cache_.Release(*request.sequence);
    request.sequence.reset();
    reserved_blocks_ -= request.reserved_blocks;
  }
  EngineEvent* event = nullptr;
  for (EngineEvent& e : events) {
    if (e.request == request.id) event = &e;
  }
  if (!event) event = &events.emplace_back(EngineEvent{request.id, {}, {}, FinishReason::kNone});
  if (request.decoder && !request.stopped_by_string) {
    request.text += request.decoder->Flush();
  }
  event->text += request.text.substr(std::min(request.text_emitted, request.text.size()));
  request.text_emitted = request.text.size();
  event->finish = reason;
}

FinishReason Engine::AcceptToken(Request& request, int token, EngineEvent& event) {
  request.tokens.push_back(token);
  ++request.generated;
  ++counters_.generated_tokens;
  event.tokens.push_back(token);
  if (request.spec.stop_at_eos && tokenizer_ && token == tokenizer_->eos_id())
    return FinishReason::kStop;
  if (request.decoder) {
    request.text += request.decoder->Push(token);
    size_t longest_stop = 0;
    for (const std::string& stop : request.spec.stop) {
      // Search only where a new match can start: the text added now, plus a stop's length before.
      const size_t from =
          request.text_emitted >= stop.size() ? request.text_emitted - stop.size() + 1 : 0;
      const size_t found = request.text.find(stop, std::min(from, request.text.size()));
      if (found != std::string::npos) {
        request.text.resize(found);  // the stop string is not part of the output
        request.stopped_by_string = true;
        return FinishReason::kStop;
      }
      longest_stop = std::max(longest_stop, stop.size());
    }
    // Hold back text that could still turn into a stop string, and never split a UTF-8
    // character: the cut moves back over continuation bytes (10xxxxxx).
    size_t safe = request.text.size() >= longest_stop
                      ? request.text.size() - (longest_stop ? longest_stop - 1 : 0)
                      : 0;
    while (safe > request.text_emitted && safe < request.text.size() &&
           (static_cast<unsigned char>(request.text[safe]) & 0xC0) == 0x80) {
      --safe;
    }
    if (safe > request.text_emitted) {
      event.text += request.text.substr(request.text_emitted, safe - request.text_emitted);
      request.text_emitted = safe;
    }
  }
  if (request.generated >= request.spec.max_tokens) return FinishReason::kLength;
  if (static_cast<int64_t>(request.tokens.size()) >= config_.max_position_embeddings)
    return FinishReason::kLength;
  return FinishReason::kNone;
}

std::vector<EngineEvent> Engine::Step() {
  std::vector<EngineEvent> events;
  // Cancelled requests leave first, freeing their blocks for this step.
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->cancelled) {
      Finish(**it, FinishReason::kCancelled, events);
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->cancelled) {
      Finish(**it, FinishReason::kCancelled, events);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  Admit();
  if (running_.empty()) return events;

  // Build the batch: decodes (one pending token) first, then prefill chunks, within the budget.
  // If the pool cannot hold the batch's new blocks, preempt the newest request and rebuild.
  std::vector<BatchItem> items;
  std::vector<Request*> item_requests;
  for (;;) {
    items.clear();
    item_requests.clear();
    int64_t budget = options_.max_batch_tokens, blocks_needed = 0;
    for (int pass = 0; pass < 2; ++pass) {
      for (auto& owned : running_) {
        Request& request = *owned;
        const int64_t pending = static_cast<int64_t>(request.tokens.size()) - request.cached;
        const bool decoding = pending == 1;
        if ((pass == 0) != decoding || budget == 0) continue;
        const int64_t count = std::min({pending, options_.prefill_chunk, budget});
        budget -= count;
        // A sequence whose sliding owners free more than it allocates (net < 0) releases those
        // blocks inside its own Append; other sequences appended earlier cannot count on them.
        blocks_needed +=
            std::max<int64_t>(0, cache_.BlocksNeededToAppend(*request.sequence, count));
        items.push_back(
            BatchItem{*request.sequence,
                      std::span<const int>(request.tokens)
                          .subspan(static_cast<size_t>(request.cached), static_cast<size_t>(count)),
                      request.cached, count == pending, false});
        item_requests.push_back(&request);
      }
    }
    if (blocks_needed <= pool_.num_free()) break;
    if (running_.size() == 1) {
      Fail("internal error: one request needs more KV blocks than the pool holds");
    }
    Request& newest = *running_.back();
    Preempt(newest);
    waiting_.push_front(std::move(running_.back()));
    running_.pop_back();
  }

  for (const BatchItem& item : items) {
    const bool ok = cache_.Append(item.sequence, static_cast<int64_t>(item.tokens.size()));
    MIXATTN_CHECK(ok);
  }
  const std::vector<float>& logits = runner_.Forward(items, cache_);
  if (logits_observer_) logits_observer_(items, logits);
  ++counters_.steps;

  int64_t logit_row = 0;
  std::vector<Request*> finished;
  for (size_t n = 0; n < items.size(); ++n) {
    Request& request = *item_requests[n];
    const int64_t count = static_cast<int64_t>(items[n].tokens.size());
    if (request.cached < static_cast<int64_t>(request.spec.prompt.size())) {
      counters_.prompt_tokens += std::min<int64_t>(
          count, static_cast<int64_t>(request.spec.prompt.size()) - request.cached);
    }
    request.cached += count;
    if (!items[n].want_logits) continue;
    const std::span<const float> row(logits.data() + logit_row * config_.vocab_size,
                                     static_cast<size_t>(config_.vocab_size));
    ++logit_row;
    EngineEvent event{request.id, {}, {}, FinishReason::kNone};
    const FinishReason reason = AcceptToken(request, request.sampler->Sample(row), event);
    events.push_back(std::move(event));
    if (reason != FinishReason::kNone) {
      Finish(request, reason, events);
      finished.push_back(&request);
    }
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [&](const std::unique_ptr<Request>& r) {
                                  return std::find(finished.begin(), finished.end(), r.get()) !=
                                         finished.end();
                                }),
                 running_.end());
  return events;
}

EngineStats Engine::stats() const {
  EngineStats stats = counters_;
  stats.running = static_cast<int64_t>(running_.size());
  stats.waiting = static_cast<int64_t>(waiting_.size());
  stats.kv = cache_.TotalUsage();
  for (const auto& request : running_) stats.live_tokens += request->cached;
  stats.kv_blocks_total = pool_.num_blocks();
  stats.kv_blocks_free = pool_.num_free();
  return stats;
}

}  // namespace mixattn
