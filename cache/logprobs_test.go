package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// v1Choice holds the members of a /v1 choice that the logprobs tests read.
type v1Choice struct {
	Text    string `json:"text"`
	Message struct {
		Content string `json:"content"`
	} `json:"message"`
	Delta struct {
		Content   string            `json:"content"`
		Reasoning string            `json:"reasoning"`
		ToolCalls []json.RawMessage `json:"tool_calls"`
	} `json:"delta"`
	FinishReason *string         `json:"finish_reason"`
	Logprobs     json.RawMessage `json:"logprobs"`
}

// v1Objects returns the objects of a /v1 body: the one object, or the data
// of each SSE event other than [DONE].
func v1Objects(t *testing.T, body []byte) [][]byte {
	t.Helper()
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 && trimmed[0] == '{' {
		return [][]byte{trimmed}
	}
	var out [][]byte
	for event := range bytes.SplitSeq(body, []byte("\n\n")) {
		data, ok := bytes.CutPrefix(bytes.TrimSpace(event), []byte("data: "))
		if !ok || string(data) == "[DONE]" {
			continue
		}
		out = append(out, data)
	}
	return out
}

// firstChoices returns choices[0] of every object of a /v1 body that has
// a choice.
func firstChoices(t *testing.T, body []byte) []v1Choice {
	t.Helper()
	var out []v1Choice
	for _, object := range v1Objects(t, body) {
		var v struct {
			Choices []v1Choice `json:"choices"`
		}
		if err := json.Unmarshal(object, &v); err != nil {
			t.Fatalf("object %s: %v", object, err)
		}
		if len(v.Choices) > 0 {
			out = append(out, v.Choices[0])
		}
	}
	return out
}

// logprobsContent returns the entries of choices[0].logprobs.content of
// a /v1 body, joined over the chunks of a stream, decoded for comparison.
func logprobsContent(t *testing.T, body []byte) []any {
	t.Helper()
	var out []any
	for _, ch := range firstChoices(t, body) {
		if len(ch.Logprobs) == 0 {
			continue
		}
		var lp struct {
			Content []any `json:"content"`
		}
		if err := json.Unmarshal(ch.Logprobs, &lp); err != nil {
			t.Fatalf("logprobs %s: %v", ch.Logprobs, err)
		}
		out = append(out, lp.Content...)
	}
	return out
}

// logprobsRequest returns a deterministic request body of route that
// requests logprobs.
func logprobsRequest(route string, stream bool) string {
	if route == "/v1/completions" {
		if stream {
			return `{"model":"tiny","prompt":"once","seed":1,"logprobs":2,"stream":true}`
		}
		return `{"model":"tiny","prompt":"once","seed":1,"logprobs":2}`
	}
	if stream {
		return `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1,"logprobs":true,"top_logprobs":2,` +
			`"stream":true,"stream_options":{"include_usage":true}}`
	}
	return `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1,"logprobs":true,"top_logprobs":2}`
}

func TestV1LogprobsRoundTrip(t *testing.T) {
	cases := []struct {
		name, route, response string
		stream                bool
	}{
		{"chat from stream", "/v1/chat/completions", "openai_chat_stream_logprobs.body", true},
		{"chat from object", "/v1/chat/completions", "openai_chat_logprobs.body", false},
		{"completions from stream", "/v1/completions", "openai_completions_stream_logprobs.body", true},
		{"completions from object", "/v1/completions", "openai_completions_logprobs.body", false},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			response := readTestdata(t, tt.response)
			want := logprobsContent(t, response)
			if len(want) == 0 {
				t.Fatalf("%s has no logprobs", tt.response)
			}
			tc := newTestCache(t, testOptions{})
			e := tc.store(t, tc.plan(t, tt.route, logprobsRequest(tt.route, tt.stream)), response)

			for _, stream := range []bool{false, true} {
				body, _ := e.Render(tc.plan(t, tt.route, logprobsRequest(tt.route, stream)))
				if got := logprobsContent(t, body); !reflect.DeepEqual(got, want) {
					t.Errorf("rendered with stream=%t: logprobs.content %v, want the response's %v", stream, got, want)
				}
				if !stream {
					continue
				}
				// The entries go with the text, never with the finish reason.
				for _, ch := range firstChoices(t, body) {
					if len(ch.Logprobs) > 0 && ch.FinishReason != nil {
						t.Errorf("chunk with finish_reason %q carries logprobs", *ch.FinishReason)
					}
					if len(ch.Logprobs) > 0 && ch.Text+ch.Delta.Content == "" {
						t.Errorf("chunk without text carries logprobs %s", ch.Logprobs)
					}
				}
			}
		})
	}
}

