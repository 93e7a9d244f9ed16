package proxy_test

import (
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestModelErrorsMatchOllama checks the errors that the proxy writes itself
// for a body without a model and for a model that no node has. Each has
// the status and the exact body of Ollama's handler for the route, taken
// from Ollama's server/routes.go and middleware.
func TestModelErrorsMatchOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	const messages = `"messages":[{"role":"user","content":"x"}]`
	cases := []struct {
		name, route, body string
		status            int
		want              string
	}{
		{"delete without model", "DELETE /api/delete", `{}`, 400, `{"error":"name \"\" is invalid"}`},
		{"delete invalid name", "DELETE /api/delete", `{"model":"a b"}`, 400,
			`{"error":"name \"a b\" is invalid"}`},
		{"delete unknown", "DELETE /api/delete", `{"model":"nope"}`, 404,
			`{"error":"model 'nope' not found"}`},
		{"copy without source", "POST /api/copy", `{"destination":"x"}`, 400,
			`{"error":"source \"\" is invalid"}`},
		{"copy without either", "POST /api/copy", `{}`, 400, `{"error":"source \"\" is invalid"}`},
		{"copy without destination", "POST /api/copy", `{"source":"m"}`, 400,
			`{"error":"destination \"\" is invalid"}`},
		{"copy unknown source", "POST /api/copy", `{"source":"nope","destination":"x"}`, 404,
			`{"error":"model \"nope\" not found"}`},
		{"pull without model", "POST /api/pull", `{}`, 400, `{"error":"invalid model name"}`},
		{"generate without model", "POST /api/generate", `{"prompt":"x"}`, 404,
			`{"error":"model '' not found"}`},
		{"chat without model", "POST /api/chat", `{` + messages + `}`, 400,
			`{"error":"model is required"}`},
		{"chat unknown", "POST /api/chat", `{"model":"nope",` + messages + `}`, 404,
			`{"error":"model 'nope' not found"}`},
		// EmbedHandler passes an invalid name on to its scheduler, which
		// fails to read the manifest of the unqualified name.
		{"embed without model", "POST /api/embed", `{"input":"x"}`, 500,
			`{"error":"unqualified name: registry.ollama.ai/library/!MISSING!:latest"}`},
		{"embed invalid name", "POST /api/embed", `{"model":"a b","input":"x"}`, 500,
			`{"error":"unqualified name: registry.ollama.ai/library/a b:latest"}`},
		{"embeddings invalid name", "POST /api/embeddings", `{"model":"a b","prompt":"x"}`, 400,
			`{"error":"model is required"}`},
		{"chat invalid name", "POST /api/chat", `{"model":"a b",` + messages + `}`, 400,
			`{"error":"model is required"}`},
		{"generate invalid name", "POST /api/generate", `{"model":"a b","prompt":"x"}`, 404,
			`{"error":"model 'a b' not found"}`},
		{"show without model", "POST /api/show", `{}`, 400, `{"error":"model is required"}`},
		{"show invalid name", "POST /api/show", `{"model":"a b"}`, 500,
			`{"error":"unqualified name: registry.ollama.ai/library/a b:latest"}`},
		{"embed unknown", "POST /api/embed", `{"model":"nope","input":"x"}`, 404,
			`{"error":"model \"nope\" not found, try pulling it first"}`},
		{"embeddings unknown", "POST /api/embeddings", `{"model":"nope","prompt":"x"}`, 404,
			`{"error":"model \"nope\" not found, try pulling it first"}`},
		{"show unknown", "POST /api/show", `{"model":"nope"}`, 404, `{"error":"model 'nope' not found"}`},
		// The /v1 middleware rewrites the handler's error with json.Encoder,
		// which ends it with a newline.
		{"openai completions without model", "POST /v1/completions", `{"prompt":"x"}`, 404,
			`{"error":{"message":"model '' not found","type":"not_found_error","param":null,"code":null}}` +
				"\n"},
		{"openai embeddings unknown", "POST /v1/embeddings", `{"model":"nope","input":"x"}`, 404,
			`{"error":{"message":"model \"nope\" not found, try pulling it first",` +
				`"type":"not_found_error","param":null,"code":null}}` + "\n"},
		{"openai model unknown", "GET /v1/models/nope", ``, 404,
			`{"error":{"message":"model 'nope' not found","type":"not_found_error","param":null,"code":null}}` +
				"\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := send(t, f.proxy.URL(), tc.route, tc.body)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if string(body) != tc.want {
				t.Errorf("body %q, want %q", body, tc.want)
			}
			wantType := "application/json; charset=utf-8"
			if strings.HasPrefix(tc.route, "GET /v1/") || strings.HasPrefix(tc.route, "POST /v1/") {
				wantType = "application/json"
			}
			if got := resp.Header.Get("Content-Type"); got != wantType {
				t.Errorf("Content-Type %q, want %q", got, wantType)
			}
		})
	}
}
