// The server's pieces below HTTP: request parsing and validation, OpenAI's JSON shapes, the chat
// template, Prometheus text, and the engine service's threading (submit, stream, cancel, limits,
// shutdown). The HTTP layer itself is tested end to end against the real binary in
// tests/server/.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "model/presets.h"
#include "model/weights.h"
#include "server/api_error.h"
#include "server/chat_template.h"
#include "server/engine_service.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "server/utf8.h"
#include "test_util.h"

namespace mixattn::server {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// Runs `body`, expects an ApiError, and returns it (a 0-status error and a failure if none).
template <typename Body>
ApiError Rejection(Body&& body) {
  try {
    body();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "expected an ApiError";
  return ApiError(0, "", "");
}

ApiError CompletionRejection(const std::string& body) {
  return Rejection([&] { ParseCompletionRequest(Json::parse(body)); });
}

ApiError ChatRejection(const std::string& body) {
  return Rejection([&] { ParseChatRequest(Json::parse(body)); });
}

// ---- request bodies ----

TEST(ServerRequestTest, Utf8ValidationFollowsRfc3629) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));  // é € 😀
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));                           // U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong, 3 bytes
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated €
  EXPECT_FALSE(IsValidUtf8("a\x80z"));            // stray continuation byte
}

TEST(ServerRequestTest, CompleteUtf8PrefixNeverEndsInsideACharacter) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE2\x82\xAC"), 5u);  // ends with a whole €
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE2\x82"), 2u);      // € missing its last byte
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE2"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("\xF0\x9F\x98"), 0u);  // 😀 missing its last byte
  EXPECT_EQ(CompleteUtf8Prefix("a\xF0\x9F\x98\x80"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("a\x80\x80"), 3u);  // stray continuation bytes: nothing to wait for
  EXPECT_EQ(CompleteUtf8Prefix("a\xFF"), 2u);      // an invalid byte: nothing to wait for
}

TEST(ServerRequestTest, BodyMustBeUtf8JsonObject) {
  ApiError error = Rejection([] { ParseJsonBody("{\"prompt\": \"\xFF\"}"); });
  EXPECT_EQ(error.status(), 400);
  EXPECT_EQ(error.code(), "invalid_encoding");
  error = Rejection([] { ParseJsonBody("{\"prompt\": "); });
  EXPECT_EQ(error.code(), "invalid_json");
  EXPECT_THAT(error.what(), HasSubstr("not valid JSON"));
  EXPECT_THAT(error.what(), ::testing::Not(HasSubstr("json.exception")));
  EXPECT_EQ(Rejection([] { ParseJsonBody("[1, 2]"); }).code(), "invalid_json");
  EXPECT_EQ(Rejection([] { ParseJsonBody(""); }).code(), "invalid_json");
  EXPECT_EQ(Rejection([] { ParseJsonBody(R"({"prompt": "\ud800"})"); }).code(), "invalid_json");
  // Deep nesting is parsed without recursion: an error, not a stack overflow.
  EXPECT_EQ(Rejection([] { ParseJsonBody(std::string(200000, '[')); }).code(), "invalid_json");
  EXPECT_TRUE(ParseJsonBody(R"({"prompt": "ok"})").is_object());
}

