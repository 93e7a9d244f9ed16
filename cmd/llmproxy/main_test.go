package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// buildBinary builds llmproxy once per test run.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "llmproxy-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "llmproxy")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeConfig(t *testing.T, path, listen string, nodes ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nshutdown_timeout: 20s\nhealth:\n  interval: 200ms\n", listen)
	b.WriteString("discovery:\n  interval: 200ms\nrate_limit:\n  per_address: 0\n  burst: 0\n")
	// least_conn spreads sequential requests, so a new node shows at once.
	b.WriteString("balancer:\n  policy: least_conn\nnodes:\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, "  - name: n%d\n    url: %s\n    max_concurrent: 32\n", i, n)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// daemon is the llmproxy binary running under test.
type daemon struct {
	cmd    *exec.Cmd
	url    string
	stderr *testenv.LogBuffer
	done   chan error
}

func startDaemon(t *testing.T, cfgPath, listen string) *daemon {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{url: "http://" + listen, stderr: &testenv.LogBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(bin, "serve", "-config", cfgPath)
	d.cmd.Stderr = d.stderr
	d.cmd.Env = append(os.Environ(), "LLMPROXY_LOG_LEVEL=info")
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
	})
	testenv.WaitFor(t, 15*time.Second, "llmproxy to serve", func() bool {
		resp, err := http.Get(d.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return d
}

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	writeConfig(t, good, "127.0.0.1:0", "http://127.0.0.1:1")
	var out, errOut bytes.Buffer
	if code := run([]string{"validate", "-config", good}, &out, &errOut); code != 0 {
		t.Fatalf("valid config: exit %d, %s", code, errOut.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("nodes:\n  - url: gpu1:11434\n    max_concurent: 2\nlisten: nope\n"), 0o600)
	errOut.Reset()
	if code := run([]string{"validate", "-config", bad}, &out, &errOut); code != 1 {
		t.Fatalf("invalid config: exit %d, want 1", code)
	}
	for _, want := range []string{"line 2", "missing scheme", "line 3", "max_concurent", "did you mean max_concurrent", "listen"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("validate output lacks %q:\n%s", want, errOut.String())
		}
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errOut); code != 0 {
		t.Errorf("version: exit %d, want 0", code)
	}
	if !strings.HasPrefix(out.String(), "llmproxy ") {
		t.Errorf("version output %q, want prefix %q", out.String(), "llmproxy ")
	}
}

func TestSigtermLetsStreamsFinish(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 30, MinTokens: 40, MaxTokens: 40, Parallel: 32})
	listen := freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "llmproxy.yaml")
	writeConfig(t, cfgPath, listen, sim.URL())
	d := startDaemon(t, cfgPath, listen)

	const streams = 20
	results := make(chan string, streams)
	started := make(chan struct{}, streams)
	for i := 0; i < streams; i++ {
		go func() {
			resp, err := http.Post(d.url+"/api/chat", "application/json",
				strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"story"}]}`))
			if err != nil {
				results <- "request: " + err.Error()
				started <- struct{}{}
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			first := true
			last := ""
			for sc.Scan() {
				if first {
					started <- struct{}{}
					first = false
				}
				last = sc.Text()
			}
			if strings.Contains(last, `"done":true`) {
				results <- "done"
			} else {
				results <- "cut: " + last
			}
		}()
	}
	for i := 0; i < streams; i++ {
		<-started
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused while the streams finish.
	testenv.WaitFor(t, 5*time.Second, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", listen, 100*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	for i := 0; i < streams; i++ {
		if r := <-results; r != "done" {
			t.Errorf("stream %d: %s", i, r)
		}
	}
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("exit: %v, want 0\n%s", err, d.stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("llmproxy did not exit after SIGTERM")
	}
}

func TestReloadKeepsServingAndAddsNodes(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	b := testenv.Sim(t, "m", ollamasim.Config{})
	listen := freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "llmproxy.yaml")
	writeConfig(t, cfgPath, listen, a.URL())
	d := startDaemon(t, cfgPath, listen)

	// A typo: the proxy keeps its configuration and logs the key and line.
	typo := "listen: " + listen + "\nnodes:\n  - url: " + a.URL() + "\n    max_concurent: 2\n"
	if err := os.WriteFile(cfgPath, []byte(typo), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	testenv.WaitFor(t, 5*time.Second, "the rejected reload to be logged", func() bool {
		log := d.stderr.String()
		return strings.Contains(log, "reload rejected") && strings.Contains(log, "line 4") &&
			strings.Contains(log, "max_concurent")
	})
	if code := generate(t, d.url); code != 200 {
		t.Fatalf("after a rejected reload: status %d", code)
	}

	// A node added to the file takes traffic without a signal.
	writeConfig(t, cfgPath, listen, a.URL(), b.URL())
	testenv.WaitFor(t, 10*time.Second, "the new node to take traffic", func() bool {
		generate(t, d.url)
		return b.Server().Requests("/api/generate") > 0
	})
}

// TestReloadLogsWarnings adds a write_timeout under a second to the file
// of a running proxy and sends SIGHUP. The reload logs the warning about it.
func TestReloadLogsWarnings(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	listen := freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "llmproxy.yaml")
	writeConfig(t, cfgPath, listen, sim.URL())
	d := startDaemon(t, cfgPath, listen)

	const warning = `msg="risky configuration" warning="write_timeout: 300ms is under a second`
	if strings.Contains(d.stderr.String(), warning) {
		t.Fatalf("the start logged the warning about a write_timeout it does not have:\n%s",
			d.stderr.String())
	}
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("write_timeout: 300ms\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the reload to log the write_timeout warning", func() bool {
		return strings.Contains(d.stderr.String(), warning)
	})
}

