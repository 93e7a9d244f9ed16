package proxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
)

// TestAdminWrongMethodGets405 sends each admin route a method that it
// does not serve. The response is 405 with the route's methods in Allow,
// as for Ollama's routes, and a path that is no admin route keeps its 404.
func TestAdminWrongMethodGets405(t *testing.T) {
	const token = "admin-method-token"
	base, _ := profileProxy(t, func(c *config.Config) { c.Admin.Token = token })
	cases := []struct {
		method, path, allow string
	}{
		{"GET", "/admin/cache/purge", "POST"},
		{"DELETE", "/admin/status", "GET, HEAD"},
		{"POST", "/admin/nodes", "GET"},
		{"PUT", "/admin/usage", "GET"},
		{"POST", "/admin/queue", "GET"},
		{"GET", "/admin/nodes/n1/drain", "POST"},
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			req, err := http.NewRequest(c.method, base+c.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("status %d, want 405 (body %s)", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Allow"); got != c.allow {
				t.Errorf("Allow %q, want %q", got, c.allow)
			}
			if msg := errorMessage(t, body); !strings.Contains(msg, "use "+c.allow) {
				t.Errorf("error %q, want it to name %s", msg, c.allow)
			}
		})
	}
	if status, body := getAdmin(t, base+"/admin/nothing", token); status != http.StatusNotFound {
		t.Errorf("/admin/nothing: status %d, body %s; want 404", status, body)
	}
}
