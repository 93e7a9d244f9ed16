package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// ollamaAllowHeaders are the request headers that Ollama's CORS
// configuration allows (AllowHeaders in GenerateRoutes, server/routes.go).
var ollamaAllowHeaders = []string{
	"Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
	"OpenAI-Beta", "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
	"x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
	"x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
	"x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
}

// preflight sends the OPTIONS request a browser sends before a POST to
// path with the given request headers, and returns the response.
func preflight(t *testing.T, url, origin string, headers []string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("OPTIONS", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", strings.ToLower(strings.Join(headers, ",")))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	return resp
}

// missingAllowed returns the requested headers that a preflight response
// does not allow, compared without regard to case as browsers do.
func missingAllowed(resp *http.Response, requested []string) []string {
	allowed := map[string]bool{}
	for _, h := range strings.Split(resp.Header.Get("Access-Control-Allow-Headers"), ",") {
		allowed[strings.ToLower(strings.TrimSpace(h))] = true
	}
	var missing []string
	for _, h := range requested {
		if !allowed[strings.ToLower(h)] {
			missing = append(missing, h)
		}
	}
	return missing
}

func TestPreflightAllowsOllamaHeaders(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	// The openai-node SDK sends these on every request.
	sdk := []string{"authorization", "content-type", "x-stainless-retry-count", "x-stainless-timeout",
		"x-stainless-os", "x-stainless-lang"}
	for _, path := range []string{"/v1/chat/completions", "/api/chat", "/v1/audio/transcriptions"} {
		t.Run(path, func(t *testing.T) {
			for _, requested := range [][]string{sdk, ollamaAllowHeaders} {
				resp := preflight(t, f.proxy.URL()+path, "http://localhost:5173", requested)
				if resp.StatusCode != http.StatusNoContent {
					t.Fatalf("status %d, want 204", resp.StatusCode)
				}
				if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://localhost:5173" {
					t.Errorf("Access-Control-Allow-Origin %q, want the origin", got)
				}
				if missing := missingAllowed(resp, requested); len(missing) > 0 {
					t.Errorf("headers %v not allowed by %q", missing,
						resp.Header.Get("Access-Control-Allow-Headers"))
				}
			}
		})
	}
}

// TestDefaultOriginsAsOllama checks the origins that Ollama allows by
// default (AllowedOrigins in envconfig/config.go) and one it does not.
func TestDefaultOriginsAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct {
		origin string
		want   int
	}{
		{"vscode-file://vscode-app", http.StatusOK},
		{"vscode-webview://4f1c8a", http.StatusOK},
		{"tauri://localhost", http.StatusOK},
		{"http://0.0.0.0:8080", http.StatusOK},
		{"https://127.0.0.1", http.StatusOK},
		{"http://[::1]:3000", http.StatusForbidden},
		{"https://localhost.example.com", http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.origin, func(t *testing.T) {
			resp := post(t, f.proxy.URL()+"/api/show", `{"model":"m"}`, "Origin", tc.origin)
			readBody(t, resp)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
			allow := resp.Header.Get("Access-Control-Allow-Origin")
			if tc.want == http.StatusOK && allow != tc.origin {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", allow, tc.origin)
			}
		})
	}
}

// TestSameOriginNotCORS sends a request whose Origin names the Host it was
// sent to, as a browser does for a page served by that host. Ollama's CORS
// middleware lets such a request through without CORS headers.
func TestSameOriginNotCORS(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))
	_, port, _ := strings.Cut(strings.TrimPrefix(p.URL(), "http://"), ":")
	host := "gpu-box.local:" + port
	resp, body := getWithHost(t, p.URL()+"/api/tags", host, "Origin", "http://"+host)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %q, want 200", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("Access-Control-Allow-Origin %q on a same-origin request, want none", got)
	}
}
