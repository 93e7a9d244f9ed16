package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/metrics"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// TestHeadDeniedThenAllowedGets503 rejects a request without a key in
// receiveHeader, which drops its body, and then drops the key requirement,
// as a reload between receiveHeader and the handler would. The handler must
// not serve the request with an empty body: it gets 503 and its connection
// closes.
func TestHeadDeniedThenAllowedGets503(t *testing.T) {
	cfg := config.Default()
	sum := sha256.Sum256([]byte("sk-k1"))
	cfg.Auth.Required = true
	cfg.Auth.Keys = []config.Key{{Name: "k1", SHA256: hex.EncodeToString(sum[:]), Priority: "standard"}}
	m := metrics.New()
	lim, err := ratelimit.New(ratelimit.Options{Auth: cfg.Auth, RateLimit: cfg.RateLimit, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lim.Close() })
	s := New(Options{
		Config:   &cfg,
		Balancer: balancer.New(balancer.SettingsFrom(&cfg), nil, m),
		Metrics:  m,
		Limiter:  lim,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})

	var ctx fasthttp.RequestCtx
	h := &ctx.Request.Header
	h.SetMethod(fasthttp.MethodPost)
	h.SetRequestURI("/api/chat")
	h.SetHost("localhost")
	h.SetContentLength(100)
	s.receiveHeader(h)
	if h.ContentLength() != 0 {
		t.Fatalf("Content-Length %d after receiveHeader, want 0 for a request without a key",
			h.ContentLength())
	}

	s.SetLimiter(nil)
	s.handle(&ctx)
	if status := ctx.Response.StatusCode(); status != fasthttp.StatusServiceUnavailable {
		t.Errorf("status %d, want 503 (body %s)", status, ctx.Response.Body())
	}
	if !ctx.Response.ConnectionClose() {
		t.Error("response without Connection: close")
	}
	if !ctx.Hijacked() {
		t.Error("connection not taken over to send the response and close")
	}
}
