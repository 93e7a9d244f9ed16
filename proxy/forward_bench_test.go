package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// BenchmarkForwardGenerate sends non-streamed POST /api/generate requests
// over loopback, straight to a simulated node ("direct") and through a
// whole proxy ("proxy"). The difference between the two is the proxy's
// cost per request, in time and in allocations (the node and the client
// run in this process too).
func BenchmarkForwardGenerate(b *testing.B) {
	sim := testenv.Sim(b, "m", ollamasim.Config{Parallel: 1024, MaxTokens: 8, MinTokens: 8})
	cfg := testenv.Config(b, sim)
	cfg.Nodes[0].MaxConcurrent = 1024
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	// Access log lines are written at Info; the benchmark leaves them out
	// as a deployment logging at warn does.
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := app.Start(context.Background(), cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	body := []byte(`{"model":"m","prompt":"hello","stream":false,"options":{"num_predict":8}}`)
	for _, tc := range []struct{ name, addr string }{
		{"direct", sim.Addr()},
		{"proxy", p.Addr()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			hc := &fasthttp.HostClient{Addr: tc.addr, MaxConns: 256, ReadTimeout: 10 * time.Second}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				req := fasthttp.AcquireRequest()
				resp := fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					req.Header.SetMethod("POST")
					req.SetRequestURI("http://" + tc.addr + "/api/generate")
					req.Header.SetContentType("application/json")
					req.SetBody(body)
					if err := hc.Do(req, resp); err != nil {
						b.Error(err)
						return
					}
					if resp.StatusCode() != 200 {
						b.Errorf("status %d: %s", resp.StatusCode(), resp.Body())
						return
					}
				}
			})
		})
	}
}