TEST(ServerRequestTest, CompletionDefaultsAndFields) {
  CompletionRequest request = ParseCompletionRequest(Json::parse(R"({"prompt": "hello"})"));
  EXPECT_EQ(std::get<std::string>(request.prompt), "hello");
  EXPECT_FALSE(request.params.max_tokens);
  EXPECT_FALSE(request.params.seed);
  EXPECT_FALSE(request.params.stream);
  EXPECT_EQ(request.params.sampling.temperature, 1.0f);
  EXPECT_EQ(request.params.sampling.top_p, 1.0f);

  request = ParseCompletionRequest(Json::parse(R"({
      "model": "m", "prompt": ["one"], "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.2, "seed": -1, "stop": "\n",
      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
      "n": 1, "logprobs": null, "presence_penalty": 0, "user": "ignored", "unknown": [1]})"));
  EXPECT_EQ(std::get<std::string>(request.prompt), "one");
  EXPECT_EQ(request.params.max_tokens, 7);
  EXPECT_EQ(request.params.sampling.temperature, 0.5f);
  EXPECT_EQ(request.params.sampling.top_p, 0.9f);
  EXPECT_EQ(request.params.sampling.top_k, 0);
  EXPECT_EQ(request.params.sampling.min_p, 0.1f);
  EXPECT_EQ(request.params.sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(request.params.seed, ~uint64_t{0});
  EXPECT_EQ(request.params.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(request.params.ignore_eos);
  EXPECT_TRUE(request.params.stream);
  EXPECT_TRUE(request.params.include_usage);

  request = ParseCompletionRequest(
      Json::parse(R"({"prompt": [1, 5, 9], "max_tokens": 3.0, "stop": null, "seed": 42})"));
  EXPECT_EQ(std::get<std::vector<int>>(request.prompt), (std::vector<int>{1, 5, 9}));
  EXPECT_EQ(request.params.max_tokens, 3);
  EXPECT_EQ(request.params.seed, 42u);
  EXPECT_TRUE(request.params.stop.empty());
}

TEST(ServerRequestTest, CompletionErrorsNameTheField) {
  struct Case {
    const char* body;
    const char* param;
    const char* code;
  };
  const Case cases[] = {
      {R"({})", "prompt", "missing_required_parameter"},
      {R"({"prompt": null})", "prompt", "missing_required_parameter"},
      {R"({"prompt": 5})", "prompt", "invalid_type"},
      {R"({"prompt": []})", "prompt", "invalid_type"},
      {R"({"prompt": ["a", "b"]})", "prompt", "invalid_type"},
      {R"({"prompt": [1, "a"]})", "prompt[1]", "invalid_type"},
      {R"({"prompt": [1, -2]})", "prompt[1]", "invalid_value"},
      {R"({"prompt": "x", "model": 3})", "model", "invalid_type"},
      {R"({"prompt": "x", "max_tokens": "10"})", "max_tokens", "invalid_type"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens", "invalid_type"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens", "invalid_value"},
      {R"({"prompt": "x", "max_tokens": -1})", "max_tokens", "invalid_value"},
      {R"({"prompt": "x", "max_tokens": 18446744073709551615})", "max_tokens", "invalid_value"},
      {R"({"prompt": "x", "max_tokens": 1e30})", "max_tokens", "invalid_value"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature", "invalid_type"},
      {R"({"prompt": "x", "temperature": 2.5})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "temperature": -0.1})", "temperature", "invalid_value"},
      {R"({"prompt": "x", "top_p": true})", "top_p", "invalid_type"},
      {R"({"prompt": "x", "top_k": 1.5})", "top_k", "invalid_type"},
      {R"({"prompt": "x", "seed": 1.5})", "seed", "invalid_type"},
      {R"({"prompt": "x", "seed": "1"})", "seed", "invalid_type"},
      {R"({"prompt": "x", "stop": 5})", "stop", "invalid_type"},
      {R"({"prompt": "x", "stop": ["a", 5]})", "stop[1]", "invalid_type"},
      {R"({"prompt": "x", "stop": ""})", "stop", "invalid_value"},
      {R"({"prompt": "x", "stream": "yes"})", "stream", "invalid_type"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options",
       "invalid_value"},
      {R"({"prompt": "x", "stream": true, "stream_options": 1})", "stream_options", "invalid_type"},
      {R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": 1}})",
       "stream_options.include_usage", "invalid_type"},
      {R"({"prompt": "x", "n": 2})", "n", "unsupported_value"},
      {R"({"prompt": "x", "best_of": 3})", "best_of", "unsupported_value"},
      {R"({"prompt": "x", "echo": true})", "echo", "unsupported_value"},
      {R"({"prompt": "x", "logprobs": 5})", "logprobs", "unsupported_value"},
      {R"({"prompt": "x", "presence_penalty": 0.5})", "presence_penalty", "unsupported_value"},
      {R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias", "unsupported_value"},
  };
  for (const Case& c : cases) {
    const ApiError error = CompletionRejection(c.body);
    EXPECT_EQ(error.status(), 400) << c.body;
    EXPECT_EQ(error.type(), "invalid_request_error") << c.body;
    EXPECT_EQ(error.param(), c.param) << c.body;
    EXPECT_EQ(error.code(), c.code) << c.body;
    EXPECT_THAT(error.what(), HasSubstr(c.param)) << c.body;
  }
  EXPECT_THAT(CompletionRejection(R"({"prompt": "x", "max_tokens": 0})").what(),
              HasSubstr("max_tokens = 0 must be at least 1"));
  EXPECT_THAT(CompletionRejection(R"({"prompt": "x", "n": 2})").what(),
              HasSubstr("one choice per request"));
}

TEST(ServerRequestTest, ChatMessages) {
  const ChatRequest request = ParseChatRequest(Json::parse(R"({"messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null, "name": "bot"},
      {"role": "user", "content": "c"}],
      "max_tokens": 9, "max_completion_tokens": 4})"));
  ASSERT_EQ(request.messages.size(), 4u);
  EXPECT_EQ(request.messages[0].role, ChatRole::kSystem);
  EXPECT_EQ(request.messages[0].content, "be brief");
  EXPECT_EQ(request.messages[1].role, ChatRole::kUser);
  EXPECT_EQ(request.messages[1].content, "ab");
  EXPECT_EQ(request.messages[2].role, ChatRole::kAssistant);
  EXPECT_EQ(request.messages[2].content, "");
  EXPECT_EQ(request.params.max_tokens, 4);  // max_completion_tokens wins over the old name

  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": [5]})", "messages[0]"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": 7, "content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0].type"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
       "messages[0].content[0].text"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})",
       "max_completion_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})",
       "tools"},
  };
  for (const Case& c : cases) {
    const ApiError error = ChatRejection(c.body);
    EXPECT_EQ(error.status(), 400) << c.body;
    EXPECT_EQ(error.param(), c.param) << c.body;
  }
}

