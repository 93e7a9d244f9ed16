package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	openai "github.com/sashabaranov/go-openai"
)

// recordedProxy serves requests from the cache and, on a miss, sends the
// recorded Ollama response for the route and delivery, storing it on the way
// as the proxy does.
type recordedProxy struct {
	t         *testing.T
	c         *testCache
	responses map[string][]byte // by route, with " stream" for streams
	upstream  atomic.Int32      // responses sent from the recordings
}

func (rp *recordedProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	plan := rp.c.Classify(Request{Route: r.URL.Path, Body: body})
	if !plan.Cacheable() {
		http.Error(w, "not cacheable: "+plan.Reason, http.StatusBadRequest)
		return
	}
	if e, res := rp.c.Lookup(r.Context(), plan); e != nil {
		out, ct := e.Render(plan)
		w.Header().Set("Content-Type", ct)
		w.Header().Set("X-LLMProxy-Cache", string(res))
		_, _ = w.Write(out)
		return
	}

	name := r.URL.Path
	if plan.Stream {
		name += " stream"
	}
	response, ok := rp.responses[name]
	if !ok {
		http.Error(w, "no recording for "+name, http.StatusNotFound)
		return
	}
	rp.upstream.Add(1)
	agg := rp.c.NewAggregator(plan)
	w.Header().Set("X-LLMProxy-Cache", string(ResultMiss))
	_, _ = io.MultiWriter(w, agg).Write(response)
	if _, err := rp.c.Store(r.Context(), plan, agg, true); err != nil {
		rp.t.Errorf("Store %s: %v", name, err)
	}
}

func newRecordedProxy(t *testing.T) (*recordedProxy, *url.URL) {
	t.Helper()
	rp := &recordedProxy{t: t, c: newTestCache(t, testOptions{}), responses: map[string][]byte{
		"/api/chat":                   readTestdata(t, "chat_nostream.body"),
		"/api/chat stream":            readTestdata(t, "chat_stream.body"),
		"/api/generate":               readTestdata(t, "generate_nostream.body"),
		"/api/generate stream":        readTestdata(t, "generate_stream.body"),
		"/v1/chat/completions":        readTestdata(t, "openai_chat_nostream.body"),
		"/v1/chat/completions stream": readTestdata(t, "openai_chat_stream_usage.body"),
		"/v1/completions":             readTestdata(t, "openai_completions.body"),
		"/v1/completions stream":      readTestdata(t, "openai_completions_stream.body"),
	}}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return rp, u
}

// chatOutcome is what an Ollama client read from one chat call.
type chatOutcome struct {
	content string
	final   api.ChatResponse
	lines   int
}

func ollamaChat(t *testing.T, u *url.URL, stream bool) chatOutcome {
	t.Helper()
	client := api.NewClient(u, http.DefaultClient)
	req := &api.ChatRequest{
		Model:    "tiny",
		Messages: []api.Message{{Role: "user", Content: "tell me a story"}},
		Stream:   &stream,
		Options:  map[string]any{"temperature": 0},
	}
	var out chatOutcome
	err := client.Chat(context.Background(), req, func(r api.ChatResponse) error {
		if out.final.Done {
			t.Error("a line follows the done line")
		}
		out.content += r.Message.Content
		out.final = r
		out.lines++
		return nil
	})
	if err != nil {
		t.Fatalf("Chat(stream=%v): %v", stream, err)
	}
	return out
}

func TestRenderChatBothWays(t *testing.T) {
	for _, fillStream := range []bool{true, false} {
		name := map[bool]string{true: "filled by stream", false: "filled by object"}[fillStream]
		t.Run(name, func(t *testing.T) {
			rp, u := newRecordedProxy(t)
			first := ollamaChat(t, u, fillStream)
			before := time.Now()
			second := ollamaChat(t, u, !fillStream)
			after := time.Now()

			if n := rp.upstream.Load(); n != 1 {
				t.Fatalf("upstream responses = %d, want 1", n)
			}
			if second.content != first.content {
				t.Errorf("content = %q, want %q", second.content, first.content)
			}
			assertFinalChat(t, second.final, first.final)
			if at := second.final.CreatedAt; at.Before(before.Add(-time.Second)) || at.After(after) {
				t.Errorf("created_at = %v, want the time of serving", at)
			}
			if fillStream && second.lines != 1 {
				t.Errorf("object response read as %d lines", second.lines)
			}
			if !fillStream && second.lines != 2 {
				t.Errorf("stream has %d lines, want a text line and a done line", second.lines)
			}
		})
	}
}

func assertFinalChat(t *testing.T, got, want api.ChatResponse) {
	t.Helper()
	if !got.Done {
		t.Error("last line without done true")
	}
	if got.DoneReason != want.DoneReason {
		t.Errorf("done_reason = %q, want %q", got.DoneReason, want.DoneReason)
	}
	if got.Metrics != want.Metrics {
		t.Errorf("metrics = %+v, want %+v", got.Metrics, want.Metrics)
	}
	if got.Model != "tiny" {
		t.Errorf("model = %q, want the name the client sent", got.Model)
	}
	if got.Message.Role != "assistant" {
		t.Errorf("role = %q, want assistant", got.Message.Role)
	}
}

