package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// differentialCase is a request sent to stampsim and to ollamasim behind
// net/http, whose responses must match.
type differentialCase struct {
	name    string
	request func(host string) string
	// headerOnly skips the body and its length, which depend on times and
	// on the generated text.
	headerOnly bool
}

func request(method, path, body string) func(string) string {
	return requestWith(method, path, body, "")
}

func requestWith(method, path, body, extra string) func(string) string {
	return func(host string) string { return rawRequest(method, path, host, body, extra) }
}

// http10 turns a request into HTTP/1.0.
func http10(build func(string) string) func(string) string {
	return func(host string) string {
		return strings.Replace(build(host), " HTTP/1.1\r\n", " HTTP/1.0\r\n", 1)
	}
}

var differentialCases = []differentialCase{
	{name: "version", request: request(http.MethodGet, "/api/version", "")},
	{name: "root", request: request(http.MethodGet, "/", "")},
	{name: "HEAD root", request: request(http.MethodHead, "/", "")},
	{name: "tags over 2 KB", request: request(http.MethodGet, "/api/tags", "")},
	{name: "show", request: request(http.MethodPost, "/api/show", `{"model":"llama3:8b"}`)},
	{name: "unknown path", request: request(http.MethodGet, "/nope", "")},
	{name: "wrong method", request: request(http.MethodDelete, "/api/tags", "")},
	{name: "OpenAI models", request: request(http.MethodGet, "/v1/models", "")},
	{name: "chat unknown model", request: request(http.MethodPost, routeChat,
		`{"model":"nope","messages":[{"role":"user","content":"hi"}]}`)},
	{name: "OpenAI chat unknown model", request: request(http.MethodPost, routeOpenAIChat,
		`{"model":"nope","stream":true,"messages":[{"role":"user","content":"hi"}]}`)},
	{name: "chat embedding model", request: request(http.MethodPost, routeChat,
		`{"model":"nomic-embed-text","messages":[{"role":"user","content":"hi"}]}`)},
	{name: "chat bad JSON", request: request(http.MethodPost, routeChat, `{"model":`)},
	{name: "OpenAI chat bad JSON", request: request(http.MethodPost, routeOpenAIChat, `{"stream":true,`)},
	{name: "chat no body", request: request(http.MethodPost, routeChat, "")},
	{name: "chat bad keep_alive", request: request(http.MethodPost, routeChat,
		`{"model":"llama3:8b","keep_alive":"","messages":[{"role":"user","content":"hi"}]}`)},
	{name: "chat bad option", request: request(http.MethodPost, routeChat,
		`{"model":"llama3:8b","options":{"num_predict":"5"},"messages":[{"role":"user","content":"hi"}]}`)},
	{name: "OpenAI chat without messages", request: request(http.MethodPost, routeOpenAIChat,
		`{"model":"llama3:8b","stream":true,"messages":[]}`)},
	{name: "chat foreign origin", request: requestWith(http.MethodPost, routeChat, chatBody,
		"Origin: https://example.com\r\n")},
	{name: "chat foreign host", request: func(string) string {
		return rawRequest(http.MethodPost, routeChat, "example.com", chatBody, "")
	}},
	{name: "chat not streamed", headerOnly: true, request: request(http.MethodPost, routeChat,
		`{"model":"llama3:8b","stream":false,"messages":[{"role":"user","content":"hi"}]}`)},
	{name: "chat with format", headerOnly: true, request: request(http.MethodPost, routeChat,
		`{"model":"llama3:8b","format":"json","messages":[{"role":"user","content":"hi"}]}`)},
	{name: "version, Connection: close",
		request: requestWith(http.MethodGet, "/api/version", "", "Connection: close\r\n")},
	{name: "version over HTTP/1.0", request: http10(request(http.MethodGet, "/api/version", ""))},
	{name: "version over HTTP/1.0 keep-alive",
		request: http10(requestWith(http.MethodGet, "/api/version", "", "Connection: keep-alive\r\n"))},
	{name: "stream with format over HTTP/1.0", headerOnly: true, request: http10(request(http.MethodPost,
		routeChat, `{"model":"llama3:8b","format":"json","messages":[{"role":"user","content":"hi"}]}`))},
}

// manyModels makes /api/tags longer than the 2 KB net/http buffers before
// it chunks a body.
func manyModels() []ollamasim.ModelSpec {
	models := []ollamasim.ModelSpec{{Name: testModel}, {Name: "nomic-embed-text", Embedding: true}}
	for i := range 8 {
		models = append(models, ollamasim.ModelSpec{Name: fmt.Sprintf("model%d:7b", i)})
	}
	return models
}

func TestFallbackMatchesNetHTTP(t *testing.T) {
	// A fixed clock makes modified_at equal on both nodes.
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg := ollamasim.Config{Models: manyModels(), Now: func() time.Time { return fixed }}
	n := startNode(t, cfg)
	ref, _ := referenceServer(t, cfg)
	refAddr := ref.Listener.Addr().String()

	for _, tc := range differentialCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, gotOpen := exchange(t, n.addr, tc.request(n.addr))
			want, wantOpen := exchange(t, refAddr, tc.request(refAddr))
			if got.statusLine != want.statusLine {
				t.Errorf("status line = %q, want %q", got.statusLine, want.statusLine)
			}
			if !slices.Equal(comparableHeader(got.header, tc.headerOnly), comparableHeader(want.header, tc.headerOnly)) {
				t.Errorf("header = %q, want %q", got.header, want.header)
			}
			if !tc.headerOnly && !bytes.Equal(got.body, want.body) {
				t.Errorf("body = %q, want %q", got.body, want.body)
			}
			if gotOpen != wantOpen {
				t.Errorf("connection open after the response = %v, want %v", gotOpen, wantOpen)
			}
		})
	}
}

