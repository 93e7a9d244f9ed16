package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/prometheus/client_golang/prometheus/testutil"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// cuttingNode starts a node that lists model m and responds to every POST
// with head and the first part of a body, and then closes the connection. It
// returns the node's URL and the count of requests it received.
func cuttingNode(t *testing.T, head, partial string) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	url := hijackedNode(t, func(conn net.Conn) {
		hits.Add(1)
		_, _ = conn.Write([]byte(head + partial))
	})
	return url, &hits
}

// Heads of responses that announce more body than the node sends.
const (
	lengthHead  = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 1000\r\n\r\n"
	chunkedJSON = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
)

// cutBodies are the ways a node can end a buffered response early.
var cutBodies = []struct {
	name, head, partial string
}{
	{"short of Content-Length", lengthHead, `{"model":"m","resp`},
	{"inside a chunk", chunkedJSON, "40\r\n" + `{"model":"m","resp`},
	{"before the last chunk", chunkedJSON, "5\r\n" + `{"mod` + "\r\n"},
}

// proxyWithCutter starts a proxy in front of a simulator node (n0) and a
// node that cuts its bodies (named cutter).
func proxyWithCutter(t *testing.T, cutterURL string) (*app.App, *ollamasim.Running) {
	t.Helper()
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cutter := config.DefaultNode(cutterURL)
	cutter.Name = "cutter"
	cfg.Nodes = append(cfg.Nodes, cutter)
	cfg.Health.MaxFails = 0 // keep the cutting node in rotation
	cfg.Breaker.ConsecutiveFailures = 1000
	cfg.Breaker.MinRequests = 1000
	return testenv.Proxy(t, cfg), sim
}

// TestCutBodyIsRetried sends requests through the Ollama and OpenAI
// clients while one node cuts every buffered response short. A cut body
// has not reached the client, so the request goes to the other node, and
// every client gets a whole response.
func TestCutBodyIsRetried(t *testing.T) {
	for _, tc := range cutBodies {
		t.Run(tc.name, func(t *testing.T) {
			cutterURL, hits := cuttingNode(t, tc.head, tc.partial)
			p, _ := proxyWithCutter(t, cutterURL)
			u, err := url.Parse(p.URL())
			if err != nil {
				t.Fatal(err)
			}
			ollama := api.NewClient(u, http.DefaultClient)
			oaiCfg := openai.DefaultConfig("unused")
			oaiCfg.BaseURL = p.URL() + "/v1"
			oai := openai.NewClientWithConfig(oaiCfg)
			ctx := context.Background()

			for i := range 6 {
				stream := false
				var text string
				err := ollama.Generate(ctx, &api.GenerateRequest{Model: "m", Prompt: "hi", Stream: &stream,
					Options: map[string]any{"num_predict": 3}}, func(r api.GenerateResponse) error {
					text += r.Response
					return nil
				})
				if err != nil {
					t.Fatalf("generate %d: %v", i, err)
				}
				if text == "" {
					t.Errorf("generate %d: empty response", i)
				}
				resp, err := oai.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m",
					MaxTokens: 3, Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}}})
				if err != nil {
					t.Fatalf("chat completion %d: %v", i, err)
				}
				if len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" {
					t.Errorf("chat completion %d: choices %+v, want one with content", i, resp.Choices)
				}
			}
			if hits.Load() == 0 {
				t.Fatal("no request reached the cutting node")
			}
			m := p.Metrics()
			if got := testutil.ToFloat64(m.Retries.WithLabelValues("cutter", "midstream")); got != float64(hits.Load()) {
				t.Errorf("retries counted for the cutting node = %v, want %d", got, hits.Load())
			}
			if got := testutil.ToFloat64(m.NodeFailures.WithLabelValues("cutter", "midstream")); got != float64(hits.Load()) {
				t.Errorf("failures counted for the cutting node = %v, want %d", got, hits.Load())
			}
		})
	}
}

