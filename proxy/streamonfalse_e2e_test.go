package proxy_test

// Tests of a node that streams a response that the client requested whole
// ("stream": false), as another proxy or an Ollama-compatible server can.
// Real Ollama sends one JSON object then.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// nodeWords are the pieces of the text that framingNode generates.
var nodeWords = []string{"one ", "two ", "three"}

// nodeText is the whole text that framingNode generates.
const nodeText = "one two three"

// framingHeader selects how framingNode frames its response. "stream"
// selects a chunked NDJSON (/api) or SSE (/v1) stream, whatever the
// request's "stream" member is. "error" selects an NDJSON stream that an
// error line ends after the first piece, and any other value one JSON
// object. The proxy forwards the header like any other.
const framingHeader = "X-Test-Framing"

// framingNode starts a node that lists the model "m" and responds to every
// generation request with nodeText, framed as the request's framingHeader
// selects.
// A HEAD request gets 200 with the NDJSON content type and no body.
func framingNode(t *testing.T) string {
	t.Helper()
	mux := probedMux()
	mux.HandleFunc("HEAD /api/blobs/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
	})
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		framing := r.Header.Get(framingHeader)
		if framing == "error" {
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, failedStream)
			return
		}
		if framing != "stream" {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			_, _ = io.WriteString(w, wholeResponse(r.URL.Path))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		// Each piece leaves as one chunk of a chunked body.
		for _, piece := range streamPieces(r.URL.Path) {
			_, _ = io.WriteString(w, piece)
			w.(http.Flusher).Flush()
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// failedStream is the stream of framing "error".
var failedStream = chatLine("one ", false) + `{"error":"model runner stopped"}` + "\n"

// streamPieces returns the stream of nodeText on path, one line or SSE
// event per piece.
func streamPieces(path string) []string {
	var out []string
	const created = `"created_at":"2026-01-01T00:00:00Z"`
	const counts = `"done_reason":"stop","prompt_eval_count":5,"eval_count":3`
	data := func(object string) string { return "data: " + object + "\n\n" }
	for _, w := range nodeWords {
		switch path {
		case "/api/generate":
			out = append(out, fmt.Sprintf(`{"model":"m",%s,"response":%q,"done":false}`+"\n", created, w))
		case "/api/chat":
			out = append(out, chatLine(w, false))
		case "/v1/chat/completions":
			out = append(out, data(fmt.Sprintf(`{"id":"chatcmpl-1","object":"chat.completion.chunk",`+
				`"created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant",`+
				`"content":%q},"finish_reason":null}]}`, w)))
		case "/v1/completions":
			out = append(out, data(fmt.Sprintf(`{"id":"cmpl-1","object":"text_completion",`+
				`"created":1,"choices":[{"text":%q,"index":0,"finish_reason":null}],"model":"m"}`, w)))
		case "/v1/messages":
			out = append(out, "event: content_block_delta\n"+data(fmt.Sprintf(`{"type":"content_block_delta",`+
				`"index":0,"delta":{"type":"text_delta","text":%q}}`, w)))
		}
	}
	switch path {
	case "/api/generate":
		out = append(out, fmt.Sprintf(`{"model":"m",%s,"response":"","done":true,%s}`+"\n", created, counts))
	case "/api/chat":
		out = append(out, fmt.Sprintf(`{"model":"m",%s,"message":{"role":"assistant","content":""},`+
			`"done":true,%s}`+"\n", created, counts))
	case "/v1/chat/completions":
		out = append(out, data(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,`+
			`"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},`+
			`"finish_reason":"stop"}]}`), data(`{"id":"chatcmpl-1","object":"chat.completion.chunk",`+
			`"created":1,"model":"m","choices":[],`+v1Usage+`}`), "data: [DONE]\n\n")
	case "/v1/completions":
		out = append(out, data(`{"id":"cmpl-1","object":"text_completion","created":1,`+
			`"choices":[{"text":"","index":0,"finish_reason":"stop"}],"model":"m"}`),
			data(`{"id":"cmpl-1","object":"text_completion","created":1,"choices":[],"model":"m",`+
				v1Usage+`}`), "data: [DONE]\n\n")
	case "/v1/messages":
		out = append(out, "event: message_stop\n"+data(`{"type":"message_stop"}`))
	}
	return out
}

// v1Usage is the usage member of framingNode's /v1 responses. A /v1
// stream carries it in a chunk of its own before [DONE], as Ollama sends
// it for stream_options.include_usage.
const v1Usage = `"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}`

// wholeResponse returns nodeText on path as one JSON object.
func wholeResponse(path string) string {
	const usage = v1Usage
	switch path {
	case "/api/generate":
		return `{"model":"m","created_at":"2026-01-01T00:00:00Z","response":"` + nodeText +
			`","done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":3}`
	case "/api/chat":
		return `{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant",` +
			`"content":"` + nodeText + `"},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":3}`
	case "/v1/chat/completions":
		return `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":` +
			`[{"index":0,"message":{"role":"assistant","content":"` + nodeText + `"},` +
			`"finish_reason":"stop"}],` + usage + `}`
	case "/v1/completions":
		return `{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":` +
			`[{"text":"` + nodeText + `","index":0,"finish_reason":"stop"}],` + usage + `}`
	case "/v1/messages":
		return `{"id":"msg_1","type":"message","role":"assistant","model":"m","content":` +
			`[{"type":"text","text":"` + nodeText + `"}],"stop_reason":"end_turn",` +
			`"usage":{"input_tokens":5,"output_tokens":3}}`
	case "/api/show":
		return `{"details":{"format":"gguf"}}`
	}
	return `{}`
}

// textParts holds the members that carry generated text in the objects of
// every route, whole or streamed. One route fills only its own.
type textParts struct {
	Response string `json:"response"`
	Message  struct {
		Content string `json:"content"`
	} `json:"message"`
	Choices []struct {
		Text    string `json:"text"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Content []struct {
		Text string `json:"text"`
	} `json:"content"`
	Delta struct {
		Text string `json:"text"`
	} `json:"delta"`
}

func (p textParts) text() string {
	out := p.Response + p.Message.Content + p.Delta.Text
	for _, c := range p.Choices {
		out += c.Text + c.Message.Content + c.Delta.Content
	}
	for _, c := range p.Content {
		out += c.Text
	}
	return out
}

// responseText returns the text of body: one JSON object, or the joined
// pieces of an NDJSON or SSE stream.
func responseText(t *testing.T, body []byte) string {
	t.Helper()
	var whole textParts
	if json.Unmarshal(body, &whole) == nil {
		return whole.text()
	}
	var out string
	for line := range bytes.Lines(body) {
		line = bytes.TrimSpace(line)
		if data, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			line = bytes.TrimSpace(data)
		}
		if len(line) == 0 || line[0] != '{' {
			continue // a blank line, an event name or [DONE]
		}
		var part textParts
		if err := json.Unmarshal(line, &part); err != nil {
			t.Errorf("stream line %q: %v", line, err)
			continue
		}
		out += part.text()
	}
	return out
}

// generationBody returns a request body for path with the given stream
// member and prompt. A deterministic request sets temperature 0, which
// the response cache requires.
func generationBody(path string, stream, deterministic bool, prompt string) string {
	temperature := `0.8`
	if deterministic {
		temperature = `0`
	}
	options := `"options":{"temperature":` + temperature + `}`
	if strings.HasPrefix(path, "/v1/") {
		options = `"temperature":` + temperature
	}
	ask := fmt.Sprintf(`"prompt":%q`, prompt)
	if path == "/api/chat" || path == "/v1/chat/completions" || path == "/v1/messages" {
		ask = fmt.Sprintf(`"messages":[{"role":"user","content":%q}]`, prompt)
	}
	if path == "/v1/messages" {
		ask += `,"max_tokens":16`
	}
	return fmt.Sprintf(`{"model":"m","stream":%t,%s,%s}`, stream, options, ask)
}

// cacheSetup is a way to run the response cache in the tests.
type cacheSetup struct {
	name string
	// start returns a proxy in front of node, and the proxy to repeat
	// requests on, which shares the first one's Redis when there is one.
	start func(t *testing.T, node string) (first *app.App, logs *testenv.LogBuffer, repeat *app.App)
	// hit is the X-LLMProxy-Cache value of a repeated cacheable request,
	// "" when the cache is off.
	hit string
}

var cacheSetups = []cacheSetup{
	{name: "off", hit: "", start: func(t *testing.T, node string) (*app.App, *testenv.LogBuffer, *app.App) {
		p, logs := framingProxy(t, node, "", false)
		return p, logs, p
	}},
	{name: "memory", hit: "hit-l1", start: func(t *testing.T, node string) (*app.App, *testenv.LogBuffer, *app.App) {
		p, logs := framingProxy(t, node, "", true)
		return p, logs, p
	}},
	{name: "redis", hit: "hit-l2", start: func(t *testing.T, node string) (*app.App, *testenv.LogBuffer, *app.App) {
		rds := testredis.Start(t)
		p, logs := framingProxy(t, node, rds.Addr, true)
		other, _ := framingProxy(t, node, rds.Addr, true)
		return p, logs, other
	}},
}

// framingProxy starts a proxy in front of node with its access log kept,
// with the response cache on or off, and with Redis at redisAddr unless
// that is empty.
func framingProxy(t *testing.T, node, redisAddr string, cached bool) (*app.App, *testenv.LogBuffer) {
	t.Helper()
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
	cfg.Cache.Enabled = &cached
	cfg.Redis.Addr = redisAddr
	cfg.Redis.Timeout = 2 * time.Second
	return testenv.JSONProxy(t, cfg, slog.LevelInfo)
}

// roundTrip sends one request to the proxy at base and returns the
// response and its body, or an error when the response is not valid
// HTTP. The client gives up after 30 seconds, so that a response that
// never ends fails the test instead of hanging it.
func roundTrip(base, method, path, body string, header ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return resp, got, err
}

// mergedRoutes are the routes on which a stream that the client did not
// ask for reaches the client as one JSON object.
var mergedRoutes = []string{"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"}

func TestStreamOnFalseMergedIntoOneObject(t *testing.T) {
	node := framingNode(t)
	for _, setup := range cacheSetups {
		t.Run(setup.name, func(t *testing.T) {
			first, logs, repeat := setup.start(t, node)
			for _, path := range mergedRoutes {
				for _, deterministic := range []bool{true, false} {
					name := fmt.Sprintf("%s deterministic=%t", path, deterministic)
					t.Run(name, func(t *testing.T) {
						body := generationBody(path, false, deterministic, name)
						for i, p := range []*app.App{first, repeat} {
							resp, got, err := roundTrip(p.URL(), "POST", path, body, framingHeader, "stream")
							if err != nil {
								t.Fatalf("request %d: %v", i, err)
							}
							checkMergedObject(t, resp, got)
							cacheResult := resp.Header.Get("X-LLMProxy-Cache")
							if i == 1 && deterministic && cacheResult != setup.hit {
								t.Errorf("repeated request: X-LLMProxy-Cache %q, want %q", cacheResult, setup.hit)
							}
						}
					})
				}
			}
			for id, records := range accessRecords(t, logs) {
				if r := records[0]; r.Node != "" && r.CompletionTokens != 3 {
					t.Errorf("request %s: %d completion tokens logged, want the stream's 3", id, r.CompletionTokens)
				}
			}
		})
	}
}

// checkMergedObject fails the test unless resp is a 200 response of
// known length whose body is one JSON object with all of nodeText.
func checkMergedObject(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if resp.ContentLength != int64(len(body)) {
		t.Errorf("Content-Length %d for a body of %d bytes, want a response of known length",
			resp.ContentLength, len(body))
	}
	var object map[string]json.RawMessage
	if err := json.Unmarshal(body, &object); err != nil {
		t.Fatalf("body is not one JSON object: %v\n%s", err, body)
	}
	if got := responseText(t, body); got != nodeText {
		t.Errorf("text %q, want %q", got, nodeText)
	}
	if !bytes.Contains(body, []byte(`"eval_count":3`)) && !bytes.Contains(body, []byte(`"completion_tokens":3`)) {
		t.Errorf("body lacks the token counts of the stream's end: %s", body)
	}
}

func TestStreamOnFalseUnmergedSentAsNodeSent(t *testing.T) {
	node := framingNode(t)
	p, _, _ := cacheSetups[1].start(t, node)
	cases := []struct {
		name, path, framing, want string
	}{
		{"route without merged form", "/v1/messages", "stream", strings.Join(streamPieces("/v1/messages"), "")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, got, err := roundTrip(p.URL(), "POST", c.path, generationBody(c.path, false, true, c.name),
				framingHeader, c.framing)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200; body %s", resp.StatusCode, got)
			}
			if string(got) != c.want {
				t.Errorf("body\n%q\nwant the node's stream\n%q", got, c.want)
			}
			if resp.ContentLength != int64(len(got)) {
				t.Errorf("Content-Length %d for a body of %d bytes, want a response of known length",
					resp.ContentLength, len(got))
			}
		})
	}
}

// TestStreamOnFalseErrorIs500 checks that a stream ending in an error
// line, sent for a request for one response, reaches the client as the
// error response Ollama sends for a failed generation.
func TestStreamOnFalseErrorIs500(t *testing.T) {
	node := framingNode(t)
	p, _, _ := cacheSetups[1].start(t, node)
	resp, got, err := roundTrip(p.URL(), "POST", "/api/chat", generationBody("/api/chat", false, true, "error"),
		framingHeader, "error")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("status %d, want 500; body %s", resp.StatusCode, got)
	}
	if want := `{"error":"model runner stopped"}`; string(got) != want {
		t.Errorf("body %s, want %s", got, want)
	}
}

// TestEveryFramingEndsRequestOnce sends every combination of route,
// framing of the node's response, requested stream and cacheability, a
// HEAD and an HTTP/1.0 request through proxies with the cache off, in
// memory and in Redis. Each must get one valid response with the node's
// text and exactly one access log line. Concurrent requests afterwards
// must each get their own line, which fails when a pooled request record
// went back to the pool twice and two requests shared it.
func TestEveryFramingEndsRequestOnce(t *testing.T) {
	node := framingNode(t)
	routes := append(mergedRoutes[:len(mergedRoutes):len(mergedRoutes)], "/v1/messages")
	for _, setup := range cacheSetups {
		t.Run(setup.name, func(t *testing.T) {
			p, logs, _ := setup.start(t, node)
			sent := 0
			for _, path := range routes {
				for _, framing := range []string{"stream", "whole"} {
					for _, stream := range []bool{true, false} {
						for _, deterministic := range []bool{true, false} {
							name := fmt.Sprintf("%s framing=%s stream=%t deterministic=%t",
								path, framing, stream, deterministic)
							body := generationBody(path, stream, deterministic, name)
							// The second of two identical requests can be a hit.
							for range 2 {
								resp, got, err := roundTrip(p.URL(), "POST", path, body, framingHeader, framing)
								sent++
								if err != nil {
									t.Errorf("%s: %v", name, err)
									continue
								}
								if resp.StatusCode != http.StatusOK || responseText(t, got) != nodeText {
									t.Errorf("%s: status %d, body %s; want 200 with %q",
										name, resp.StatusCode, got, nodeText)
								}
							}
						}
					}
				}
			}

			blob := "/api/blobs/sha256:" + strings.Repeat("a", 64)
			resp, _, err := roundTrip(p.URL(), "HEAD", blob, "")
			sent++
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("HEAD %s: %v, %v; want status 200", blob, resp, err)
			}
			head, got := postHTTP10Raw(t, p.Addr(), "/api/chat",
				generationBody("/api/chat", false, true, "http10"), framingHeader+": stream")
			sent++
			if !strings.HasPrefix(head, "HTTP/1.1 200") && !strings.HasPrefix(head, "HTTP/1.0 200") ||
				responseText(t, []byte(got)) != nodeText {
				t.Errorf("HTTP/1.0 request: head %q, body %q; want 200 with %q", head, got, nodeText)
			}

			sent += concurrentRequests(t, p, 120)
			testenv.WaitFor(t, 10*time.Second, "an access log line per request", func() bool {
				return countAccessLines(t, logs) >= sent
			})
			checkAccessLines(t, logs, sent)
		})
	}
}

// concurrentRequests sends n requests at once, half /api/version and half
// /api/show, and returns n.
func concurrentRequests(t *testing.T, p *app.App, n int) int {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			method, path, body := "GET", "/api/version", ""
			if i%2 == 1 {
				method, path, body = "POST", "/api/show", `{"model":"m"}`
			}
			resp, got, err := roundTrip(p.URL(), method, path, body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("%s %s: %v, body %s; want status 200", method, path, err, got)
			}
		})
	}
	wg.Wait()
	return n
}

func countAccessLines(t *testing.T, logs *testenv.LogBuffer) int {
	t.Helper()
	n := 0
	for _, records := range accessRecords(t, logs) {
		n += len(records)
	}
	return n
}

// checkAccessLines fails the test unless logs has exactly want access log
// lines, each with its own request ID, a method and status 200.
func checkAccessLines(t *testing.T, logs *testenv.LogBuffer, want int) {
	t.Helper()
	type line struct {
		Msg       string `json:"msg"`
		RequestID string `json:"request_id"`
		Method    string `json:"method"`
		Route     string `json:"route"`
		Status    int    `json:"status"`
	}
	got := 0
	ids := map[string]int{}
	for _, l := range testenv.Records[line](t, logs) {
		if l.Msg != "request" {
			continue
		}
		got++
		ids[l.RequestID]++
		if l.RequestID == "" || l.Method == "" {
			t.Errorf("access log line without request ID or method: %+v", l)
		}
		if l.Status != http.StatusOK {
			t.Errorf("access log line with status %d, want 200: %+v", l.Status, l)
		}
	}
	if got != want {
		t.Errorf("%d access log lines for %d requests, want one each", got, want)
	}
	for id, n := range ids {
		if n > 1 {
			t.Errorf("request ID %q has %d access log lines, want 1", id, n)
		}
	}
}