// exchange sends request on a new connection to addr, reads the response,
// and reports whether the server kept the connection open.
func exchange(t *testing.T, addr, request string) (*rawResponse, bool) {
	t.Helper()
	c := dialAddr(t, addr)
	defer c.close()
	resp := c.roundTrip(t, request)
	c.nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.br.ReadByte()
	var ne interface{ Timeout() bool }
	open := errors.As(err, &ne) && ne.Timeout()
	return resp, open
}

// comparableHeader returns header lines with the value of Date blanked, and of
// Content-Length too when the body differs by nature.
func comparableHeader(header []string, bodyDiffers bool) []string {
	out := slices.Clone(header)
	for i, line := range out {
		name, _, _ := strings.Cut(line, ": ")
		if name == "Date" || (bodyDiffers && name == "Content-Length") {
			out[i] = name + ": ..."
		}
	}
	return out
}

func TestFallbackStreamsChunkByChunk(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	resp := n.do(t, http.MethodPost, routeChat,
		`{"model":"llama3:8b","format":"json","messages":[{"role":"user","content":"hi"}]}`)
	if got := n.node.Requests(routeChat); got != 1 {
		t.Fatalf("ollamasim served %d chat requests, want 1: a request with format is not lean", got)
	}
	if len(resp.chunks) < 21 {
		t.Fatalf("%d chunks, want one per line of a 20 to 40 token stream", len(resp.chunks))
	}
	for i, chunk := range resp.chunks {
		if bytes.Count(chunk.data, []byte("\n")) != 1 {
			t.Errorf("chunk %d = %q, want one NDJSON line", i, chunk.data)
		}
	}
	first, last := resp.chunks[0].received, resp.chunks[len(resp.chunks)-1].received
	if spread := last.Sub(first); spread < 40*time.Millisecond {
		t.Errorf("chunks arrived within %v, want them paced at 400 tokens/s", spread)
	}
}

func TestFaultsSendStreamsThroughOllamasim(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	if resp := n.do(t, http.MethodPost, "/_sim/faults", `{"busy":true}`); resp.status != http.StatusOK {
		t.Fatalf("set faults: status %d: %s", resp.status, resp.body)
	}
	resp := n.do(t, http.MethodPost, routeChat, chatBody)
	if resp.status != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503 from the busy fault", resp.status)
	}
	if got := n.node.Requests(routeChat); got != 1 {
		t.Errorf("ollamasim served %d chat requests, want 1 while a fault is set", got)
	}
}

func TestColdModelLoadsThroughOllamasim(t *testing.T) {
	cfg := ollamasim.Config{LoadTime: 50 * time.Millisecond}
	n := startNode(t, cfg)
	// startNode loaded the model; unload it.
	unload := n.do(t, http.MethodPost, routeChat, `{"model":"llama3:8b","keep_alive":0}`)
	if unload.status != http.StatusOK {
		t.Fatalf("unload: status %d: %s", unload.status, unload.body)
	}

	// The first stream loads the model through ollamasim; the second,
	// with the model loaded, is lean. ollamasim counts the unload request
	// and the first stream.
	for i := range 2 {
		resp := n.do(t, http.MethodPost, routeChat, chatBody)
		lines := ndjsonLines(resp.body)
		var final api.ChatResponse
		if err := json.Unmarshal(lines[len(lines)-1], &final); err != nil || !final.Done {
			t.Fatalf("stream %d ended with %q, want the final line", i, lines[len(lines)-1])
		}
		if got := n.node.Requests(routeChat); got != 2 {
			t.Errorf("after stream %d ollamasim counted %d chat requests, want 2", i, got)
		}
		if i == 0 && final.LoadDuration < 50*time.Millisecond {
			t.Errorf("cold stream: load_duration = %v, want the 50ms load", final.LoadDuration)
		}
	}
}

func TestUnsupportedExpectGets417(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	resp := c.roundTrip(t, rawRequest(http.MethodGet, "/api/version", n.addr, "", "Expect: magic\r\n"))
	if resp.status != http.StatusExpectationFailed {
		t.Errorf("status = %d, want 417", resp.status)
	}
	c.expectClosed(t)
}

func TestExpectContinueGetsBody(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	request := rawRequest(http.MethodPost, routeChat, n.addr, chatBody, "Expect: 100-continue\r\n")
	head, body, _ := strings.Cut(request, "\r\n\r\n")
	c.send(t, head+"\r\n\r\n")
	if line := c.readLine(t); line != "HTTP/1.1 100 Continue" {
		t.Fatalf("interim response %q, want HTTP/1.1 100 Continue", line)
	}
	if blank := c.readLine(t); blank != "" {
		t.Fatalf("interim response continues with %q", blank)
	}
	c.send(t, body)
	resp := c.readResponse(t, false)
	if resp.status != http.StatusOK || len(resp.chunks) < 21 {
		t.Errorf("status %d with %d chunks, want the stream", resp.status, len(resp.chunks))
	}
}

func TestMalformedRequestGets400(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	c := n.dial(t)
	defer c.close()
	c.send(t, "NOT HTTP\r\n\r\n")
	resp := c.readResponse(t, false)
	if resp.statusLine != "HTTP/1.1 400 Bad Request" || string(resp.body) != "400 Bad Request" {
		t.Errorf("response %q with body %q, want net/http's 400 Bad Request", resp.statusLine, resp.body)
	}
	c.expectClosed(t)
}