// TestCutBodyEverywhereIsBadGateway sends a request to a proxy whose only
// node cuts its bodies. The client gets a 502 in its API's error shape,
// not the part of the body that arrived.
func TestCutBodyEverywhereIsBadGateway(t *testing.T) {
	cutterURL, hits := cuttingNode(t, lengthHead, `{"model":"m","resp`)
	cfg := testenv.Config(t)
	cutter := config.DefaultNode(cutterURL)
	cutter.Name = "cutter"
	cfg.Nodes = append(cfg.Nodes, cutter)
	p := testenv.Proxy(t, cfg)

	generate := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`)
	if got := generate.Header.Get("X-LLMProxy-Node"); got != "cutter" {
		t.Errorf("X-LLMProxy-Node = %q, want cutter", got)
	}
	msg := ollamaErrorMessage(t, generate, http.StatusBadGateway)
	if !strings.Contains(msg, "node cutter") {
		t.Errorf("generate error %q, want it to name the node", msg)
	}
	if !strings.Contains(msg, "node closed the connection before the response body was complete") {
		t.Errorf("generate error %q, want it to say that the node cut the response", msg)
	}
	chat := post(t, p.URL()+"/v1/chat/completions",
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	msg = openAIErrorMessage(t, chat, http.StatusBadGateway)
	if !strings.Contains(msg, "node closed the connection before the response body was complete") {
		t.Errorf("chat completion error %q, want it to say that the node cut the response", msg)
	}
	if hits.Load() != 2 {
		t.Errorf("node received %d requests, want 2", hits.Load())
	}
	// With no other node, there was nothing to retry on.
	if got := testutil.ToFloat64(p.Metrics().Retries.WithLabelValues("cutter", "midstream")); got != 0 {
		t.Errorf("retries counted %v with no other node, want 0", got)
	}
}

// errorBody checks that resp has status and returns its body.
func errorBody(t *testing.T, resp *http.Response, status int) []byte {
	t.Helper()
	body := readBody(t, resp)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	return body
}

// ollamaErrorMessage checks that resp has status and Ollama's error shape,
// {"error":"..."}, and returns the message.
func ollamaErrorMessage(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	body := errorBody(t, resp, status)
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("body %q is not Ollama's error shape (%v)", body, err)
	}
	return *e.Error
}

// openAIErrorMessage checks that resp has status and OpenAI's error
// shape, {"error":{"message":"...",...}}, and returns the message.
func openAIErrorMessage(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	body := errorBody(t, resp, status)
	var e struct {
		Error *struct {
			Message *string `json:"message"`
			Type    string  `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || e.Error.Message == nil {
		t.Fatalf("body %q is not OpenAI's error shape (%v)", body, err)
	}
	return *e.Error.Message
}