TEST(ServerRequestTest, TokenizeAndDetokenize) {
  TokenizeRequest tokenize = ParseTokenizeRequest(Json::parse(R"({"prompt": "hi"})"));
  EXPECT_EQ(std::get<std::string>(tokenize.input), "hi");
  EXPECT_TRUE(tokenize.add_special_tokens);
  tokenize = ParseTokenizeRequest(Json::parse(
      R"({"messages": [{"role": "user", "content": "hi"}], "add_special_tokens": false})"));
  EXPECT_EQ(std::get<std::vector<ChatMessage>>(tokenize.input).size(), 1u);
  EXPECT_FALSE(tokenize.add_special_tokens);
  EXPECT_EQ(Rejection([] { ParseTokenizeRequest(Json::parse("{}")); }).param(), "prompt");
  EXPECT_EQ(Rejection([] { ParseTokenizeRequest(Json::parse(R"({"prompt": 1})")); }).param(),
            "prompt");

  EXPECT_EQ(ParseDetokenizeRequest(Json::parse(R"({"tokens": [3, 4]})")).tokens,
            (std::vector<int>{3, 4}));
  EXPECT_EQ(Rejection([] { ParseDetokenizeRequest(Json::parse("{}")); }).param(), "tokens");
  EXPECT_EQ(Rejection([] { ParseDetokenizeRequest(Json::parse(R"({"tokens": [1.5]})")); }).param(),
            "tokens[0]");
}

// ---- response shapes ----

TEST(ServerResponseTest, ErrorsHaveOpenAiShape) {
  const Json json = ErrorJson(
      ApiError(400, "bad max_tokens", "invalid_request_error", "max_tokens", "invalid_value"));
  EXPECT_EQ(json, Json::parse(R"({"error": {"message": "bad max_tokens",
      "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value"}})"));
  const Json bare = ErrorJson(ApiError(500, "boom", "server_error"));
  EXPECT_TRUE(bare["error"]["param"].is_null());
  EXPECT_TRUE(bare["error"]["code"].is_null());

  EXPECT_EQ(ErrorForStatus(401, "m").type(), "authentication_error");
  EXPECT_EQ(ErrorForStatus(404, "m").type(), "invalid_request_error");
  EXPECT_EQ(ErrorForStatus(413, "m").code(), "request_too_large");
  EXPECT_EQ(ErrorForStatus(429, "m").type(), "rate_limit_error");
  EXPECT_EQ(ErrorForStatus(503, "m").type(), "server_error");
  EXPECT_EQ(ErrorForStatus(414, "m").type(), "invalid_request_error");
}

