package proxy_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// messagesBody is a valid Anthropic Messages request for model m.
const messagesBody = `{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`

// anthropicError is Ollama's anthropic.ErrorResponse. The tests decode it
// with unknown fields disallowed, so that a body in another shape fails.
type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
	RequestID *string `json:"request_id"`
}

// decodeAnthropicError decodes body as an Anthropic error and checks its
// top-level type.
func decodeAnthropicError(t *testing.T, body []byte) anthropicError {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var e anthropicError
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("body %s is not Anthropic's error shape: %v", body, err)
	}
	if e.Type != "error" {
		t.Errorf("body %s: type %q, want \"error\"", body, e.Type)
	}
	if e.Error.Message == "" {
		t.Errorf("body %s: empty error.message", body)
	}
	return e
}

// anthropicErrorOf checks that resp has status, Content-Type
// application/json and Anthropic's error shape with error type typ, and
// that request_id is the response's X-Request-Id with the "req_" prefix.
// It returns the message.
func anthropicErrorOf(t *testing.T, resp *http.Response, status int, typ string) string {
	t.Helper()
	return anthropicErrorAs(t, resp, status, typ, "application/json")
}

// anthropicErrorAs is anthropicErrorOf for an error with the Content-Type
// contentType. An error of Ollama's middleware itself, such as a body that
// does not decode, has gin's, with a charset and no newline after the
// object; an error that reaches it from the handler, or one of the
// proxy's own, has application/json and a newline (json.Encoder).
func anthropicErrorAs(t *testing.T, resp *http.Response, status int, typ, contentType string) string {
	t.Helper()
	body := errorBody(t, resp, status)
	if ct := resp.Header.Get("Content-Type"); ct != contentType {
		t.Errorf("Content-Type %q, want %q", ct, contentType)
	}
	if newline := strings.HasSuffix(string(body), "\n"); newline != (contentType == "application/json") {
		t.Errorf("body %q: ends with a newline %v, want %v", body, newline, !newline)
	}
	e := decodeAnthropicError(t, body)
	if e.Error.Type != typ {
		t.Errorf("body %s: error.type %q, want %q", body, e.Error.Type, typ)
	}
	id := resp.Header.Get("X-Request-Id")
	if id == "" {
		t.Errorf("response has no X-Request-Id")
	}
	if e.RequestID == nil || *e.RequestID != "req_"+id {
		t.Errorf("body %s: request_id is not \"req_\" + X-Request-Id %q", body, id)
	}
	return e.Error.Message
}

// TestAnthropicProxyErrors checks the errors the proxy makes itself on
// /v1/messages: each has Anthropic's shape and the type that Anthropic's
// API gives its status.
func TestAnthropicProxyErrors(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.MaxBodyBytes = 4096
	p := testenv.Proxy(t, cfg)
	cases := []struct {
		name, method, path, body string
		status                   int
		typ                      string
		// contains is a part of the expected message.
		contains    string
		contentType string
	}{
		{"unknown model", "POST", "/v1/messages", strings.Replace(messagesBody, `"m"`, `"nope"`, 1),
			404, "not_found_error", `model 'nope' not found`, "application/json"},
		{"malformed json", "POST", "/v1/messages", `{"model":`, 400, "invalid_request_error", "unexpected EOF",
			"application/json; charset=utf-8"},
		{"missing model", "POST", "/v1/messages", `{"messages":[]}`, 400, "invalid_request_error",
			"model is required", "application/json; charset=utf-8"},
		{"body over max_body_bytes", "POST", "/v1/messages",
			`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 8192) + `"}]}`,
			413, "request_too_large", "max_body_bytes", "application/json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, p.URL()+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg := anthropicErrorAs(t, resp, tc.status, tc.typ, tc.contentType)
			if !strings.Contains(msg, tc.contains) {
				t.Errorf("message %q does not contain %q", msg, tc.contains)
			}
		})
	}
	t.Run("client request id", func(t *testing.T) {
		resp := post(t, p.URL()+"/v1/messages", `{"model":`, "X-Request-Id", "abc-1")
		anthropicErrorAs(t, resp, 400, "invalid_request_error", "application/json; charset=utf-8")
	})
	t.Run("method not allowed", func(t *testing.T) {
		// gin's own 405, before Ollama's middleware runs.
		req, _ := http.NewRequest("GET", p.URL()+"/v1/messages", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != 405 || string(body) != "405 method not allowed" ||
			resp.Header.Get("Allow") != "POST" {
			t.Errorf("%d %q Allow %q, want gin's 405", resp.StatusCode, body, resp.Header.Get("Allow"))
		}
	})
	t.Run("unknown path under /v1/messages", func(t *testing.T) {
		// The path goes to a node, which may serve it in a newer version,
		// and the node's 404 comes back as Ollama sends it.
		resp := post(t, p.URL()+"/v1/messages/count_tokens", messagesBody)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusNotFound || string(body) != "404 page not found" {
			t.Errorf("status %d, body %q; want the node's 404", resp.StatusCode, body)
		}
		if resp.Header.Get("X-LLMProxy-Node") == "" {
			t.Error("no X-LLMProxy-Node header, want the node that answered")
		}
	})
}