// TestNodeErrorBodyShape relays a node's 5xx response with bodies of
// several kinds. The client gets the node's status and, on each API, an
// error in the shape its clients parse, with the node's message where
// the body had one.
func TestNodeErrorBodyShape(t *testing.T) {
	bigMessage := strings.Repeat("x", 100<<10)
	cases := []struct {
		name        string
		status      int
		contentType string
		body        string
		// wantOllama and wantOpenAI are the messages that each API's
		// client reads.
		wantOllama, wantOpenAI string
	}{
		{"ollama error", 500, "application/json", `{"error":"model crashed"}`,
			"model crashed", "model crashed"},
		{"openai error", 500, "application/json",
			`{"error":{"message":"model crashed","type":"api_error","param":null,"code":null}}`,
			"model crashed", "model crashed"},
		{"html page", 502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>",
			"node returned status 502", "node returned status 502"},
		{"empty body", 502, "text/plain", "",
			"node returned status 502", "node returned status 502"},
		{"plain text", 503, "text/plain", "upstream is restarting\n",
			"node returned status 503: upstream is restarting",
			"node returned status 503: upstream is restarting"},
		{"json without error", 500, "application/json", `{"detail":"boom"}`,
			"node returned status 500", "node returned status 500"},
		{"over the read limit", 500, "application/json", `{"error":"` + bigMessage + `"}`,
			"node returned status 500", "node returned status 500"},
		// A node's 4xx is rewrapped in the same way.
		{"route missing on the node", 404, "text/plain", "404 page not found",
			"node returned status 404: 404 page not found", "node returned status 404: 404 page not found"},
		{"html page of a 4xx", 413, "text/html", "<html><body>413 Request Entity Too Large</body></html>",
			"node returned status 413", "node returned status 413"},
		{"empty body of a 4xx", 422, "text/plain", "", "node returned status 422", "node returned status 422"},
		{"openai error of a 4xx", 400, "application/json",
			`{"error":{"message":"bad field","type":"invalid_request_error","param":null,"code":null}}`,
			"bad field", "bad field"},
		{"ollama error of a 4xx", 400, "application/json", `{"error":"bad field"}`, "bad field", "bad field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			cfg := testenv.Config(t)
			nc := config.DefaultNode(node)
			nc.Name = "failing"
			cfg.Nodes = append(cfg.Nodes, nc)
			p := testenv.Proxy(t, cfg)

			resp := post(t, p.URL()+"/api/chat", `{"model":"m","messages":[],"stream":false}`)
			if got := resp.Header.Get("X-LLMProxy-Node"); got != "failing" {
				t.Errorf("X-LLMProxy-Node = %q on /api/chat, want failing", got)
			}
			if got := ollamaErrorMessage(t, resp, tc.status); got != tc.wantOllama {
				t.Errorf("/api/chat error %.80q, want %q", got, tc.wantOllama)
			}
			resp = post(t, p.URL()+"/v1/chat/completions", `{"model":"m","messages":[]}`)
			if got := resp.Header.Get("X-LLMProxy-Node"); got != "failing" {
				t.Errorf("X-LLMProxy-Node = %q on /v1/chat/completions, want failing", got)
			}
			if got := openAIErrorMessage(t, resp, tc.status); got != tc.wantOpenAI {
				t.Errorf("/v1/chat/completions error %.80q, want %q", got, tc.wantOpenAI)
			}
		})
	}
}

// TestNodeErrorReachesOpenAIClient checks that the OpenAI client reads the
// message of a node's Ollama-shaped error on /v1.
func TestNodeErrorReachesOpenAIClient(t *testing.T) {
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"server busy, please try again.  maximum pending requests exceeded"}`))
	})
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
	p := testenv.Proxy(t, cfg)
	oaiCfg := openai.DefaultConfig("unused")
	oaiCfg.BaseURL = p.URL() + "/v1"
	_, err := openai.NewClientWithConfig(oaiCfg).CreateChatCompletion(context.Background(),
		openai.ChatCompletionRequest{Model: "m", Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}}})
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error %v (%T), want an *openai.APIError", err, err)
	}
	if apiErr.HTTPStatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", apiErr.HTTPStatusCode)
	}
	if !strings.HasPrefix(apiErr.Message, "server busy") {
		t.Errorf("message %q, want the node's", apiErr.Message)
	}
}

// rawNode is a node that serves each keep-alive connection itself, so a
// test can make it write bytes that no request asked for.
type rawNode struct {
	ln net.Listener
	// postConns counts the connections that carried a POST.
	postConns atomic.Int64
	// respond, when set, writes the response to the POST that is number
	// i (from 0) on its connection, and reports whether the connection
	// stays open. Otherwise the node writes echoResponse.
	respond func(conn net.Conn, i int, body []byte) bool
	// after, when set, runs on a connection after the first POST response
	// of the node's life is written.
	after func(conn net.Conn)
	once  sync.Once
}

// startRawNode starts a node with model m and the given behaviour.
func startRawNode(t *testing.T, n *rawNode) *rawNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.ln = ln
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go n.serve(conn)
		}
	}()
	return n
}

func (n *rawNode) url() string { return "http://" + n.ln.Addr().String() }

// echoResponse is a response with Content-Length whose body is
// {"echo": body}.
func echoResponse(body []byte) string {
	out, _ := json.Marshal(map[string]string{"echo": string(body)})
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"+
		"Content-Length: %d\r\n\r\n%s", len(out), out)
}

func (n *rawNode) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	posts := 0
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(req.Body)
		if req.Method != http.MethodPost {
			var out string
			switch req.URL.Path {
			case "/api/version":
				out = `{"version":"0.25.0"}`
			case "/api/tags":
				out = `{"models":[{"name":"m:latest","model":"m:latest","size":1,"digest":"d"}]}`
			default:
				out = `{"models":[]}`
			}
			if _, err := fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"+
				"Content-Length: %d\r\n\r\n%s", len(out), out); err != nil {
				return
			}
			continue
		}
		if posts == 0 {
			n.postConns.Add(1)
		}
		posts++
		if n.respond != nil {
			if !n.respond(conn, posts-1, body) {
				return
			}
			continue
		}
		if _, err := io.WriteString(conn, echoResponse(body)); err != nil {
			return
		}
		if n.after != nil {
			n.once.Do(func() { n.after(conn) })
		}
	}
}

// askEcho sends a generate whose prompt is user to the proxy at url and
// returns the response body.
func askEcho(t *testing.T, url, user string) string {
	t.Helper()
	resp := post(t, url+"/api/generate", `{"model":"m","prompt":"`+user+`","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d, want 200; body %s", user, resp.StatusCode, body)
	}
	return string(body)
}