TEST(ServerResponseTest, CompletionAndChatShapes) {
  const ResponseHeader header{"cmpl-1", 1700000000, "tiny"};
  const TokenUsage usage{5, 3};
  Json completion = ResponseJson(Endpoint::kCompletions, header, "abc", "length", usage);
  EXPECT_EQ(completion, Json::parse(R"({"id": "cmpl-1", "object": "text_completion",
      "created": 1700000000, "model": "tiny",
      "choices": [{"index": 0, "text": "abc", "logprobs": null, "finish_reason": "length"}],
      "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})"));
  Json chat = ResponseJson(Endpoint::kChat, header, "abc", "stop", usage);
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"],
            Json::parse(R"({"role": "assistant", "content": "abc"})"));
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");

  Json first = ChunkJson(Endpoint::kChat, header, "", nullptr, true, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], Json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  Json last = ChunkJson(Endpoint::kChat, header, "", "length", false, false);
  EXPECT_EQ(last["choices"][0]["delta"], Json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(last.contains("usage"));
  Json text = ChunkJson(Endpoint::kCompletions, header, "x", nullptr, false, false);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "x");

  Json usage_chunk = UsageChunkJson(Endpoint::kChat, header, usage);
  EXPECT_EQ(usage_chunk["choices"], Json::array());
  EXPECT_EQ(usage_chunk["usage"]["total_tokens"], 8);

  EXPECT_EQ(SseEvent(Json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
  // Text that is not UTF-8 is replaced, never thrown.
  EXPECT_EQ(DumpJson(Json("a\xFF")), "\"a\xEF\xBF\xBD\"");

  Json models = ModelListJson("tiny", 1700000000, 2048);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["max_model_len"], 2048);
}

// ---- chat template ----

TEST(ChatTemplateTest, DefaultRendersRolesThenTheCue) {
  const ChatTemplate chat = ChatTemplate::Default();
  EXPECT_EQ(chat.Render({{ChatRole::kSystem, "Be kind."},
                         {ChatRole::kUser, "Hi"},
                         {ChatRole::kAssistant, "Hello."},
                         {ChatRole::kUser, "{content} stays"}}),
            "Be kind.\n\nUser: Hi\nAssistant: Hello.\nUser: {content} stays\nAssistant:");
  EXPECT_EQ(chat.stop, std::vector<std::string>{"\nUser:"});
}

TEST(ChatTemplateTest, ParsedFromTheModelDirectory) {
  const testing::TempDir dir;
  EXPECT_EQ(ChatTemplate::LoadFromModelDir(dir.path()).user, ChatTemplate::Default().user);
  std::ofstream(dir.file("chat_template.json")) << R"({"system": "<s>{content}</s>",
      "user": "<u>{content}{content}</u>", "assistant": "<a>{content}</a>",
      "generation_prompt": "<a>", "stop": ["</a>"]})";
  const ChatTemplate chat = ChatTemplate::LoadFromModelDir(dir.path());
  EXPECT_EQ(chat.Render({{ChatRole::kUser, "x"}}), "<u>xx</u><a>");
  EXPECT_EQ(chat.stop, std::vector<std::string>{"</a>"});

  const std::string source = "t.json";
  const auto message = [&](const std::string& text) {
    return testing::ErrorMessage([&] { ChatTemplate::Parse(text, source); });
  };
  const std::string complete =
      R"("system": "", "user": "", "assistant": "", "generation_prompt": "")";
  EXPECT_THAT(message("{"), HasSubstr("t.json: not valid JSON"));
  EXPECT_THAT(message(R"({"system": "", "user": ""})"), HasSubstr("missing field 'assistant'"));
  EXPECT_THAT(message("{" + complete + R"(, "asistant": ""})"),
              HasSubstr("unknown field 'asistant'"));
  EXPECT_THAT(message(R"({"system": 1, "user": "", "assistant": "", "generation_prompt": ""})"),
              HasSubstr("'system' must be a string"));
  EXPECT_THAT(message("{" + complete + R"(, "stop": [""]})"), HasSubstr("non-empty string"));
  EXPECT_TRUE(ChatTemplate::Parse("{" + complete + "}", source).stop.empty());
}

