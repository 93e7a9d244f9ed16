package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
)

// maxResponseBytes is the maximum size of a non-streamed response held in
// memory. The largest real ones are embedding batches of a few megabytes.
const maxResponseBytes = 512 << 20

// HealthReporter receives the outcome of every request sent to a node, so
// that passive checks and circuit breakers see real traffic. The health
// package implements it. A nil HealthReporter discards the outcomes.
type HealthReporter interface {
	// Report records one request's outcome on n. failure is "" for a
	// success, or a reason such as "connect" or "timeout".
	Report(n *balancer.Node, failure string)
	// Alive probes n now and returns nil when it responds. The result
	// decides whether a first-byte timeout counts against n.
	Alive(ctx context.Context, n *balancer.Node) error
}

// serveRouted serves a request that one node handles. After the API key
// and limit checks, it serves the request from the cache when it can, or
// forwards it to a node chosen by model and relays the response back.
func (s *Server) serveRouted(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	// Ollama decodes a zstd body on /v1/responses only. On the other routes
	// such a body is invalid JSON, to the proxy as to Ollama.
	if rt.name == "/v1/responses" && !s.decodeZstdBody(ctx, rt) {
		return
	}
	p := s.parsers.Get()
	f, err := inspect(p, rt, ctx.PostBody(), reservesPrompt(rt, rs))
	if len(ctx.PostBody()) <= maxPooledBody {
		// A parser keeps a copy of the last body it parsed, so one that
		// parsed a large body is left to the garbage collector.
		s.parsers.Put(p)
	}
	if err != nil {
		writeBodyError(ctx, rt, ctx.PostBody(), err)
		return
	}
	if f.rawModel == "" {
		writeModelNotFound(ctx, rt, ctx.PostBody(), "")
		return
	}
	rs.model = f.model
	if !s.admit(ctx, rt, rs, f) {
		return
	}
	if f.unload && f.preload {
		s.serveUnload(ctx, rt, rs, f)
		return
	}
	if s.serveCached(ctx, rt, rs, f) {
		return
	}
	s.forward(ctx, rt, rs, f)
}

// forward sends the request to the best node, failing over to others
// before the first byte reaches the client, and relays the response.
func (s *Server) forward(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields) {
	cfg := s.config()
	wctx, watch := watchClient(context.Background(), ctx.Conn())
	watch.limit(cfg.Upstream.Total)
	s.inflight.track(watch)
	req := s.upstreamRequest(ctx, rs)
	defer fasthttp.ReleaseRequest(req)
	if f.body != nil {
		req.SetBodyRaw(f.body)
	}

	var tried []*balancer.Node
	var last attempt
	var ledger errorLedger
	// The errors still held when the request ends are those of a request
	// that no node served.
	defer s.settleUnserved(rs, &ledger)
	warm := false
	for n := 1; n <= max(cfg.Retry.Attempts, 1); n++ {
		lease, err := s.acquire(wctx, rt, rs, f, tried, warm)
		if err != nil {
			if stop := proxyStop(watch); stop != nil {
				err = stop
			}
			watch.release()
			s.failNoNode(ctx, rt, rs, f, err, last)
			return
		}
		node := lease.Node
		tried = append(tried, node)
		rs.node = node.Name
		rs.lease = lease
		a, ex := s.try(wctx, lease, req, f)
		if a.err == nil && a.body == nil {
			s.settleServed(&ledger)
			s.report(node, "")
			if a = s.deliver(ctx, rt, rs, f, lease, ex, watch); a.err == nil {
				return
			}
			// deliver released the lease of a body that the node cut.
		} else {
			lease.Release()
			s.probeAfterTimeout(wctx, rt, f, node, &a)
		}
		v := judge(a)
		s.record(node, v, a, &ledger)
		last = a
		warm = warm || v.warm
		if !v.retry || n == cfg.Retry.Attempts || !s.canRetry(rt, rs, f, tried, warm) {
			break
		}
		rs.retries++
		if s.m != nil {
			s.m.Retries.WithLabelValues(node.Name, v.reason).Inc()
		}
		s.log.Debug("retrying on another node", "request_id", rs.id, "node", node.Name,
			"reason", v.reason, "error", a.err, "status", a.status)
		if !sleepCtx(wctx, backoff(n, cfg.Retry.Backoff, cfg.Retry.MaxBackoff)) {
			last = attempt{err: context.Cause(wctx)}
			break
		}
	}
	if stop := proxyStop(watch); stop != nil {
		last = attempt{err: stop}
	}
	watch.release()
	s.failAttempt(ctx, rt, rs, last)
}

