package proxy_test

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// rebindHost is a Host that a DNS rebinding page sends: a foreign name
// that resolves to the proxy's loopback address.
const rebindHost = "rebind.attacker.example:11434"

// getWithHost sends GET url with the given Host header and extra header
// pairs, and returns the response with its body.
func getWithHost(t *testing.T, url, host string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s with Host %q: %v", url, host, err)
	}
	return resp, readBody(t, resp)
}

func TestForeignHostRejectedOnLoopback(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))

	for _, path := range []string{"/", "/api/tags", "/api/ps", "/api/version", "/v1/models",
		"/admin/status", "/metrics", "/healthz"} {
		resp, body := getWithHost(t, p.URL()+path, rebindHost)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s with Host %s: status %d, want 403", path, rebindHost, resp.StatusCode)
		}
		if len(body) != 0 {
			t.Errorf("%s with Host %s: body %q, want it empty", path, rebindHost, body)
		}
	}
}

func TestLocalHostsAllowedOnLoopback(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))
	port := p.URL()[strings.LastIndexByte(p.URL(), ':')+1:]

	hosts := []string{
		strings.TrimPrefix(p.URL(), "http://"),
		"localhost:" + port,
		"LocalHost",
		"[::1]:" + port,
		"0.0.0.0:" + port,
		"192.168.1.20:" + port,
		"10.0.0.7",
		"app.localhost:" + port,
		"nas.local",
		"host.docker.internal:" + port,
	}
	if hostname, err := os.Hostname(); err == nil && hostname != "" {
		hosts = append(hosts, hostname+":"+port)
	}
	for _, host := range hosts {
		resp, body := getWithHost(t, p.URL()+"/api/tags", host)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Host %q: status %d, want 200 (body %s)", host, resp.StatusCode, body)
		}
	}
}

func TestHostCheckKeepsCORS(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, a))
	local := strings.TrimPrefix(p.URL(), "http://")

	resp, _ := getWithHost(t, p.URL()+"/api/tags", local, "Origin", "http://localhost:3000")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("local Host and origin: status %d, want 200", resp.StatusCode)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://localhost:3000" {
		t.Errorf("local Host and origin: Access-Control-Allow-Origin %q, want the origin", got)
	}

	resp, _ = getWithHost(t, p.URL()+"/api/tags", local, "Origin", "https://evil.example")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("local Host, foreign origin: status %d, want 403", resp.StatusCode)
	}

	resp, _ = getWithHost(t, p.URL()+"/api/tags", rebindHost, "Origin", "http://localhost:3000")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host, local origin: status %d, want 403", resp.StatusCode)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("foreign Host: Access-Control-Allow-Origin %q, want none", got)
	}
}

func TestForeignHostRejectedOnAdminListener(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	cfg.Admin.Listen = "127.0.0.1:0"
	p := testenv.Proxy(t, cfg)
	admin := "http://" + p.AdminAddr()

	for _, path := range []string{"/admin/status", "/metrics", "/healthz"} {
		resp, body := getWithHost(t, admin+path, rebindHost)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("admin %s with Host %s: status %d, want 403", path, rebindHost, resp.StatusCode)
		}
		if len(body) != 0 {
			t.Errorf("admin %s with Host %s: body %q, want it empty", path, rebindHost, body)
		}

		resp, body = getWithHost(t, admin+path, p.AdminAddr())
		if resp.StatusCode != http.StatusOK {
			t.Errorf("admin %s with Host %s: status %d, want 200 (body %s)",
				path, p.AdminAddr(), resp.StatusCode, body)
		}
	}
}
