// Package testenv starts real components for end-to-end tests: simulated
// Ollama nodes and whole proxies on loopback, each stopped when its test
// ends.
package testenv

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// Logger returns a logger for components under test: silent unless
// LLMPROXY_TEST_LOG is set, so that failures stay readable.
func Logger() *slog.Logger {
	if os.Getenv("LLMPROXY_TEST_LOG") == "" {
		// Above Error nothing is formatted, so a silent logger costs
		// benchmarks nothing.
		return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError + 1}))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Sim starts a simulated node on a free loopback port with the given
// models (as ollamasim.ParseModels reads them) and settings.
func Sim(t testing.TB, models string, cfg ollamasim.Config) *ollamasim.Running {
	t.Helper()
	specs, err := ollamasim.ParseModels(models)
	if err != nil {
		t.Fatalf("parse sim models %q: %v", models, err)
	}
	cfg.Models = append(cfg.Models, specs...)
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	r, err := ollamasim.New(cfg).Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start sim: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// Config returns a valid configuration over the given nodes, named n0,
// n1, ... in order, listening on a free loopback port, with health checks
// fast enough for tests.
func Config(t testing.TB, nodes ...*ollamasim.Running) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Nodes = nil
	for i, n := range nodes {
		nc := config.DefaultNode(n.URL())
		nc.Name = "n" + string(rune('0'+i))
		cfg.Nodes = append(cfg.Nodes, nc)
	}
	cfg.Health.Interval = 200 * time.Millisecond
	cfg.Health.Timeout = time.Second
	cfg.Discovery.Interval = 200 * time.Millisecond
	cfg.Retry.Backoff = 5 * time.Millisecond
	cfg.Retry.MaxBackoff = 20 * time.Millisecond
	// Tests send bursts from one loopback address.
	// Redis replies on a loaded test machine can take longer than the
	// production default of 50ms.
	cfg.Redis.Timeout = time.Second
	cfg.RateLimit.PerAddress = 0
	cfg.RateLimit.Burst = 0
	return &cfg
}

// Proxy validates cfg and starts a proxy with it. The proxy shuts down when
// the test ends.
func Proxy(t testing.TB, cfg *config.Config) *app.App {
	t.Helper()
	return LoggedProxy(t, cfg, Logger())
}

// LoggedProxy is Proxy with the proxy's log going to log.
func LoggedProxy(t testing.TB, cfg *config.Config, log *slog.Logger) *app.App {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("invalid test config: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := app.Start(ctx, cfg, log)
	if err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	return a
}

// WaitFor polls cond every few milliseconds until it returns true. If limit
// passes first, WaitFor fails the test with msg.
func WaitFor(t testing.TB, limit time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