// canRetry reports whether a node is left for another try, so that a
// request with none neither counts a retry nor waits a backoff for it.
func (s *Server) canRetry(rt route, rs *reqState, f fields, tried []*balancer.Node, warm bool) bool {
	if f.pinned != nil {
		return false
	}
	return s.bal.HasCandidate(placement(rt, rs, f, tried, warm))
}

// placement returns the balancer's view of a request.
func placement(rt route, rs *reqState, f fields, tried []*balancer.Node, warm bool) balancer.Request {
	return balancer.Request{
		Model:    f.model,
		NumCtx:   f.numCtx,
		Tried:    tried,
		Warm:     warm,
		Slot:     rt.inference && !f.preload,
		Class:    rs.class,
		Client:   rs.client,
		Affinity: f.affinity,
	}
}

// acquire gets a lease on a node from the balancer, or on f.pinned when it
// is set. When no node lists the model, acquire refreshes the inventories
// (at most once a second) and tries again, because the model may have been
// pulled on a node since the last poll, or a node whose list was not known
// may be back.
func (s *Server) acquire(ctx context.Context, rt route, rs *reqState, f fields,
	tried []*balancer.Node, warm bool) (*balancer.Lease, error) {
	if f.pinned != nil {
		if len(tried) > 0 {
			return nil, balancer.ErrNoNode
		}
		return balancer.NewLease(f.pinned), nil
	}
	req := placement(rt, rs, f, tried, warm)
	lease, err := s.bal.Acquire(ctx, req)
	notListed := errors.Is(err, balancer.ErrModelNotFound) || errors.Is(err, balancer.ErrModelsUnknown)
	if notListed && s.refreshAll(ctx) {
		lease, err = s.bal.Acquire(ctx, req)
	}
	// The balancer places a request with a model only on a node that
	// lists it.
	rs.modelListed = err == nil && req.Model != "" && rs.model == req.Model
	return lease, err
}

// try sends the request to the lease's node and reads the response up to
// its headers. A 5xx response body is read, up to 64 KiB, so that the
// retry rules can see it.
func (s *Server) try(ctx context.Context, lease *balancer.Lease, req *fasthttp.Request, f fields) (attempt, *exchange) {
	node := lease.Node
	// The balancer marks a model loaded as soon as it places a request that
	// loads it, so the node's inventory no longer shows a cold placement,
	// but the lease does. A preload, and a request to a pinned node, take
	// no slot and leave the inventory as it was, so it still applies.
	cold := lease.Cold
	if f.pinned != nil || f.preload {
		cold = f.model != "" && !node.IsLoaded(f.model, f.numCtx)
	}
	a := attempt{coldLoad: cold}
	cfg := s.config()
	t := timeouts{
		connect:   cfg.Upstream.Connect,
		firstByte: cfg.Upstream.FirstByte,
		idle:      cfg.Upstream.Idle,
	}
	ex, err := s.upstreamFor(node).send(ctx, req, t)
	if err != nil {
		a.err = err
		// The client leaving, upstream.total and a shutdown are not the
		// node's errors. A node marked down keeps the error of the probe
		// that failed.
		if !errors.Is(err, errClientGone) && !errors.Is(err, context.DeadlineExceeded) &&
			!errors.Is(err, errShuttingDown) && !errors.Is(err, errNodeMarkedDown) {
			node.SetLastError(err.Error())
		}
		return a, nil
	}
	if st := ex.resp.StatusCode(); st >= 500 {
		a.status = st
		a.body, _ = ex.readAll(64 << 10)
		if a.body == nil {
			a.body = []byte{}
		}
		a.signature = errorSignature(st, a.body)
		ex.finish()
		node.SetLastError("status " + itoa(st) + ": " + string(a.body))
		return a, nil
	}
	return a, ex
}