// TestAnthropicLimitErrors checks the 401, 403 and 429 of the key checks
// on /v1/messages.
func TestAnthropicLimitErrors(t *testing.T) {
	sim := testenv.Sim(t, "m,other", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.Auth.Required = true
	onlyOther := limitKey("only-other")
	onlyOther.AllowedModels = []string{"other"}
	slow := limitKey("slow")
	slow.RequestsPerSec = 0.001
	slow.Burst = 1
	cfg.Auth.Keys = []config.Key{onlyOther, slow}
	p := testenv.Proxy(t, cfg)
	url := p.URL() + "/v1/messages"

	t.Run("missing key", func(t *testing.T) {
		msg := anthropicErrorOf(t, post(t, url, messagesBody), 401, "authentication_error")
		if !strings.Contains(msg, "missing API key") {
			t.Errorf("message %q does not name the missing key", msg)
		}
	})
	t.Run("wrong x-api-key", func(t *testing.T) {
		anthropicErrorOf(t, post(t, url, messagesBody, "X-API-Key", "wrong"), 401, "authentication_error")
	})
	t.Run("model not allowed", func(t *testing.T) {
		resp := post(t, url, messagesBody, "X-API-Key", secretOf("only-other"))
		anthropicErrorOf(t, resp, 403, "permission_error")
	})
	t.Run("rate limit", func(t *testing.T) {
		// The first request takes the burst, whatever the node responds.
		readBody(t, post(t, url, messagesBody, "X-API-Key", secretOf("slow")))
		resp := post(t, url, messagesBody, "X-API-Key", secretOf("slow"))
		msg := anthropicErrorOf(t, resp, 429, "rate_limit_error")
		if !strings.Contains(msg, "rate limit exceeded") {
			t.Errorf("message %q does not say that the rate limit is exceeded", msg)
		}
	})
}

// TestAnthropicNoNodeIs503 checks the 503 for a model that no healthy
// node can serve.
func TestAnthropicNoNodeIs503(t *testing.T) {
	down := testenv.Sim(t, "m", ollamasim.Config{})
	if err := down.Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	p := testenv.Proxy(t, testenv.Config(t, down))
	resp := post(t, p.URL()+"/v1/messages", messagesBody)
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("no Retry-After header")
	}
	msg := anthropicErrorOf(t, resp, 503, "overloaded_error")
	if !strings.Contains(msg, "no healthy node") {
		t.Errorf("message %q does not say that no healthy node is available", msg)
	}
}

