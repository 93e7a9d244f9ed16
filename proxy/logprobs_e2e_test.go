package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	ollamaopenai "github.com/ollama/ollama/openai"
)

// logprobsTokens are the tokens that logprobsNode generates, each with its
// log probability.
var logprobsTokens = []api.Logprob{
	{TokenLogprob: api.TokenLogprob{Token: "Hel", Logprob: -0.25, Bytes: []int{72, 101, 108}},
		TopLogprobs: []api.TokenLogprob{{Token: "Hel", Logprob: -0.25, Bytes: []int{72, 101, 108}}, {Token: "He", Logprob: -1.5}}},
	{TokenLogprob: api.TokenLogprob{Token: "lo", Logprob: -0.5, Bytes: []int{108, 111}},
		TopLogprobs: []api.TokenLogprob{{Token: "lo", Logprob: -0.5, Bytes: []int{108, 111}}}},
	{TokenLogprob: api.TokenLogprob{Token: " world", Logprob: -0.75, Bytes: []int{32, 119, 111, 114, 108, 100}}},
}

// logprobsNode starts a node that lists the model "m" and responds to
// /v1/chat/completions with the tokens of logprobsTokens and their
// logprobs, written by Ollama's own openai package (v0.17.4) as its
// middleware writes them. It streams when the request sets "stream": true
// or framingHeader is "stream", and sends one object otherwise. The
// counter counts the chat requests it received.
func logprobsNode(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var chats atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/version", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"version":"0.17.4"}`)
	})
	mux.HandleFunc("GET /api/tags", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[{"name":"m:latest","model":"m:latest",`+
			`"size":1,"digest":"d","details":{"format":"gguf"}}]}`)
	})
	mux.HandleFunc("GET /api/ps", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[]}`)
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		chats.Add(1)
		var req ollamaopenai.ChatCompletionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// Ollama's runner sends one response per token, and a last one
		// with done true and the counts.
		var responses []api.ChatResponse
		for _, lp := range logprobsTokens {
			responses = append(responses, api.ChatResponse{Model: req.Model, CreatedAt: time.Now(),
				Message:  api.Message{Role: "assistant", Content: lp.Token},
				Logprobs: []api.Logprob{lp}})
		}
		final := api.ChatResponse{Model: req.Model, CreatedAt: time.Now(),
			Message: api.Message{Role: "assistant"}, Done: true, DoneReason: "stop",
			Metrics: api.Metrics{PromptEvalCount: 4, EvalCount: len(logprobsTokens)}}
		responses = append(responses, final)

		if !req.Stream && r.Header.Get(framingHeader) != "stream" {
			whole := final
			whole.Logprobs = logprobsTokens
			for _, lp := range logprobsTokens {
				whole.Message.Content += lp.Token
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(ollamaopenai.ToChatCompletion("chatcmpl-1", whole))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, resp := range responses {
			chunk := ollamaopenai.ToChunk("chatcmpl-1", resp, false)
			d, _ := json.Marshal(chunk)
			_, _ = fmt.Fprintf(w, "data: %s\n\n", d)
			if resp.Done && req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
				usage := ollamaopenai.ToUsage(resp)
				chunk.Usage, chunk.Choices = &usage, []ollamaopenai.ChunkChoice{}
				d, _ = json.Marshal(chunk)
				_, _ = fmt.Fprintf(w, "data: %s\n\n", d)
			}
			w.(http.Flusher).Flush()
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, &chats
}

// logprobsChatBody returns a deterministic chat request body that requests
// logprobs, streamed or not.
func logprobsChatBody(stream bool) string {
	body := `{"model":"m","temperature":0,"logprobs":true,"top_logprobs":2,` +
		`"messages":[{"role":"user","content":"hi"}]`
	if stream {
		body += `,"stream":true,"stream_options":{"include_usage":true}`
	}
	return body + `}`
}

// chatLogprobs returns the text and the logprobs.content entries of a
// chat completion or of a chat completion stream, joined over its chunks
// as an OpenAI client joins them.
func chatLogprobs(t *testing.T, body []byte) (string, []api.Logprob) {
	t.Helper()
	type choice struct {
		Message  struct{ Content string } `json:"message"`
		Delta    struct{ Content string } `json:"delta"`
		Logprobs *ollamaopenai.ChoiceLogprobs
	}
	objects := [][]byte{body}
	if !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		objects = nil
		for line := range bytes.Lines(body) {
			data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data: "))
			if ok && string(data) != "[DONE]" {
				objects = append(objects, data)
			}
		}
	}
	var text string
	var entries []api.Logprob
	for _, object := range objects {
		var v struct{ Choices []choice }
		if err := json.Unmarshal(object, &v); err != nil {
			t.Fatalf("object %s: %v", object, err)
		}
		for _, ch := range v.Choices {
			text += ch.Message.Content + ch.Delta.Content
			if ch.Logprobs != nil {
				entries = append(entries, ch.Logprobs.Content...)
			}
		}
	}
	return text, entries
}

func TestV1LogprobsKeptOnCacheHit(t *testing.T) {
	for _, fillStream := range []bool{false, true} {
		name := map[bool]string{false: "filled by object", true: "filled by stream"}[fillStream]
		t.Run(name, func(t *testing.T) {
			node, chats := logprobsNode(t)
			p, _ := framingProxy(t, node, "", true)
			requests := []struct {
				stream bool
				cache  string
			}{{fillStream, "miss"}, {false, "hit-l1"}, {true, "hit-l1"}}
			for i, rq := range requests {
				resp, body, err := roundTrip(p.URL(), "POST", "/v1/chat/completions", logprobsChatBody(rq.stream))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("request %d: status %d, body %s", i, resp.StatusCode, body)
				}
				if got := resp.Header.Get("X-LLMProxy-Cache"); got != rq.cache {
					t.Errorf("request %d (stream %t): X-LLMProxy-Cache %q, want %q", i, rq.stream, got, rq.cache)
				}
				text, entries := chatLogprobs(t, body)
				if text != "Hello world" {
					t.Errorf("request %d (stream %t): text %q, want %q", i, rq.stream, text, "Hello world")
				}
				if !reflect.DeepEqual(entries, logprobsTokens) {
					t.Errorf("request %d (stream %t, %s): logprobs.content %+v, want the node's %+v",
						i, rq.stream, rq.cache, entries, logprobsTokens)
				}
			}
			if n := chats.Load(); n != 1 {
				t.Errorf("node received %d chat requests, want 1", n)
			}
		})
	}
}

func TestV1LogprobsKeptInMergedStream(t *testing.T) {
	node, _ := logprobsNode(t)
	p, _ := framingProxy(t, node, "", false)
	resp, body, err := roundTrip(p.URL(), "POST", "/v1/chat/completions", logprobsChatBody(false),
		framingHeader, "stream")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("status %d, content type %q, want 200 and one JSON object; body %s",
			resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	text, entries := chatLogprobs(t, body)
	if text != "Hello world" {
		t.Errorf("merged text %q, want %q", text, "Hello world")
	}
	if !reflect.DeepEqual(entries, logprobsTokens) {
		t.Errorf("merged logprobs.content %+v, want the stream's %+v", entries, logprobsTokens)
	}
}