// record passes the verdict on an attempt on n to the node's health: a
// failure that waits for the request's other attempts goes to ledger, and
// an error that counts against no node only to the metrics.
func (s *Server) record(n *balancer.Node, v verdict, a attempt, ledger *errorLedger) {
	switch {
	case v.deferred:
		ledger.add(n, a.signature)
	case v.uncounted != "":
		if s.m != nil {
			s.m.UncountedErrors.WithLabelValues(n.Name, v.uncounted).Inc()
		}
	default:
		s.report(n, v.failure)
	}
}

func (s *Server) report(n *balancer.Node, failure string) {
	if failure != "" && s.m != nil {
		s.m.NodeFailures.WithLabelValues(n.Name, failure).Inc()
	}
	if s.health != nil {
		s.health.Report(n, failure)
	}
}

// failNoNode responds when the balancer returns no node for the request.
func (s *Server) failNoNode(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields, err error, last attempt) {
	switch {
	case errors.Is(err, balancer.ErrModelNotFound):
		writeModelNotFound(ctx, rt, ctx.PostBody(), f.rawModel)
	case (last.err != nil || last.status != 0) && errors.Is(err, balancer.ErrNoNode):
		s.failAttempt(ctx, rt, rs, last)
	case errors.Is(err, errClientGone):
		s.failAttempt(ctx, rt, rs, attempt{err: err})
	case errors.Is(err, balancer.ErrNoNode):
		writeNoHealthyNode(ctx, rt, f.rawModel)
	case errors.Is(err, balancer.ErrQueueFull):
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable,
			"the "+rs.class+" queue is full (queue.classes."+rs.class+".max_length), try again later")
		ctx.Response.Header.Set("Retry-After", "10")
	case errors.Is(err, balancer.ErrQueueTimeout):
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable,
			"no node could take the request within the "+rs.class+
				" queue's max_wait, try again later")
		ctx.Response.Header.Set("Retry-After", "10")
	default:
		s.failAttempt(ctx, rt, rs, attempt{err: err})
	}
}

// writeNoHealthyNode responds 503 for a model that no usable node can
// serve now, or for a request without a model when no node is usable. A
// model that only nodes with unknown model lists may have gets this
// response too, and not 404, because the ollama CLI starts a pull when it
// gets a 404.
func writeNoHealthyNode(ctx *fasthttp.RequestCtx, rt route, model string) {
	msg := "no healthy node can serve model " + quote(model) + " now, try again later"
	if model == "" {
		msg = "no healthy node can serve the request now, try again later"
	}
	writeError(ctx, rt, fasthttp.StatusServiceUnavailable, msg)
	ctx.Response.Header.Set("Retry-After", "5")
}

// failAttempt responds with the outcome of the last attempt: the node's own
// error response when it sent one, or a gateway error.
func (s *Server) failAttempt(ctx *fasthttp.RequestCtx, rt route, rs *reqState, a attempt) {
	if a.err == nil && a.status != 0 {
		rs.err = "node returned status " + itoa(a.status)
		relay, msg := nodeErrorMessage(rt, a.status, a.body)
		if !relay {
			writeError(ctx, rt, a.status, msg)
		} else {
			ctx.SetStatusCode(a.status)
			ctx.SetContentType(contentTypeJSON(rt))
			ctx.SetBody(a.body)
		}
		if rs.node != "" {
			ctx.Response.Header.Set("X-LLMProxy-Node", rs.node)
		}
		return
	}
	status := statusFor(a.err)
	rs.err = errString(a.err)
	if rs.node != "" {
		ctx.Response.Header.Set("X-LLMProxy-Node", rs.node)
	}
	if status == StatusClientClosed {
		rs.status = status
		closeWithoutResponse(ctx)
		return
	}
	msg := clientText(a.err)
	nodeFailed := errors.Is(a.err, errConnect) || errors.Is(a.err, errNodeMarkedDown)
	if nodeFailed {
		msg += "; no other node could take the request, try again later"
	}
	writeError(ctx, rt, status, msg)
	switch {
	case errors.Is(a.err, errShuttingDown):
		ctx.Response.Header.Set("Retry-After", shutdownRetryAfter)
	case nodeFailed:
		// As writeNoHealthyNode sends once the nodes are marked down.
		ctx.Response.Header.Set("Retry-After", "5")
	}
}

