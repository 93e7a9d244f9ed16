package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestAccessLogNamesProxyErrors(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p, log := startLoggedProxy(t, testenv.Config(t, a))
	base := p.URL()

	cases := []struct {
		name, method, path, body string
		status                   int
		message                  string
	}{
		{"invalid JSON", "POST", "/api/generate", "{bad", 400, "invalid character 'b' looking for beginning of object key string"},
		{"unknown model", "POST", "/api/generate", `{"model":"nope","prompt":"x"}`, 404, `model 'nope' not found`},
		{"invalid JSON on /v1", "POST", "/v1/chat/completions", "{bad", 400,
			"invalid character 'b' looking for beginning of object key string"},
		{"unknown path", "GET", "/nope", "", 404, "404 page not found"},
		// A path under /v1/ goes to a node, whose 404 the log quotes.
		{"unknown /v1 path", "GET", "/v1/nope", "", 404, "404 page not found"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := "errlog-" + string(rune('a'+i))
			req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Request-Id", id)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			line := accessLine(t, log, id)
			msg, _ := line["error"].(string)
			if !strings.Contains(msg, c.message) {
				t.Errorf("access log error = %q, want it to contain %q", msg, c.message)
			}
		})
	}
}