func generate(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Post(url+"/api/generate", "application/json",
		strings.NewReader(`{"model":"m","prompt":"x","stream":false,"options":{"num_predict":2}}`))
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

var _ = context.Background

// TestRedisClientLogsFollowFormat checks that the Redis client's own
// messages, which serve installs with redis.SetLogger, become lines of the
// proxy's JSON log.
func TestRedisClientLogsFollowFormat(t *testing.T) {
	var buf bytes.Buffer
	cfg := &config.Config{Log: config.Log{Format: "json", Level: "info"}}
	newRedisLog(newLogger(cfg, &buf)).Printf(context.Background(),
		"redis: connection pool: failed to dial after %d attempts: %v", 5, "connection refused")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line %q is not JSON: %v", buf.String(), err)
	}
	if rec["msg"] != "redis client" || rec["level"] != "WARN" {
		t.Errorf("message %v at level %v, want redis client at WARN", rec["msg"], rec["level"])
	}
	if msg, _ := rec["message"].(string); !strings.Contains(msg, "after 5 attempts: connection refused") {
		t.Errorf("message field %q lacks the client's text", msg)
	}
}

// TestRedisClientLogsLimited checks that a Redis outage, in which the
// client reports every failed dial, logs one warn line per
// redisLogInterval and the rest at debug level.
func TestRedisClientLogsLimited(t *testing.T) {
	var buf bytes.Buffer
	cfg := &config.Config{Log: config.Log{Format: "json", Level: "debug"}}
	r := newRedisLog(newLogger(cfg, &buf))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }
	for i := 0; i < 30; i++ {
		r.Printf(context.Background(), "redis: failed to dial %d", i)
		now = now.Add(3 * time.Second) // 30 messages over 90 s
	}

	var warns []map[string]any
	debugs := 0
	for _, line := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		switch rec["level"] {
		case "WARN":
			warns = append(warns, rec)
		case "DEBUG":
			debugs++
		}
	}
	if len(warns) != 2 {
		t.Fatalf("%d warn lines over 90 s, want 2 (at 0 s and 60 s)", len(warns))
	}
	if debugs != 28 {
		t.Errorf("%d debug lines, want 28", debugs)
	}
	if n, _ := warns[1]["debug_since_last_warn"].(float64); n != 19 {
		t.Errorf("second warn line counts %v messages since the first, want 19", warns[1]["debug_since_last_warn"])
	}
}
