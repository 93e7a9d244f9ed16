package proxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// profilePaths are routes of the Go runtime profiles, each of which ends
// within about a second.
var profilePaths = []string{
	"/admin/debug/pprof/",
	"/admin/debug/pprof/cmdline",
	"/admin/debug/pprof/goroutine?debug=2",
	"/admin/debug/pprof/heap?gc=1",
	"/admin/debug/pprof/profile?seconds=1",
	"/admin/debug/pprof/trace?seconds=1",
}

// getAdmin sends GET url with the bearer token when token is set, and
// returns the status and body.
func getAdmin(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, readBody(t, resp)
}

// profileProxy starts a proxy over one simulated node, with tune applied
// to its configuration, and returns the base URLs of its client listener
// and, when admin.listen is set, of its admin listener.
func profileProxy(t *testing.T, tune func(*config.Config)) (base, admin string) {
	t.Helper()
	cfg := testenv.Config(t, testenv.Sim(t, "m", ollamasim.Config{}))
	tune(cfg)
	p := testenv.Proxy(t, cfg)
	if cfg.Admin.Listen != "" {
		admin = "http://" + p.AdminAddr()
	}
	return p.URL(), admin
}

// TestProfilesHiddenWithoutToken checks that with neither admin.token nor
// admin.listen set, when every client reaches the admin routes, the
// profiles get the 404 of an unknown admin route while the other admin
// routes are served.
func TestProfilesHiddenWithoutToken(t *testing.T) {
	base, _ := profileProxy(t, func(*config.Config) {})
	for _, path := range profilePaths {
		status, body := getAdmin(t, base+path, "")
		if status != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", path, status)
			continue
		}
		if msg := errorMessage(t, body); !strings.HasPrefix(msg, "unknown admin route GET /admin/debug/pprof/") {
			t.Errorf("%s: error %q, want that of an unknown admin route", path, msg)
		}
	}
	if status, body := getAdmin(t, base+"/admin/nodes", ""); status != http.StatusOK {
		t.Errorf("/admin/nodes: status %d, body %s; want 200", status, body)
	}
}

// TestProfilesServedWithToken checks that with admin.token set, the
// profiles are served to a request with the token and get 401 without it.
func TestProfilesServedWithToken(t *testing.T) {
	const token = "pprof-admin-token"
	base, _ := profileProxy(t, func(c *config.Config) { c.Admin.Token = token })
	for _, path := range profilePaths {
		if status, body := getAdmin(t, base+path, token); status != http.StatusOK {
			t.Errorf("%s with the token: status %d, body %.200s; want 200", path, status, body)
		}
		if status, _ := getAdmin(t, base+path, ""); status != http.StatusUnauthorized {
			t.Errorf("%s without the token: status %d, want 401", path, status)
		}
	}
	status, body := getAdmin(t, base+"/admin/debug/pprof/goroutine?debug=2", token)
	if status != http.StatusOK || !strings.Contains(string(body), "goroutine ") {
		t.Errorf("goroutine?debug=2: status %d, body %.200s; want goroutine stacks", status, body)
	}
}

// TestProfilesServedOnAdminListener checks that with admin.listen set and
// no token, the profiles are served on the admin listener and get 404 on
// the client listener, like every admin route there.
func TestProfilesServedOnAdminListener(t *testing.T) {
	base, admin := profileProxy(t, func(c *config.Config) { c.Admin.Listen = "127.0.0.1:0" })
	for _, path := range profilePaths {
		if status, body := getAdmin(t, admin+path, ""); status != http.StatusOK {
			t.Errorf("admin listener %s: status %d, body %.200s; want 200", path, status, body)
		}
		if status, _ := getAdmin(t, base+path, ""); status != http.StatusNotFound {
			t.Errorf("client listener %s: status %d, want 404", path, status)
		}
	}
}