// proxyForRaw starts a proxy in front of node alone.
func proxyForRaw(t *testing.T, node *rawNode) *app.App {
	t.Helper()
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node.url()))
	return testenv.Proxy(t, cfg)
}

// TestUnaskedBytesNeverReachAClient has a node write a whole second
// response on a pooled connection, soon or long after the first. The next
// requests must get their own responses, on another connection, and never
// those bytes.
func TestUnaskedBytesNeverReachAClient(t *testing.T) {
	const smuggled = `{"smuggled":"response"}`
	// Written with the response, the bytes would arrive in the same read
	// and be dropped with the proxy's read buffer. Later, they wait in the
	// socket.
	for _, delay := range []time.Duration{2 * time.Millisecond, 50 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			written := make(chan struct{})
			node := startRawNode(t, &rawNode{after: func(conn net.Conn) {
				time.Sleep(delay)
				_, _ = fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"+
					"Content-Length: %d\r\n\r\n%s", len(smuggled), smuggled)
				close(written)
			}})
			p := proxyForRaw(t, node)
			if got := askEcho(t, p.URL(), "user 1"); !strings.Contains(got, "user 1") {
				t.Fatalf("user 1 got %s", got)
			}
			<-written
			// The unasked bytes wait on the pooled connection from here on.
			for _, user := range []string{"user 2", "user 3"} {
				if got := askEcho(t, p.URL(), user); !strings.Contains(got, user) || strings.Contains(got, "smuggled") {
					t.Errorf("%s got %s, want the echo of its own request", user, got)
				}
			}
			if got := node.postConns.Load(); got < 2 {
				t.Errorf("node served POSTs on %d connections, want the tainted one replaced", got)
			}
		})
	}
}

// TestChunkedResponseKeepsConnection sends requests whose responses are
// chunked, with and without trailers. The proxy reads each to its end and
// reuses the one connection.
func TestChunkedResponseKeepsConnection(t *testing.T) {
	for _, trailer := range []string{"", "X-Checksum: 1\r\n"} {
		t.Run(fmt.Sprintf("trailer %q", trailer), func(t *testing.T) {
			node := startRawNode(t, &rawNode{respond: func(conn net.Conn, _ int, body []byte) bool {
				out, _ := json.Marshal(map[string]string{"echo": string(body)})
				_, err := fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"+
					"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n%s\r\n", len(out), out, trailer)
				return err == nil
			}})
			p := proxyForRaw(t, node)
			for _, user := range []string{"user 1", "user 2", "user 3"} {
				if got := askEcho(t, p.URL(), user); !strings.Contains(got, user) {
					t.Errorf("%s got %s, want the echo of its own request", user, got)
				}
			}
			if got := node.postConns.Load(); got != 1 {
				t.Errorf("node served POSTs on %d connections, want 1", got)
			}
		})
	}
}

