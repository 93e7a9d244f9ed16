package proxy

import (
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// serveMetrics serves the Prometheus metrics, after setting the gauges
// that are read from live state rather than updated on every change.
func (s *Server) serveMetrics(ctx *fasthttp.RequestCtx) {
	if s.m == nil {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		return
	}
	s.updateGauges()
	s.metricsHandler(ctx)
}

// updateGauges copies live counts into their gauges.
func (s *Server) updateGauges() {
	for _, n := range s.bal.Nodes() {
		s.m.NodeInflight.WithLabelValues(n.Name).Set(float64(n.Inflight()))
		up := 0.0
		if n.Usable() {
			up = 1
		}
		s.m.NodeUp.WithLabelValues(n.Name).Set(up)
	}
	if s.gauges != nil {
		s.gauges()
	}
}

func (s *Server) initMetricsHandler() {
	if s.m == nil {
		return
	}
	h := promhttp.HandlerFor(s.m.Registry, promhttp.HandlerOpts{EnableOpenMetrics: false})
	s.metricsHandler = fasthttpadaptor.NewFastHTTPHandler(h)
}

// serveReady responds with 200 when at least one node may take requests,
// restricted nodes included, and with 503 otherwise, for load balancers and
// orchestrators in front of the proxy.
func (s *Server) serveReady(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; charset=utf-8")
	if len(s.bal.Serving()) == 0 {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString("no node is up")
		return
	}
	ctx.SetBodyString("ready")
}