// ---- metrics ----

TEST(ServerMetricsTest, HistogramIsCumulativeWithInfSumAndCount) {
  Histogram histogram({0.1, 1.0});
  histogram.Observe(0.05);
  histogram.Observe(0.1);  // "le": an upper bound includes its own value
  histogram.Observe(0.5);
  histogram.Observe(7);
  std::string out;
  histogram.Render("x_seconds", out);
  EXPECT_EQ(out,
            "x_seconds_bucket{le=\"0.1\"} 2\n"
            "x_seconds_bucket{le=\"1\"} 3\n"
            "x_seconds_bucket{le=\"+Inf\"} 4\n"
            "x_seconds_sum 7.65\n"
            "x_seconds_count 4\n");
}

TEST(ServerMetricsTest, RendersVllmStyleNamesAndKvPerKind) {
  ServerMetrics metrics;
  metrics.ObserveTimeToFirstToken(0.02);
  metrics.ObserveInterTokenLatency(0.001);
  metrics.ObserveRequestFinished(FinishReason::kLength, 0.3);
  metrics.ObserveRequestFinished(FinishReason::kCancelled, 0.1);
  metrics.CountResponse(200);
  metrics.CountResponse(429);
  EngineSnapshot engine;
  engine.stats.running = 2;
  engine.stats.waiting = 1;
  engine.stats.prompt_tokens = 40;
  engine.stats.generated_tokens = 9;
  engine.stats.preemptions = 3;
  engine.stats.kv.full_blocks = 4;
  engine.stats.kv.sliding_blocks = 6;
  engine.stats.kv.full_bytes = 4096;
  engine.stats.kv.sliding_bytes = 6144;
  engine.stats.kv_blocks_total = 40;
  engine.stats.kv_blocks_free = 30;
  engine.standard_attention_bytes = 65536;
  const std::string text = metrics.Render(engine);
  for (const char* line : {
           "mixattn:num_requests_running 2\n",
           "mixattn:num_requests_waiting 1\n",
           "mixattn:prompt_tokens_total 40\n",
           "mixattn:generation_tokens_total 9\n",
           "mixattn:num_preemptions_total 3\n",
           "mixattn:kv_cache_usage_perc 0.25\n",
           "mixattn:kv_blocks_used{kind=\"full\"} 4\n",
           "mixattn:kv_blocks_used{kind=\"sliding\"} 6\n",
           "mixattn:kv_blocks_free 30\n",
           "mixattn:kv_blocks_total 40\n",
           "mixattn:kv_bytes_used{kind=\"sliding\"} 6144\n",
           "mixattn:kv_standard_attention_bytes 65536\n",
           "mixattn:request_success_total{finished_reason=\"length\"} 1\n",
           "mixattn:request_success_total{finished_reason=\"abort\"} 1\n",
           "mixattn:request_success_total{finished_reason=\"stop\"} 0\n",
           "mixattn:time_to_first_token_seconds_count 1\n",
           "mixattn:inter_token_latency_seconds_count 1\n",
           "mixattn:e2e_request_latency_seconds_count 2\n",
           "mixattn:http_responses_total{code=\"429\"} 1\n",
           "# TYPE mixattn:e2e_request_latency_seconds histogram\n",
           "# TYPE mixattn:generation_tokens_total counter\n",
       }) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  engine.standard_attention_bytes.reset();
  EXPECT_THAT(metrics.Render(engine), ::testing::Not(HasSubstr("standard_attention")));
}