// TestAnthropicNodeErrorShape relays a node's error responses on
// /v1/messages. A body in Anthropic's shape passes unchanged, and any
// other body is rewrapped with the node's status and message.
func TestAnthropicNodeErrorShape(t *testing.T) {
	anthropicBody := `{"type":"error","error":{"type":"overloaded_error","message":"node busy"},"request_id":"req_node1"}`
	cases := []struct {
		name        string
		status      int
		contentType string
		body        string
		typ, msg    string
	}{
		{"plain text", 500, "text/plain", "upstream is restarting\n",
			"api_error", "node returned status 500: upstream is restarting"},
		{"html page", 502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>",
			"api_error", "node returned status 502"},
		{"ollama error", 503, "application/json", `{"error":"server busy"}`,
			"overloaded_error", "server busy"},
		{"openai error", 500, "application/json",
			`{"error":{"message":"model crashed","type":"api_error","param":null,"code":null}}`,
			"api_error", "model crashed"},
		{"route missing on the node", 404, "text/plain", "404 page not found",
			"not_found_error", "node returned status 404: 404 page not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			cfg := testenv.Config(t)
			cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
			p := testenv.Proxy(t, cfg)
			resp := post(t, p.URL()+"/v1/messages", messagesBody)
			if got := anthropicErrorOf(t, resp, tc.status, tc.typ); got != tc.msg {
				t.Errorf("message %q, want %q", got, tc.msg)
			}
		})
	}
	t.Run("anthropic error", func(t *testing.T) {
		node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(529)
			_, _ = io.WriteString(w, anthropicBody)
		})
		cfg := testenv.Config(t)
		cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
		p := testenv.Proxy(t, cfg)
		body := errorBody(t, post(t, p.URL()+"/v1/messages", messagesBody), 529)
		if string(body) != anthropicBody {
			t.Errorf("body %s, want the node's body %s unchanged", body, anthropicBody)
		}
	})
}

// sseHead is the head of a chunked SSE response, as Ollama sends for a
// streamed /v1/messages.
const sseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" +
	"Transfer-Encoding: chunked\r\n\r\n"

// TestAnthropicCutStreamEndsWithErrorEvent has a node close the
// connection after the first event of a streamed /v1/messages. The client
// gets that event and then an Anthropic error event.
func TestAnthropicCutStreamEndsWithErrorEvent(t *testing.T) {
	first := "event: message_start\ndata: " +
		`{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m",` +
		`"content":[],"usage":{"input_tokens":1,"output_tokens":0}}}` + "\n\n"
	node := hijackedNode(t, func(conn net.Conn) {
		_, _ = io.WriteString(conn, sseHead+chunk(first))
	})
	cfg := testenv.Config(t)
	nc := config.DefaultNode(node)
	nc.Name = "cutter"
	cfg.Nodes = append(cfg.Nodes, nc)
	p := testenv.Proxy(t, cfg)

	resp := post(t, p.URL()+"/v1/messages", strings.Replace(messagesBody, "{", `{"stream":true,`, 1))
	body := string(readBody(t, resp))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 for a stream that started; body %s", resp.StatusCode, body)
	}
	rest, ok := strings.CutPrefix(body, first)
	if !ok {
		t.Fatalf("body %q does not start with the node's first event", body)
	}
	data, ok := strings.CutPrefix(rest, "event: error\ndata: ")
	if !ok {
		t.Fatalf("after the first event %q, want an \"event: error\" line and its data", rest)
	}
	data, ok = strings.CutSuffix(data, "\n\n")
	if !ok || strings.Contains(data, "\n") {
		t.Fatalf("error event data %q, want one line that ends the event with a blank line", data)
	}
	e := decodeAnthropicError(t, []byte(data))
	if e.Error.Type != "api_error" {
		t.Errorf("error.type %q, want api_error", e.Error.Type)
	}
	if !strings.Contains(e.Error.Message, "node cutter failed during the response") {
		t.Errorf("message %q does not name the node that failed", e.Error.Message)
	}
	if e.RequestID != nil {
		t.Errorf("error event has request_id %q, want none as in Ollama's stream error event", *e.RequestID)
	}
}
