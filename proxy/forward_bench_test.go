package proxy_test

import (
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// BenchmarkForwardGenerate sends non-streamed POST /api/generate requests
// over loopback, straight to a simulated node ("direct"), through a whole
// proxy ("proxy") and through a bare fasthttp proxy ("fasthttp"). The node
// and the client run in this process too. The difference between direct
// and proxy is the proxy's cost per request, in time and in allocations.
// The difference between fasthttp and proxy is the part of that cost which
// llmproxy's own handling adds to the HTTP library.
func BenchmarkForwardGenerate(b *testing.B) {
	sim := testenv.Sim(b, "m", ollamasim.Config{Parallel: 1024, MaxTokens: 8, MinTokens: 8})
	cfg := testenv.Config(b, sim)
	cfg.Nodes[0].MaxConcurrent = 1024
	// testenv's logger formats nothing, so access log lines cost nothing,
	// as in a deployment logging at warn.
	p := testenv.Proxy(b, cfg)

	bareProxy := startFastHTTPProxy(b, sim.Addr())

	body := []byte(`{"model":"m","prompt":"hello","stream":false,"options":{"num_predict":8}}`)
	for _, tc := range []struct{ name, addr string }{
		{"direct", sim.Addr()},
		{"proxy", p.Addr()},
		{"fasthttp", bareProxy},
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

// startFastHTTPProxy starts a fasthttp server on loopback that forwards
// every request to node with a fasthttp client and nothing else, and
// returns its address.
func startFastHTTPProxy(b *testing.B, node string) string {
	hc := &fasthttp.HostClient{Addr: node, MaxConns: 1024, NoDefaultUserAgentHeader: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
		}
	}}
	go func() { _ = s.Serve(ln) }()
	b.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}
