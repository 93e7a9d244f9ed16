package proxy_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestPSKeepsLatestExpiry loads "m" on two nodes whose clocks are 100ms
// apart, so their expires_at values differ in fraction length (whole
// seconds against tenths), and checks the proxy keeps the later one.
func TestPSKeepsLatestExpiry(t *testing.T) {
	start := time.Date(2026, 12, 4, 21, 13, 51, 0, time.UTC)
	early := testenv.Sim(t, "m", ollamasim.Config{Now: func() time.Time { return start }})
	late := testenv.Sim(t, "m", ollamasim.Config{
		Now: func() time.Time { return start.Add(100 * time.Millisecond) },
	})
	proxy := testenv.Proxy(t, testenv.Config(t, early, late))

	gen := `{"model":"m","prompt":"x","stream":false,"keep_alive":"5m"}`
	expires := map[string]string{}
	for name, sim := range map[string]*ollamasim.Running{"early": early, "late": late} {
		resp := post(t, sim.URL()+"/api/generate", gen)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("load m on %s node: %d %s", name, resp.StatusCode, body)
		}
		expires[name] = loadedExpiry(t, sim.URL())
	}
	if expires["early"] == expires["late"] {
		t.Fatalf("both nodes report expires_at %q, want different values", expires["early"])
	}

	var got string
	testenv.WaitFor(t, 5*time.Second, "proxy /api/ps to list m", func() bool {
		got = loadedExpiry(t, proxy.URL())
		return got != ""
	})
	if got != expires["late"] {
		t.Errorf("proxy /api/ps expires_at %q, want the later %q (the other node has %q)",
			got, expires["late"], expires["early"])
	}
}

// loadedExpiry returns the expires_at of "m" in the /api/ps list at
// baseURL, or "" when m is not listed.
func loadedExpiry(t *testing.T, baseURL string) string {
	t.Helper()
	resp, err := http.Get(baseURL + "/api/ps")
	if err != nil {
		t.Fatalf("GET %s/api/ps: %v", baseURL, err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/api/ps: %d %s", baseURL, resp.StatusCode, body)
	}
	var list struct {
		Models []struct {
			Name      string `json:"name"`
			ExpiresAt string `json:"expires_at"`
		} `json:"models"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET %s/api/ps: body %s is not a model list: %v", baseURL, body, err)
	}
	for _, m := range list.Models {
		if m.Name == "m" || m.Name == "m:latest" {
			return m.ExpiresAt
		}
	}
	return ""
}