func TestRenderGenerateBothWays(t *testing.T) {
	for _, fillStream := range []bool{true, false} {
		name := map[bool]string{true: "filled by stream", false: "filled by object"}[fillStream]
		t.Run(name, func(t *testing.T) {
			rp, u := newRecordedProxy(t)
			client := api.NewClient(u, http.DefaultClient)
			generate := func(stream bool) (string, api.GenerateResponse) {
				var text string
				var last api.GenerateResponse
				err := client.Generate(context.Background(), &api.GenerateRequest{
					Model: "tiny", Prompt: "once upon a time", Stream: &stream,
					Options: map[string]any{"seed": 42},
				}, func(r api.GenerateResponse) error {
					text += r.Response
					last = r
					return nil
				})
				if err != nil {
					t.Fatalf("Generate(stream=%v): %v", stream, err)
				}
				return text, last
			}
			wantText, want := generate(fillStream)
			gotText, got := generate(!fillStream)

			if n := rp.upstream.Load(); n != 1 {
				t.Fatalf("upstream responses = %d, want 1", n)
			}
			if gotText != wantText {
				t.Errorf("response = %q, want %q", gotText, wantText)
			}
			if !got.Done || got.DoneReason != want.DoneReason {
				t.Errorf("final line done=%v done_reason=%q, want true %q", got.Done, got.DoneReason, want.DoneReason)
			}
			if got.Metrics != want.Metrics {
				t.Errorf("metrics = %+v, want %+v", got.Metrics, want.Metrics)
			}
			if len(got.Context) == 0 || !equalInts(got.Context, want.Context) {
				t.Errorf("context = %v, want %v", got.Context, want.Context)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func newOpenAIClient(u *url.URL) *openai.Client {
	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = u.String() + "/v1"
	return openai.NewClientWithConfig(cfg)
}

func openAIChatRequest() openai.ChatCompletionRequest {
	seed := 7
	return openai.ChatCompletionRequest{
		Model:    "tiny",
		Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "tell me a story"}},
		Seed:     &seed,
	}
}

// readOpenAIChatStream returns the text, the finish reason and the usage
// of a chat completion stream.
func readOpenAIChatStream(t *testing.T, client *openai.Client, includeUsage bool) (string, string, *openai.Usage) {
	t.Helper()
	req := openAIChatRequest()
	req.Stream = true
	if includeUsage {
		req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	}
	stream, err := client.CreateChatCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateChatCompletionStream: %v", err)
	}
	defer stream.Close()
	var text, finish string
	var usage *openai.Usage
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return text, finish, usage
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
		for _, ch := range chunk.Choices {
			text += ch.Delta.Content
			if ch.FinishReason != "" {
				finish = string(ch.FinishReason)
			}
		}
	}
}

func TestRenderOpenAIChatObjectFromStream(t *testing.T) {
	rp, u := newRecordedProxy(t)
	client := newOpenAIClient(u)
	text, finish, usage := readOpenAIChatStream(t, client, true)

	resp, err := client.CreateChatCompletion(context.Background(), openAIChatRequest())
	if err != nil {
		t.Fatalf("CreateChatCompletion: %v", err)
	}
	if n := rp.upstream.Load(); n != 1 {
		t.Fatalf("upstream responses = %d, want 1", n)
	}
	if len(resp.Choices) != 1 {
		t.Fatalf("choices = %d, want 1", len(resp.Choices))
	}
	if got := resp.Choices[0].Message.Content; got != text {
		t.Errorf("content = %q, want %q", got, text)
	}
	if got := string(resp.Choices[0].FinishReason); got != finish {
		t.Errorf("finish_reason = %q, want %q", got, finish)
	}
	if usage == nil || resp.Usage.TotalTokens != usage.TotalTokens || resp.Usage.PromptTokens != usage.PromptTokens {
		t.Errorf("usage = %+v, want %+v", resp.Usage, usage)
	}
	if resp.Object != "chat.completion" || resp.Model != "tiny" || !strings.HasPrefix(resp.ID, "chatcmpl-") {
		t.Errorf("object %q, model %q, id %q: not a chat completion of tiny", resp.Object, resp.Model, resp.ID)
	}
}

func TestRenderOpenAIChatStreamFromObject(t *testing.T) {
	for _, includeUsage := range []bool{true, false} {
		name := map[bool]string{true: "with usage", false: "without usage"}[includeUsage]
		t.Run(name, func(t *testing.T) {
			rp, u := newRecordedProxy(t)
			client := newOpenAIClient(u)
			resp, err := client.CreateChatCompletion(context.Background(), openAIChatRequest())
			if err != nil {
				t.Fatalf("CreateChatCompletion: %v", err)
			}
			text, finish, usage := readOpenAIChatStream(t, client, includeUsage)
			if n := rp.upstream.Load(); n != 1 {
				t.Fatalf("upstream responses = %d, want 1", n)
			}
			if text != resp.Choices[0].Message.Content {
				t.Errorf("streamed text = %q, want %q", text, resp.Choices[0].Message.Content)
			}
			if finish != string(resp.Choices[0].FinishReason) {
				t.Errorf("finish_reason = %q, want %q", finish, resp.Choices[0].FinishReason)
			}
			if includeUsage && (usage == nil || *usage != resp.Usage) {
				t.Errorf("usage = %+v, want %+v", usage, resp.Usage)
			}
			if !includeUsage && usage != nil {
				t.Errorf("usage chunk sent without include_usage: %+v", usage)
			}
		})
	}
}

func TestRenderOpenAICompletionsBothWays(t *testing.T) {
	rp, u := newRecordedProxy(t)
	client := newOpenAIClient(u)
	seed := 3
	req := openai.CompletionRequest{Model: "tiny", Prompt: "once", Seed: &seed}
	resp, err := client.CreateCompletion(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateCompletion: %v", err)
	}

	req.Stream = true
	stream, err := client.CreateCompletionStream(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateCompletionStream: %v", err)
	}
	defer stream.Close()
	var text, finish string
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if chunk.Object != "text_completion" {
			t.Errorf("chunk object = %q, want text_completion", chunk.Object)
		}
		text += chunk.Choices[0].Text
		if chunk.Choices[0].FinishReason != "" {
			finish = chunk.Choices[0].FinishReason
		}
	}
	if n := rp.upstream.Load(); n != 1 {
		t.Fatalf("upstream responses = %d, want 1", n)
	}
	if text != resp.Choices[0].Text {
		t.Errorf("streamed text = %q, want %q", text, resp.Choices[0].Text)
	}
	if finish != resp.Choices[0].FinishReason {
		t.Errorf("finish_reason = %q, want %q", finish, resp.Choices[0].FinishReason)
	}
}

