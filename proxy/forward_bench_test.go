package proxy_test

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"

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
	// testenv's logger formats nothing, so access log lines cost nothing,
	// as in a deployment logging at warn.
	p := testenv.Proxy(b, cfg)

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
