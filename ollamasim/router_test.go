package ollamasim_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestRouterAnswersAsOllama checks what the node's router sends before any
// handler runs, as Ollama v0.17.4 does: Go 1.24's ServeMux redirects an
// unclean path with 301 for every method, and gin answers a known path
// with another method with its 405 text and an Allow header in the order
// in which Ollama registered the methods. HEAD is served only where
// Ollama registers it.
func TestRouterAnswersAsOllama(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	cases := []struct {
		method, path    string
		status          int
		location, allow string
		body            string
	}{
		{"GET", "/api//tags", 301, "/api/tags", "", "<a href=\"/api/tags\">Moved Permanently</a>.\n\n"},
		{"POST", "/api/./chat?x=1", 301, "/api/chat?x=1", "", ""},
		{"GET", "/api/generate", 405, "", "POST", "405 method not allowed"},
		{"PUT", "/api/tags", 405, "", "HEAD, GET", "405 method not allowed"},
		{"HEAD", "/api/ps", 405, "", "GET", ""},
		{"GET", "/nothing", 404, "", "", "404 page not found"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, n.URL()+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Errorf("%d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
			if got := resp.Header.Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
			if got := resp.Header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
}

// TestOpenAIErrorFormsAsOllama checks the two forms of an error on /v1: one
// that Ollama's middleware raises itself has gin's Content-Type and no
// newline, and one from the handler comes through the middleware's
// json.Encoder, with application/json and a newline.
func TestOpenAIErrorFormsAsOllama(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	cases := []struct {
		name, path, body string
		contentType      string
		newline          bool
	}{
		{"bad json", "/v1/chat/completions", `{bad}`, "application/json; charset=utf-8", false},
		{"unknown model", "/v1/chat/completions", `{"model":"x","messages":[{"role":"user","content":"hi"}]}`,
			"application/json", true},
		{"token ids", "/v1/embeddings", `{"model":"nomic-embed-text","input":[1,2]}`, "application/json", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := n.do(t, t.Context(), http.MethodPost, tc.path, tc.body)
			body, _ := io.ReadAll(resp.Body)
			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if got := strings.HasSuffix(string(body), "\n"); got != tc.newline {
				t.Errorf("body %q ends with a newline: %v, want %v", body, got, tc.newline)
			}
		})
	}
}
