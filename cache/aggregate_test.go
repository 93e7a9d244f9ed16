package cache

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
)

const chatBody = `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}`

func TestStoreRejectsBadAnswers(t *testing.T) {
	chatStream := string(readTestdata(t, "chat_stream.body"))
	lines := strings.SplitAfter(chatStream, "\n")
	cases := []struct {
		name, route, body, response string
		complete                    bool
		want                        error
	}{
		{"cut by the proxy", "/api/chat", chatBody, chatStream, false, ErrIncomplete},
		{"no done line", "/api/chat", chatBody, strings.Join(lines[:3], ""), true, ErrIncomplete},
		{"cancelled stream", "/api/generate", `{"model":"tiny-long","prompt":"x","options":{"seed":1}}`,
			string(readTestdata(t, "cancel_stream.ndjson")), true, ErrIncomplete},
		{"error mid-stream", "/api/chat", chatBody,
			lines[0] + `{"error":"an error was encountered while running the model"}` + "\n", true, ErrInvalidResponse},
		{"error object", "/api/generate", `{"model":"nope","prompt":"x","options":{"seed":1}}`,
			string(readTestdata(t, "err_unknown_model.body")), true, ErrInvalidResponse},
		{"model load", "/api/generate", `{"model":"tiny","prompt":"x","options":{"seed":1}}`,
			string(readTestdata(t, "load_only.body")), true, ErrInvalidResponse},
		{"line after done", "/api/chat", chatBody, chatStream + lines[0], true, ErrInvalidResponse},
		{"not JSON", "/api/chat", chatBody, "<html>bad gateway</html>", true, ErrInvalidResponse},
		{"empty", "/api/chat", chatBody, "", true, ErrIncomplete},
		{"sse without done", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1}`,
			strings.TrimSuffix(string(readTestdata(t, "openai_chat_stream.body")), "data: [DONE]\n\n"), true, ErrIncomplete},
		{"sse done without finish", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1}`,
			"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n", true, ErrInvalidResponse},
		{"v1 two choices", "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1}`,
			`{"choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop"},{"index":1,"message":{"content":"b"},"finish_reason":"stop"}]}`,
			true, ErrInvalidResponse},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			tc := newTestCache(t, testOptions{})
			p := tc.plan(t, tt.route, tt.body)
			agg := tc.NewAggregator(p)
			_, _ = agg.Write([]byte(tt.response))
			e, err := tc.Store(context.Background(), p, agg, tt.complete)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Store error = %v, want %v", err, tt.want)
			}
			if e != nil {
				t.Error("Store returned an entry with its error")
			}
			if got, res := tc.Lookup(context.Background(), p); got != nil {
				t.Errorf("Lookup after a rejected response: %s", res)
			}
		})
	}
}

func TestStoreRejectsOtherPlans(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	embed := tc.plan(t, "/api/embed", `{"model":"m","input":"a"}`)
	chat := tc.plan(t, "/api/chat", chatBody)
	gen := tc.plan(t, "/api/generate", `{"model":"m","prompt":"x","options":{"seed":1}}`)
	if _, err := tc.Store(context.Background(), embed, tc.NewAggregator(embed), true); !errors.Is(err, ErrNotCacheable) {
		t.Errorf("Store of an embed plan: %v, want ErrNotCacheable", err)
	}
	if _, err := tc.Store(context.Background(), chat, tc.NewAggregator(gen), true); !errors.Is(err, ErrNotCacheable) {
		t.Errorf("Store with another route's aggregator: %v, want ErrNotCacheable", err)
	}
}

func TestAggregatorAnyChunking(t *testing.T) {
	cases := []struct{ route, body, response string }{
		{"/api/chat", chatBody, "chat_stream.body"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1}`,
			"openai_chat_stream_usage.body"},
	}
	for _, tt := range cases {
		t.Run(tt.route, func(t *testing.T) {
			tc := newTestCache(t, testOptions{})
			p := tc.plan(t, tt.route, tt.body)
			response := readTestdata(t, tt.response)
			whole := tc.store(t, p, response)

			agg := tc.NewAggregator(p)
			for i := range response {
				_, _ = agg.Write(response[i : i+1])
			}
			bytewise, err := tc.Store(context.Background(), p, agg, true)
			if err != nil {
				t.Fatalf("Store of a stream written byte by byte: %v", err)
			}
			if bytewise.response.Text != whole.response.Text || string(bytewise.response.Final) != string(whole.response.Final) ||
				string(bytewise.response.Usage) != string(whole.response.Usage) {
				t.Errorf("byte-by-byte response %+v differs from %+v", bytewise.response, whole.response)
			}
		})
	}
}

func TestAggregatorJoinsText(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := tc.plan(t, "/api/chat", chatBody)
	e := tc.store(t, p, readTestdata(t, "chat_stream.body"))
	want := " dreams sings for hill always softly dreams river morning walks"
	if e.response.Text != want {
		t.Errorf("text = %q, want %q", e.response.Text, want)
	}
	wantFinal := `{"done_reason":"length","total_duration":62484383,"load_duration":2432284,` +
		`"prompt_eval_count":23,"prompt_eval_duration":5059516,"eval_count":10,"eval_duration":46241526}`
	if string(e.response.Final) != wantFinal {
		t.Errorf("final = %s, want %s", e.response.Final, wantFinal)
	}
}

func TestAggregatorTooLarge(t *testing.T) {
	tc := newTestCache(t, testOptions{cfg: config.Cache{L1: config.CacheL1{MaxBytes: 200}}})
	p := tc.plan(t, "/api/chat", chatBody)
	agg := tc.NewAggregator(p)
	_, _ = agg.Write(readTestdata(t, "chat_stream.body"))
	if _, err := tc.Store(context.Background(), p, agg, true); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Store of a response over l1.max_bytes: %v, want ErrTooLarge", err)
	}
}