func TestV1LogprobsObjectKeptAsItCame(t *testing.T) {
	for _, tt := range []struct{ route, response string }{
		{"/v1/chat/completions", "openai_chat_logprobs.body"},
		{"/v1/completions", "openai_completions_logprobs.body"},
	} {
		t.Run(tt.route, func(t *testing.T) {
			response := readTestdata(t, tt.response)
			tc := newTestCache(t, testOptions{})
			p := tc.plan(t, tt.route, logprobsRequest(tt.route, false))
			body, _ := tc.store(t, p, response).Render(p)
			want := firstChoices(t, response)[0].Logprobs
			if got := firstChoices(t, body)[0].Logprobs; !bytes.Equal(got, want) {
				t.Errorf("logprobs\n%s\nwant as received\n%s", got, want)
			}
		})
	}
}

func TestV1LogprobsLegacyCompletionsForm(t *testing.T) {
	sse := `data: {"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"a","index":0,"finish_reason":null,` +
		`"logprobs":{"tokens":["a"],"token_logprobs":[-0.5],"top_logprobs":[{"a":-0.5}],"text_offset":[0]}}],"model":"m"}

data: {"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"b","index":0,"finish_reason":null,` +
		`"logprobs":{"tokens":["b"],"token_logprobs":[-1.5],"top_logprobs":[{"b":-1.5}],"text_offset":[1]}}],"model":"m"}

data: {"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"","index":0,"finish_reason":"stop"}],"model":"m"}

data: [DONE]

`
	tc := newTestCache(t, testOptions{})
	p := tc.plan(t, "/v1/completions", `{"model":"m","prompt":"x","seed":1,"logprobs":1}`)
	body, _ := tc.store(t, p, []byte(sse)).Render(p)
	want := `{"tokens":["a","b"],"token_logprobs":[-0.5,-1.5],"top_logprobs":[{"a":-0.5},{"b":-1.5}],"text_offset":[0,1]}`
	if got := string(firstChoices(t, body)[0].Logprobs); got != want {
		t.Errorf("logprobs %s, want the arrays joined %s", got, want)
	}
}