TEST(ServerMetricsTest, StandardAttentionBytesCountLiveTokensFromFullOwners) {
  // ma at 8 layers: one full owner (layer 0) and sliding owners.
  const KvPlan ma(MakePresetConfig("ma", testing::TinyShape(8, 8)));
  KvCache::Usage usage;
  usage.full_blocks = 7;  // e.g. sequences of 3 and 4 blocks
  usage.sliding_blocks = 12;
  EXPECT_EQ(StandardAttentionBytes(ma, usage, 100), 7 * 8 * 100);
  const KvPlan standard(MakePresetConfig("standard", testing::TinyShape(4, 8)));
  usage.full_blocks = 4 * 5;  // every layer a full owner holding 5 blocks
  EXPECT_EQ(StandardAttentionBytes(standard, usage, 100), 5 * 4 * 100);
  const KvPlan sliding(MakePresetConfig("all-sliding", testing::TinyShape(4, 8)));
  EXPECT_FALSE(StandardAttentionBytes(sliding, usage, 100));
}

// ---- the engine service ----

class EngineServiceTest : public ::testing::Test {
 protected:
  static constexpr int kVocab = 41;
  static constexpr int kContext = 4096;

  EngineServiceTest()
      : config_(MakePresetConfig("ma", testing::TinyShape(8, 8, kVocab, kContext))),
        weights_(RandomWeights(config_, 1)) {}

  std::unique_ptr<EngineService> MakeService(int64_t max_running, int64_t max_waiting) {
    EngineOptions options;
    options.kv_memory_bytes = 64 << 20;
    options.max_running = max_running;
    return std::make_unique<EngineService>(config_, weights_, options, nullptr, max_waiting,
                                           metrics_);
  }

  static GenerationRequest Request(int64_t max_tokens, uint64_t seed = 1) {
    GenerationRequest request;
    request.prompt = testing::RandomTokens(10, kVocab, seed);
    request.max_tokens = max_tokens;
    request.stop_at_eos = false;
    request.sampling.seed = seed;
    return request;
  }

  // Reads `stream` to its end; returns the tokens and sets `finish`.
  static std::vector<int> Drain(RequestStream& stream, FinishReason& finish) {
    std::vector<int> tokens;
    for (;;) {
      const std::optional<EngineEvent> event = stream.Next(std::chrono::seconds(60));
      if (!event) {
        ADD_FAILURE() << "no event within 60 s";
        return tokens;
      }
      EXPECT_EQ(event->request, stream.id());
      tokens.insert(tokens.end(), event->tokens.begin(), event->tokens.end());
      if (event->finish != FinishReason::kNone) {
        finish = event->finish;
        return tokens;
      }
    }
  }

  static std::chrono::steady_clock::time_point In(int seconds) {
    return std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  }

  ModelConfig config_;
  ModelWeights weights_;
  ServerMetrics metrics_;
};

