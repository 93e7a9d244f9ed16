package proxy_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
)

// badHeadNode starts a node that passes the health probes and lists
// model m, and responds to every other request by writing reply and
// closing the connection. It returns the node's URL.
func badHeadNode(t *testing.T, reply string) string {
	t.Helper()
	mux := probedMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, reply)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// badHeads are responses whose head the proxy cannot read, each with the
// kind of failure that the client's message names and strings of the
// response that the message must not quote.
var badHeads = []struct {
	name, reply, kind string
	quoted            []string
}{
	{"not HTTP", "HELLO I AM NOT HTTP\r\n\r\nzzz", "invalid response head",
		[]string{"HELLO", "zzz"}},
	{"head over the read buffer",
		"HTTP/1.1 200 OK\r\nX-Filler: " + strings.Repeat("filler ", 2000) + "\r\n\r\n{}",
		"response head exceeds 8192 bytes", []string{"X-Filler", "filler"}},
	{"head cut short", "HTTP/1.1 200 OK\r\nX-Partial: abc",
		"connection closed before the end of the response head", []string{"X-Partial", "abc"}},
}

// checkNoNodeBytes fails the test when msg quotes the node's response or
// names its address, and when it lacks the node's name or kind.
func checkNoNodeBytes(t *testing.T, route, msg, kind string, quoted []string, address string) {
	t.Helper()
	if !strings.Contains(msg, "node bad") {
		t.Errorf("%s: error %.300q, want it to name node bad", route, msg)
	}
	if !strings.Contains(msg, kind) {
		t.Errorf("%s: error %.300q, want it to contain %q", route, msg, kind)
	}
	var found []string
	for _, s := range append([]string{"contents", "buffer size", address}, quoted...) {
		if strings.Contains(msg, s) {
			found = append(found, s)
		}
	}
	if len(found) > 0 {
		t.Errorf("%s: error %.300q contains %q", route, msg, found)
	}
}

// TestBadResponseHeadNotQuoted has a node respond with heads that fail
// to read: bytes that are not HTTP, a head over the read buffer and a
// head cut short. The client's error on a routed request and on model
// operations, and on a path that the proxy has no route for, names the
// node and the kind of failure without quoting the node's bytes. The
// access log keeps fasthttp's whole error.
func TestBadResponseHeadNotQuoted(t *testing.T) {
	for _, tc := range badHeads {
		t.Run(tc.name, func(t *testing.T) {
			url := badHeadNode(t, tc.reply)
			address := strings.TrimPrefix(url, "http://")
			cfg := testenv.Config(t)
			nc := config.DefaultNode(url)
			nc.Name = "bad"
			cfg.Nodes = append(cfg.Nodes, nc)
			p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)

			resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"hi","stream":false}`,
				"X-Request-Id", "bad-head-generate")
			msg := ollamaErrorMessage(t, resp, http.StatusBadGateway)
			checkNoNodeBytes(t, "/api/generate", msg, tc.kind, tc.quoted, address)
			logged, _ := accessLine(t, logs, "bad-head-generate")["error"].(string)
			if !strings.Contains(logged, tc.kind) || !strings.Contains(logged, "error when reading response headers") {
				t.Errorf("/api/generate: access log error %.300q, want the kind and fasthttp's error", logged)
			}

			resp = post(t, p.URL()+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			msg = openAIErrorMessage(t, resp, http.StatusBadGateway)
			checkNoNodeBytes(t, "/v1/chat/completions", msg, tc.kind, tc.quoted, address)

			// A path that the proxy has no route for goes to a node too.
			fallback, err := http.Get(p.URL() + "/api/status")
			if err != nil {
				t.Fatal(err)
			}
			msg = ollamaErrorMessage(t, fallback, http.StatusBadGateway)
			checkNoNodeBytes(t, "/api/status", msg, tc.kind, tc.quoted, address)

			resp = post(t, p.URL()+"/api/pull", `{"model":"m","stream":false}`,
				"X-Request-Id", "bad-head-pull")
			msg = ollamaErrorMessage(t, resp, http.StatusInternalServerError)
			checkNoNodeBytes(t, "/api/pull", msg, tc.kind, tc.quoted, address)
			logged, _ = accessLine(t, logs, "bad-head-pull")["error"].(string)
			if !strings.Contains(logged, "error when reading response headers") {
				t.Errorf("/api/pull: access log error %.300q, want fasthttp's error", logged)
			}

			resp = post(t, p.URL()+"/api/pull", `{"model":"m"}`)
			body := readBody(t, resp)
			lines := strings.Split(strings.TrimSpace(string(body)), "\n")
			msg = errorMessage(t, []byte(lines[len(lines)-1]))
			checkNoNodeBytes(t, "streamed /api/pull", msg, tc.kind, tc.quoted, address)

			req, err := http.NewRequest("DELETE", p.URL()+"/api/delete", strings.NewReader(`{"model":"m"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg = ollamaErrorMessage(t, resp, http.StatusInternalServerError)
			checkNoNodeBytes(t, "/api/delete", msg, tc.kind, tc.quoted, address)
		})
	}
}

// TestInvalidEmbeddingNotQuoted serves part of an embedding request from
// the cache and has the node respond to the rest with a body that is not
// JSON. The client's 502 names the node without quoting the body, and the
// access log keeps the parser's error.
func TestInvalidEmbeddingNotQuoted(t *testing.T) {
	const garbage = "HELLO I AM NOT JSON zzz"
	var calls atomic.Int64
	url := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if calls.Add(1) == 1 {
			_, _ = io.WriteString(w, `{"model":"m","embeddings":[[0.1,0.2]],`+
				`"total_duration":1,"load_duration":1,"prompt_eval_count":1}`)
			return
		}
		_, _ = io.WriteString(w, garbage)
	})
	cfg := testenv.Config(t)
	nc := config.DefaultNode(url)
	nc.Name = "bad"
	cfg.Nodes = append(cfg.Nodes, nc)
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)

	if _, res := embedRaw(t, p.URL()+"/api/embed", `{"model":"m","input":["a"]}`); res != "miss" {
		t.Fatalf("first embedding: cache %q, want miss", res)
	}
	resp := post(t, p.URL()+"/api/embed", `{"model":"m","input":["a","b"]}`,
		"X-Request-Id", "bad-embedding")
	if got := cacheHeader(resp); got != "partial" {
		t.Errorf("second embedding: cache %q, want partial", got)
	}
	msg := ollamaErrorMessage(t, resp, http.StatusBadGateway)
	checkNoNodeBytes(t, "/api/embed", msg, "invalid embedding response",
		[]string{"HELLO", "zzz", "cannot parse"}, strings.TrimPrefix(url, "http://"))
	logged, _ := accessLine(t, logs, "bad-embedding")["error"].(string)
	if !strings.Contains(logged, "invalid embedding response") || !strings.Contains(logged, "HELLO") {
		t.Errorf("access log error %.300q, want the parser's error", logged)
	}
}