// closeWithoutResponse closes the client's connection when the handler
// returns, sending nothing. The client left, or half-closed its side, and
// must not take fasthttp's default empty 200 for the response.
func closeWithoutResponse(ctx *fasthttp.RequestCtx) {
	ctx.SetConnectionClose()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(net.Conn) {})
}

// upstreamRequest builds the request sent to nodes: the client's method,
// path, query, headers and body, without hop-by-hop headers, Origin,
// Referer and the proxy's API key, and with the client address appended to
// X-Forwarded-For. The upstream sets the Host header per node.
func (s *Server) upstreamRequest(ctx *fasthttp.RequestCtx, rs *reqState) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	ctx.Request.Header.CopyTo(&req.Header)
	// One pass finds the headers to drop, which most requests do not have;
	// a Del per name would search the headers once per name.
	var dropBuf [4]string
	drop := dropBuf[:0]
	for k, v := range req.Header.All() {
		if dropHeader(k, rs.apiKey != nil) {
			drop = append(drop, string(k))
		}
		if strings.EqualFold(string(k), "Connection") {
			// Headers named in Connection are hop-by-hop too.
			for name := range strings.SplitSeq(string(v), ",") {
				if name = strings.TrimSpace(name); name != "" && !strings.EqualFold(name, "close") {
					drop = append(drop, name)
				}
			}
		}
	}
	for _, k := range drop {
		req.Header.Del(k)
	}
	req.SetRequestURIBytes(ctx.RequestURI())
	req.SetBodyRaw(ctx.PostBody())
	var ipBuf [64]byte
	if ip := appendRemoteIP(ipBuf[:0], ctx); len(ip) > 0 {
		// The client's own header keeps its order, which Del on the copy
		// does not promise.
		if prior := ctx.Request.Header.PeekAll("X-Forwarded-For"); len(prior) > 0 {
			// Several X-Forwarded-For headers form one list, in order.
			v := append(bytes.Join(prior, []byte(", ")), ", "...)
			v = append(v, ip...)
			req.Header.Del("X-Forwarded-For")
			req.Header.SetBytesV("X-Forwarded-For", v)
		} else {
			req.Header.SetBytesV("X-Forwarded-For", ip)
		}
	}
	return req
}

// dropHeader reports whether a client header stays out of the request to
// the node: hop-by-hop headers, Origin and Referer, and, when the proxy
// checked an API key, the headers that carry it. Ollama responds with 403
// to a browser Origin it does not allow, and the proxy has already applied
// CORS itself.
func dropHeader(name []byte, keyChecked bool) bool {
	for _, h := range hopHeaders {
		if len(h) == len(name) && strings.EqualFold(h, string(name)) {
			return true
		}
	}
	if keyChecked {
		for _, h := range proxyKeyHeaders {
			if len(h) == len(name) && strings.EqualFold(h, string(name)) {
				return true
			}
		}
	}
	return false
}

var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	// fasthttp already sent the client 100 Continue, and the proxy sends
	// the whole body at once, so the node must not wait for the body.
	"Expect",
	"Origin", "Referer",
}

// appendRemoteIP appends the client's IP address to b, or nothing when the
// client is not on TCP.
func appendRemoteIP(b []byte, ctx *fasthttp.RequestCtx) []byte {
	a, ok := ctx.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return b
	}
	if ip, ok := netip.AddrFromSlice(a.IP); ok {
		return ip.Unmap().AppendTo(b)
	}
	return b
}

func contentTypeJSON(rt route) string {
	if rt.compat() {
		return "application/json"
	}
	return "application/json; charset=utf-8"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// elapsed is time.Since, kept apart for readability in the relay.
func elapsed(t time.Time) time.Duration { return time.Since(t) }

func remoteIP(ctx *fasthttp.RequestCtx) string {
	var buf [64]byte
	return string(appendRemoteIP(buf[:0], ctx))
}
