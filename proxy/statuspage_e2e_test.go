package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestStatusPageInBrowser loads the admin page of a running proxy in
// headless Chromium and checks that it shows the live nodes.
func TestStatusPageInBrowser(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium not found (make deps installs it): %v", err)
		}
		t.Skip("chromium not found; make deps installs it")
	}
	a := testenv.Sim(t, "m", ollamasim.Config{})
	b := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a, b)
	cfg.Admin.Token = "s3cret-admin"
	p := testenv.Proxy(t, cfg)
	readBody(t, post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"x","stream":false}`))
	if err := b.Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "n1 down", func() bool { return !p.Balancer().Node("n1").Up() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000",
		"--dump-dom", p.URL()+"/admin#token=s3cret-admin")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	for _, want := range []string{"n0", "n1", "up", "down", "m:latest"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page does not show %q", want)
		}
	}
	if strings.Contains(dom, "Disconnected") && !strings.Contains(dom, "hidden") {
		t.Error("the page shows it is disconnected")
	}
}