func TestRenderContentTypes(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	cases := []struct {
		route, body, response string
		stream                bool
		want                  string
	}{
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":false,"options":{"seed":1}}`,
			"chat_nostream.body", false, "application/json; charset=utf-8"},
		{"/api/chat", `{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"seed":1}}`,
			"chat_nostream.body", true, "application/x-ndjson"},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1}`,
			"openai_chat_nostream.body", false, "application/json"},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1,"stream":true}`,
			"openai_chat_nostream.body", true, "text/event-stream"},
	}
	for _, tt := range cases {
		p := tc.plan(t, tt.route, tt.body)
		e := tc.store(t, p, readTestdata(t, tt.response))
		body, ct := e.Render(p)
		if ct != tt.want {
			t.Errorf("%s stream=%v: content type %q, want %q", tt.route, tt.stream, ct, tt.want)
		}
		if tt.stream && tt.route == "/v1/chat/completions" && !bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) {
			t.Errorf("SSE stream does not end with data: [DONE]: %q", body)
		}
	}
}

func TestRenderToolCallsAndThinking(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := tc.plan(t, "/api/chat", `{"model":"m","messages":[{"role":"user","content":"weather?"}],`+
		`"tools":[{"type":"function","function":{"name":"get_weather"}}],"think":true,"stream":false,"options":{"seed":1}}`)
	stream := `{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"","thinking":"Let me "},"done":false}
{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"","thinking":"check."},"done":false}
{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":false}
{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":5,"eval_count":3}
`
	body, _ := tc.store(t, p, []byte(stream)).Render(p)
	var got api.ChatResponse
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("unmarshal %s: %v", body, err)
	}
	if got.Message.Thinking != "Let me check." {
		t.Errorf("thinking = %q, want the joined chunks", got.Message.Thinking)
	}
	if len(got.Message.ToolCalls) != 1 || got.Message.ToolCalls[0].Function.Name != "get_weather" {
		t.Fatalf("tool_calls = %+v, want one get_weather call", got.Message.ToolCalls)
	}
	if city, _ := got.Message.ToolCalls[0].Function.Arguments.Get("city"); city != "Paris" {
		t.Errorf("tool call argument city = %v, want Paris", city)
	}
	if got.EvalCount != 3 || got.DoneReason != "stop" {
		t.Errorf("final fields: eval_count %d, done_reason %q", got.EvalCount, got.DoneReason)
	}
}

func TestRenderOpenAIToolCallDeltasMerged(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := tc.plan(t, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"weather?"}],"seed":1}`)
	sse := `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"ci"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]},"finish_reason":null}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

`
	body, _ := tc.store(t, p, []byte(sse)).Render(p)
	var got openai.ChatCompletionResponse
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("unmarshal %s: %v", body, err)
	}
	calls := got.Choices[0].Message.ToolCalls
	if len(calls) != 1 {
		t.Fatalf("tool_calls = %+v, want one", calls)
	}
	if calls[0].ID != "call_1" || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city":"Paris"}` {
		t.Errorf("tool call = %+v, want call_1 get_weather {\"city\":\"Paris\"}", calls[0])
	}
	if got.Choices[0].FinishReason != "tool_calls" {
		t.Errorf("finish_reason = %q, want tool_calls", got.Choices[0].FinishReason)
	}
}