// TestV1LogprobsWithoutText feeds a stream shaped like Ollama's for a
// thinking model that calls a tool: the entries of the thinking tokens come
// with the reasoning, and those of the tool call's tokens in chunks
// without content before the tool call.
func TestV1LogprobsWithoutText(t *testing.T) {
	chunk := func(delta, logprobs, finish string) string {
		return `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",` +
			`"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":` + delta +
			`,"finish_reason":` + finish + logprobs + `}]}` + "\n\n"
	}
	entry := func(token string) string {
		return `,"logprobs":{"content":[{"token":"` + token + `","logprob":-0.25}]}`
	}
	sse := chunk(`{"role":"assistant","content":"","reasoning":"hmm"}`, entry("hmm"), "null") +
		chunk(`{"role":"assistant","content":""}`, entry("<tool_call>"), "null") +
		chunk(`{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function",`+
			`"function":{"name":"get_weather","arguments":"{}"}}]}`, entry("</tool_call>"), "null") +
		chunk(`{"role":"assistant","content":""}`, "", `"tool_calls"`) +
		"data: [DONE]\n\n"
	want := []any{
		map[string]any{"token": "hmm", "logprob": -0.25},
		map[string]any{"token": "<tool_call>", "logprob": -0.25},
		map[string]any{"token": "</tool_call>", "logprob": -0.25},
	}

	tc := newTestCache(t, testOptions{})
	p := tc.plan(t, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],`+
		`"seed":1,"logprobs":true,"stream":true}`)
	e := tc.store(t, p, []byte(sse))
	body, _ := e.Render(p)
	if got := logprobsContent(t, body); !reflect.DeepEqual(got, want) {
		t.Errorf("replayed logprobs.content %v, want %v", got, want)
	}
	first := firstChoices(t, body)[0]
	if first.Delta.Reasoning != "hmm" || len(first.Delta.ToolCalls) != 1 {
		t.Errorf("first chunk reasoning %q and %d tool calls, want hmm and 1", first.Delta.Reasoning, len(first.Delta.ToolCalls))
	}
	if len(first.Logprobs) == 0 {
		t.Error("the chunk with the reasoning and the tool call has no logprobs")
	}
}

func TestMergeStreamKeepsLogprobs(t *testing.T) {
	for _, tt := range []struct{ route, stream string }{
		{"/v1/chat/completions", "openai_chat_stream_logprobs.body"},
		{"/v1/completions", "openai_completions_stream_logprobs.body"},
	} {
		t.Run(tt.route, func(t *testing.T) {
			stream := readTestdata(t, tt.stream)
			merged, _, err := MergeStream(tt.route, "tiny", stream)
			if err != nil {
				t.Fatalf("MergeStream: %v", err)
			}
			want := logprobsContent(t, stream)
			if got := logprobsContent(t, merged); !reflect.DeepEqual(got, want) {
				t.Errorf("merged logprobs.content %v, want the chunks' entries in order %v", got, want)
			}
		})
	}
}

func TestV1LogprobsThroughL2(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	route := "/v1/chat/completions"
	response := readTestdata(t, "openai_chat_stream_logprobs.body")
	a.store(t, a.plan(t, route, logprobsRequest(route, true)), response)

	p := b.plan(t, route, logprobsRequest(route, false))
	e, res := b.Lookup(context.Background(), p)
	if e == nil || res != ResultHitL2 {
		t.Fatalf("Lookup through the second instance = %v, %s, want an entry, hit-l2", e, res)
	}
	body, _ := e.Render(p)
	if got, want := logprobsContent(t, body), logprobsContent(t, response); !reflect.DeepEqual(got, want) {
		t.Errorf("logprobs.content after L2 %v, want %v", got, want)
	}
}

func TestResponseOfOldVersionIsMiss(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	route := "/v1/chat/completions"
	p := tc.plan(t, route, logprobsRequest(route, false))
	// Version 1 response records have no logprobs for /v1 routes.
	old := `{"v":1,"model":"tiny","response":{"text":"a","finish_reason":"stop",` +
		`"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}`
	if err := tc.l2.rdb.Set(ctx, tc.l2.entryKey(p.Key), old, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if e, res := tc.Lookup(ctx, p); e != nil || res != ResultMiss {
		t.Errorf("lookup of a version 1 response record: %v, %s, want nil, miss", e, res)
	}
}

// TestV1LogprobsRepeatedMemberCountsOnce streams a chunk per token whose
// logprobs repeat a scalar member. The member counts towards the entry
// size bound once, not once per chunk, so the response is stored.
func TestV1LogprobsRepeatedMemberCountsOnce(t *testing.T) {
	const chunks = 200
	note := strings.Repeat("n", 100)
	var sse strings.Builder
	for range chunks {
		sse.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",` +
			`"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"finish_reason":null,` +
			`"logprobs":{"content":[],"note":"` + note + `"}}]}` + "\n\n")
	}
	sse.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",` +
		`"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}` + "\n\n")
	sse.WriteString("data: [DONE]\n\n")

	// The bound is far above the text and one note, and far below a note
	// per chunk.
	tc := newTestCache(t, testOptions{cfg: config.Cache{L1: config.CacheL1{MaxBytes: 8 << 10}}})
	p := tc.plan(t, "/v1/chat/completions",
		`{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1,"logprobs":true,"stream":true}`)
	agg := tc.NewAggregator(p)
	_, _ = agg.Write([]byte(sse.String()))
	if _, err := tc.Store(context.Background(), p, agg, true); err != nil {
		t.Fatalf("store of %d chunks with one repeated note: %v", chunks, err)
	}
}
