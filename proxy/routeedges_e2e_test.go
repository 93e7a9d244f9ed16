package proxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// noRedirects is a client that returns redirects instead of following them.
var noRedirects = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// TestTrailingSlashRedirects sends paths with a trailing slash or an empty
// parameter and expects what Ollama's router (gin 1.10 with
// RedirectTrailingSlash, as Ollama configures it) sends for them.
func TestTrailingSlashRedirects(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct {
		method, path string
		status       int
		location     string
		body         string
	}{
		{"GET", "/v1/models/", 301, "/v1/models", "<a href=\"/v1/models\">Moved Permanently</a>.\n\n"},
		{"GET", "/v1/models/?limit=2", 301, "/v1/models?limit=2",
			"<a href=\"/v1/models?limit=2\">Moved Permanently</a>.\n\n"},
		{"GET", "/api/tags/", 301, "/api/tags", "<a href=\"/api/tags\">Moved Permanently</a>.\n\n"},
		{"GET", "/v1/models/m/", 301, "/v1/models/m", "<a href=\"/v1/models/m\">Moved Permanently</a>.\n\n"},
		{"POST", "/api/generate/", 307, "/api/generate", ""},
		{"POST", "/v1/chat/completions/", 307, "/v1/chat/completions", ""},
		{"DELETE", "/api/delete/", 307, "/api/delete", ""},
		{"POST", "/api/blobs/sha256:abc/", 307, "/api/blobs/sha256:abc", ""},
		// Paths that no route of the method serves, with or without the
		// slash, go to a node, which sends its 404.
		{"GET", "/api/generate/", 404, "", "404 page not found"},
		{"POST", "/api/blobs/", 404, "", "404 page not found"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, f.proxy.URL()+tc.path, strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noRedirects.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
			if string(body) != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if tc.status == 301 {
				if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
					t.Errorf("Content-Type %q, want text/html; charset=utf-8", ct)
				}
			}
		})
	}

	t.Run("client follows to the route", func(t *testing.T) {
		// Go's client repeats a 307 with the same method and body.
		resp := post(t, f.proxy.URL()+"/api/chat/",
			`{"model":"m","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		var chat api.ChatResponse
		if err := json.Unmarshal(body, &chat); err != nil || !chat.Done {
			t.Errorf("body %s, want a finished chat response (%v)", body, err)
		}
	})

	t.Run("method not allowed", func(t *testing.T) {
		req, _ := http.NewRequest("GET", f.proxy.URL()+"/api/generate", nil)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("status %d, want 405", resp.StatusCode)
		}
		if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "POST") ||
			strings.Contains(allow, "GET") {
			t.Errorf("Allow %q, want POST and not GET", allow)
		}
		if codes := requestCodes(t, f.proxy, "/api/generate"); codes["405"] != 1 {
			t.Errorf("405s counted under route /api/generate: %v, want 1", codes["405"])
		}
	})
}

// anyErrorMessage returns the message of an error body in Ollama's,
// OpenAI's or Anthropic's shape.
func anyErrorMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Error) == 0 {
		t.Fatalf("body %q is not an error object: %v", body, err)
	}
	var msg string
	if json.Unmarshal(e.Error, &msg) == nil {
		return msg
	}
	var nested struct{ Message string }
	if err := json.Unmarshal(e.Error, &nested); err != nil {
		t.Fatalf("error %s has no message: %v", e.Error, err)
	}
	return nested.Message
}

// TestMissingModelAsOllama sends bodies without a model to every route
// that takes one. Each gets the status and message of Ollama's handler for
// that route (server/routes.go and the /v1 middleware of Ollama).
func TestMissingModelAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	user := `[{"role":"user","content":"hi"}]`
	cases := []struct {
		route, body string
		status      int
		msg         string
	}{
		{"POST /api/generate", `{"prompt":"hi"}`, 404, "model '' not found"},
		{"POST /api/chat", `{"messages":` + user + `}`, 400, "model is required"},
		{"POST /api/embed", `{"input":"hi"}`, 500,
			"unqualified name: registry.ollama.ai/library/!MISSING!:latest"},
		{"POST /api/embeddings", `{"prompt":"hi"}`, 400, "model is required"},
		{"POST /api/show", `{}`, 400, "model is required"},
		{"POST /api/push", `{}`, 400, "model is required"},
		{"POST /api/pull", `{}`, 400, "invalid model name"},
		{"DELETE /api/delete", `{}`, 400, `name "" is invalid`},
		{"POST /api/copy", `{"destination":"x"}`, 400, `source "" is invalid`},
		{"POST /api/copy", `{"source":"m"}`, 400, `destination "" is invalid`},
		{"POST /v1/completions", `{"prompt":"hi"}`, 404, "model '' not found"},
		{"POST /v1/embeddings", `{"input":"hi"}`, 500,
			"unqualified name: registry.ollama.ai/library/!MISSING!:latest"},
		{"POST /v1/chat/completions", `{"messages":` + user + `}`, 400, "model is required"},
		{"POST /v1/responses", `{"input":"hi"}`, 400, "model is required"},
		{"POST /v1/messages", `{"max_tokens":5,"messages":` + user + `}`, 400, "model is required"},
	}
	for _, tc := range cases {
		t.Run(tc.route+" "+tc.body, func(t *testing.T) {
			resp, body := send(t, f.proxy.URL(), tc.route, tc.body)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (body %s)", resp.StatusCode, tc.status, body)
			}
			if got := anyErrorMessage(t, body); got != tc.msg {
				t.Errorf("message %q, want %q", got, tc.msg)
			}
		})
	}
}