// TestIdleTimeout408IsRetried has a node respond to every request after
// the first on a connection with 408 and close it, as a server does that
// closes idle keep-alive connections. The proxy sends the request again
// on a new connection, and the client never sees the 408.
func TestIdleTimeout408IsRetried(t *testing.T) {
	node := startRawNode(t, &rawNode{respond: func(conn net.Conn, i int, body []byte) bool {
		if i > 0 {
			_, _ = io.WriteString(conn, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"+
				"Connection: close\r\n\r\n")
			return false
		}
		_, err := io.WriteString(conn, echoResponse(body))
		return err == nil
	}})
	p := proxyForRaw(t, node)
	for _, user := range []string{"user 1", "user 2", "user 3"} {
		if got := askEcho(t, p.URL(), user); !strings.Contains(got, user) {
			t.Errorf("%s got %s, want the echo of its own request", user, got)
		}
	}
}

// TestStreamThenBufferedResponse alternates streamed responses, which are
// chunked, with buffered ones of known length on one node. A buffered
// response must not wait for the trailer of a chunked body that an
// earlier response on a reused exchange had: such a wait ends at
// upstream.idle and costs the connection.
func TestStreamThenBufferedResponse(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.Upstream.Idle = time.Second
	p := testenv.Proxy(t, cfg)
	conns := map[string]bool{}
	for i := range 5 {
		stream := post(t, p.URL()+"/api/chat",
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":2}}`)
		if body := readBody(t, stream); stream.StatusCode != http.StatusOK || !strings.Contains(string(body), `"done":true`) {
			t.Fatalf("stream %d: status %d, body %s", i, stream.StatusCode, body)
		}
		buffered := post(t, p.URL()+"/api/generate",
			`{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":2}}`)
		if body := readBody(t, buffered); buffered.StatusCode != http.StatusOK {
			t.Fatalf("buffered %d: status %d, body %s", i, buffered.StatusCode, body)
		}
		last, _ := sim.Server().LastRequest("/api/generate")
		conns[last.RemoteAddr] = true
	}
	if len(conns) > 2 {
		t.Errorf("the buffered requests came over %d node connections, want them reused", len(conns))
	}
}

// TestInterimResponsesAreSkipped has a node send informational (1xx)
// responses before its final one. The client gets the final response, and
// the connection stays in step for the next request. A node that switches
// protocols, or that sends too many informational responses, gets a 502.
func TestInterimResponsesAreSkipped(t *testing.T) {
	hints := "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
	tests := []struct {
		name    string
		interim string
		status  int
		message string
	}{
		{"early hints", hints, http.StatusOK, ""},
		{"continue", "HTTP/1.1 100 Continue\r\n\r\n", http.StatusOK, ""},
		{"several", "HTTP/1.1 102 Processing\r\n\r\n" + hints + "HTTP/1.1 100 Continue\r\n\r\n",
			http.StatusOK, ""},
		{"the most allowed", strings.Repeat(hints, 16), http.StatusOK, ""},
		{"too many", strings.Repeat(hints, 17), http.StatusBadGateway,
			"more than 16 informational (1xx) responses before the final response"},
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
			"Connection: Upgrade\r\n\r\n", http.StatusBadGateway,
			"node switched protocols (101), which the proxy does not relay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := startRawNode(t, &rawNode{respond: func(conn net.Conn, _ int, body []byte) bool {
				_, err := io.WriteString(conn, tt.interim+echoResponse(body))
				return err == nil
			}})
			p := proxyForRaw(t, node)
			// A 1xx passed on as the response leaves the client waiting for
			// the final one, which the timeout ends.
			client := &http.Client{Timeout: 10 * time.Second}
			for _, user := range []string{"user 1", "user 2"} {
				resp, err := client.Post(p.URL()+"/api/generate", "application/json",
					strings.NewReader(`{"model":"m","prompt":"`+user+`","stream":false}`))
				if err != nil {
					t.Fatalf("%s: %v", user, err)
				}
				body := string(readBody(t, resp))
				if resp.StatusCode != tt.status {
					t.Fatalf("%s: status %d, want %d; body %s", user, resp.StatusCode, tt.status, body)
				}
				if tt.status == http.StatusOK && !strings.Contains(body, user) {
					t.Errorf("%s got %s, want the echo of its own request", user, body)
				}
				if tt.message != "" && !strings.Contains(body, tt.message) {
					t.Errorf("%s got %s, want the message %q", user, body, tt.message)
				}
			}
		})
	}
}