TEST_F(EngineServiceTest, StreamsEveryTokenThenTheFinish) {
  auto service = MakeService(4, 8);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (uint64_t seed = 1; seed <= 3; ++seed) streams.push_back(service->Submit(Request(12, seed)));
  for (const auto& stream : streams) {
    FinishReason finish = FinishReason::kNone;
    EXPECT_EQ(Drain(*stream, finish).size(), 12u);
    EXPECT_EQ(finish, FinishReason::kLength);
  }
  ASSERT_TRUE(service->WaitIdle(In(60)));
  const EngineSnapshot snapshot = service->snapshot();
  EXPECT_EQ(snapshot.stats.generated_tokens, 36);
  EXPECT_EQ(snapshot.stats.kv.blocks(), 0);
  EXPECT_EQ(snapshot.standard_attention_bytes, 0);
  const std::string text = metrics_.Render(snapshot);
  EXPECT_THAT(text, HasSubstr("mixattn:time_to_first_token_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("mixattn:inter_token_latency_seconds_count 33\n"));
  EXPECT_THAT(text, HasSubstr("mixattn:request_success_total{finished_reason=\"length\"} 3\n"));
}

TEST_F(EngineServiceTest, SameSeedSameTokensWhateverRunsBeside) {
  auto service = MakeService(4, 8);
  FinishReason finish = FinishReason::kNone;
  const std::vector<int> alone = Drain(*service->Submit(Request(20, 7)), finish);
  auto a = service->Submit(Request(20, 7));
  auto b = service->Submit(Request(20, 8));
  EXPECT_EQ(Drain(*a, finish), alone);
  Drain(*b, finish);
}

TEST_F(EngineServiceTest, CancelFreesTheKvBlocks) {
  auto service = MakeService(4, 8);
  auto stream = service->Submit(Request(kContext - 100));
  ASSERT_TRUE(stream->Next(std::chrono::seconds(60)));  // running, holding blocks
  service->Cancel(stream->id());
  FinishReason finish = FinishReason::kNone;
  Drain(*stream, finish);
  EXPECT_EQ(finish, FinishReason::kCancelled);
  EXPECT_TRUE(stream->failure().empty());
  ASSERT_TRUE(service->WaitIdle(In(60)));
  EXPECT_EQ(service->snapshot().stats.kv.blocks(), 0);
  EXPECT_EQ(service->snapshot().stats.running, 0);
  EXPECT_THAT(metrics_.Render(service->snapshot()),
              HasSubstr("mixattn:request_success_total{finished_reason=\"abort\"} 1\n"));
}

TEST_F(EngineServiceTest, EngineRejectionsAre400) {
  auto service = MakeService(4, 8);
  GenerationRequest out_of_vocab = Request(5);
  out_of_vocab.prompt[3] = kVocab;
  ApiError error = Rejection([&] { service->Submit(out_of_vocab); });
  EXPECT_EQ(error.status(), 400);
  EXPECT_THAT(error.what(), HasSubstr("outside the vocabulary"));
  GenerationRequest with_stop = Request(5);
  with_stop.stop = {"x"};  // no tokenizer in this test
  EXPECT_EQ(Rejection([&] { service->Submit(with_stop); }).status(), 400);
  EXPECT_TRUE(service->WaitIdle(In(60)));
}

TEST_F(EngineServiceTest, TooManyWaitingIs429) {
  auto service = MakeService(1, 1);
  // The engine admits a request in the loop iteration that accepts it, so `running` is running
  // when `waiting` arrives; and it has thousands of tokens to go when `refused` arrives.
  auto running = service->Submit(Request(kContext - 100));
  auto waiting = service->Submit(Request(5));
  const ApiError error = Rejection([&] { service->Submit(Request(5)); });
  EXPECT_EQ(error.status(), 429);
  EXPECT_EQ(error.type(), "rate_limit_error");
  service->Cancel(running->id());
  FinishReason finish = FinishReason::kNone;
  Drain(*running, finish);
  EXPECT_EQ(finish, FinishReason::kCancelled);
  EXPECT_EQ(Drain(*waiting, finish).size(), 5u);
  EXPECT_EQ(finish, FinishReason::kLength);
}

TEST_F(EngineServiceTest, ShutdownRefusesNewWorkAndCancelsWhatRuns) {
  auto service = MakeService(4, 8);
  auto stream = service->Submit(Request(kContext - 100));
  ASSERT_TRUE(stream->Next(std::chrono::seconds(60)));
  service->StopAccepting();
  const ApiError error = Rejection([&] { service->Submit(Request(5)); });
  EXPECT_EQ(error.status(), 503);
  EXPECT_FALSE(service->WaitIdle(std::chrono::steady_clock::now()));
  service->CancelAll();
  FinishReason finish = FinishReason::kNone;
  Drain(*stream, finish);
  EXPECT_EQ(finish, FinishReason::kCancelled);
  EXPECT_TRUE(service->WaitIdle(In(60)));
  service->Stop();
  EXPECT_EQ(service->snapshot().stats.kv.blocks(), 0);
}

TEST_F(EngineServiceTest, StopCancelsRequestsStillRunning) {
  auto service = MakeService(4, 8);
  auto stream = service->Submit(Request(kContext - 100));
  service->Stop();
  FinishReason finish = FinishReason::kNone;
  Drain(*stream, finish);
  EXPECT_EQ(finish, FinishReason::kCancelled);
}

}  // namespace
}  // namespace mixattn::server
