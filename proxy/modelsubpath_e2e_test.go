package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestModelSubpathIsNotFound sends GET /v1/models/{model} with a name that
// contains a slash, raw and escaped, where only one of three nodes has
// the model. Ollama's route takes one path segment, so every request gets
// the same 404 of Ollama's router (gin's plain text) from the proxy, and
// no node receives it. A
// name of one segment that only that node has is found every time.
func TestModelSubpathIsNotFound(t *testing.T) {
	sims := []*ollamasim.Running{
		testenv.Sim(t, "m", ollamasim.Config{}),
		testenv.Sim(t, "m", ollamasim.Config{}),
		testenv.Sim(t, "m,solo,user/custom:v1", ollamasim.Config{}),
	}
	p := testenv.Proxy(t, testenv.Config(t, sims...))
	modelRequests := func() int64 {
		var total int64
		for _, s := range sims {
			total += s.Server().Requests("/v1/models/{model}")
		}
		return total
	}

	for _, path := range []string{
		"/v1/models/user/custom:v1",
		"/v1/models/user%2Fcustom:v1",
		"/v1/models/user%2fcustom:v1",
		"/v1/models/library/m",
		"/v1/models/library%2Fm",
	} {
		t.Run(path, func(t *testing.T) {
			for i := range 6 {
				resp, err := http.Get(p.URL() + path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNotFound || string(body) != "404 page not found" ||
					resp.Header.Get("Content-Type") != "text/plain" {
					t.Errorf("request %d: %d %q %q, want Ollama's 404 page not found as text/plain",
						i, resp.StatusCode, resp.Header.Get("Content-Type"), body)
				}
				if got := resp.Header.Get("X-LLMProxy-Node"); got != "" {
					t.Errorf("request %d: X-LLMProxy-Node %q, want none", i, got)
				}
			}
			if got := modelRequests(); got != 0 {
				t.Errorf("nodes received %d requests for /v1/models/{model}, want 0", got)
			}
		})
	}

	t.Run("one segment", func(t *testing.T) {
		for i := range 6 {
			status, body := getAs(t, p.URL()+"/v1/models/solo", "")
			if status != http.StatusOK {
				t.Fatalf("request %d: status %d, body %s; want 200", i, status, body)
			}
			var model struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			}
			if err := json.Unmarshal(body, &model); err != nil {
				t.Fatalf("request %d: body %s: %v", i, body, err)
			}
			if model.ID != "solo" || model.Object != "model" {
				t.Errorf("request %d: body %s, want the model solo", i, body)
			}
		}
	})
}
