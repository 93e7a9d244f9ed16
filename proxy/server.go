// Package proxy is the HTTP server of llmproxy, a fasthttp server that
// clients see as one Ollama server. It classifies each request and serves
// it locally, from one node chosen by the balancer, or from every node
// concerned. Request bodies are forwarded byte for byte, and streamed
// responses leave the proxy line by line as they arrive.
package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/cache"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/rawconn"
	"github.com/llmproxy/llmproxy/metrics"
	"github.com/llmproxy/llmproxy/ratelimit"
	"github.com/llmproxy/llmproxy/statuspage"
)

// Inventory refreshes a node's listed and loaded models. The health package
// implements it. The proxy calls it after it changed a node's models and
// when a request names a model that no node lists.
type Inventory interface {
	Refresh(ctx context.Context, n *balancer.Node) error
}

// Options are the collaborators of a Server. Config, Balancer and Metrics
// are required.
type Options struct {
	Config    *config.Config
	Balancer  *balancer.Balancer
	Metrics   *metrics.Metrics
	Inventory Inventory
	// Health receives the outcome of every request sent to a node.
	Health HealthReporter
	// Limiter authenticates keys and enforces limits; nil disables both.
	Limiter *ratelimit.Limiter
	// Cache is the response cache; nil disables caching.
	Cache *cache.Cache
	// BreakerState returns a node's circuit breaker state for
	// GET /admin/nodes.
	BreakerState func(*balancer.Node) string
	// AdminRoutes serves additional admin routes and reports whether it
	// handled the request.
	AdminRoutes func(*fasthttp.RequestCtx) bool
	Logger      *slog.Logger
	// Version is the proxy's own version, shown by the admin status page
	// and GET /admin/status.
	Version string
}

// Server is the proxy's HTTP server.
type Server struct {
	log    *slog.Logger
	m      *metrics.Metrics
	bal    *balancer.Balancer
	inv    Inventory
	health HealthReporter
	lim    atomic.Pointer[ratelimit.Limiter]
	// cache is the response cache; nil when cache.enabled is false.
	cache *cache.Cache
	// breakerState returns a node's breaker state for the admin routes.
	breakerState func(*balancer.Node) string
	// adminExtra serves admin routes owned by other packages and reports
	// whether it handled the request.
	adminExtra func(*fasthttp.RequestCtx) bool

	cfg atomic.Pointer[config.Config]

	// upMu guards ups, the connection pool of each node by name.
	upMu sync.RWMutex
	ups  map[string]*upstream

	srv            *fasthttp.Server
	metricsHandler fasthttp.RequestHandler
	// gauges, when set, updates gauges owned by other packages before a
	// scrape.
	gauges   func()
	parsers  fastjson.ParserPool
	idPrefix string
	idSeq    atomic.Uint64

	version      string
	started      time.Time
	recentErrors *statuspage.RecentErrors
	statusJSON   fasthttp.RequestHandler

	// lastRefresh is the time of the last refreshAll in Unix nanoseconds,
	// which limits such refreshes to one a second.
	lastRefresh atomic.Int64

	// inflight lists the requests waiting on or streaming from nodes.
	inflight watchList
	// handedOver counts the connections taken over from fasthttp, which
	// its shutdown does not wait for: streams to HTTP/1.0 clients and
	// early rejections (closeUnread).
	handedOver streamCount
	// heads keeps the request line of requests whose body fasthttp reads
	// after receiveHeader, for handleParseError, and marks the requests
	// that receiveHeader rejected.
	heads pendingHeads
	// listener is the address of the listener that Serve accepts on, for
	// the Host check of receiveHeader.
	listener listenerAddr
	// zstd decodes the zstd bodies of /v1/responses, bounded by
	// max_body_bytes.
	zstd *zstdDecoders
}

// New returns a server for opts. It does not listen until Serve.
func New(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	s := &Server{
		log:    log.With("component", "proxy"),
		m:      opts.Metrics,
		bal:    opts.Balancer,
		inv:    opts.Inventory,
		health: opts.Health,
		cache:  opts.Cache,

		breakerState: opts.BreakerState,
		adminExtra:   opts.AdminRoutes,
		ups:          map[string]*upstream{},
		zstd:         newZstdDecoders(),
		idPrefix:     hex.EncodeToString(prefix[:]),
	}
	s.version = opts.Version
	s.started = time.Now()
	s.recentErrors = statuspage.NewRecentErrors(0)
	s.statusJSON = statuspage.JSON(statuspage.SourceFunc(s.statusSnapshot))
	s.SetConfig(opts.Config)
	s.SetLimiter(opts.Limiter)
	s.initMetricsHandler()
	s.srv = &fasthttp.Server{
		Handler:               s.handle,
		ErrorHandler:          s.handleParseError,
		HeaderReceived:        s.receiveHeader,
		Name:                  "",
		NoDefaultServerHeader: true,
		MaxRequestBodySize:    int(opts.Config.MaxBodyBytes),
		// fasthttp reads a body of known length into a buffer of that
		// length allocated before the first byte arrives, so a head alone
		// could reserve max_body_bytes. Streamed, it reads only the first
		// 8 KiB before the handler, and readBody reads the rest after the
		// Host, CORS and API key checks, into a buffer that grows as the
		// bytes arrive.
		StreamRequestBody: true,
		// Ollama reads every body as JSON, whatever its Content-Type, and
		// fasthttp would parse a multipart/form-data one as a form.
		DisablePreParseMultipartForm: true,
		ReadTimeout:                  opts.Config.ReadTimeout,
		IdleTimeout:                  2 * time.Minute,
		// Also the largest request head fasthttp accepts.
		ReadBufferSize:  int(opts.Config.MaxHeaderBytes),
		CloseOnShutdown: true,
		// fasthttp passes connection errors that it ignores by default,
		// write timeouts among them, to Logger only with this set.
		LogAllErrors: true,
		Logger:       s.HTTPLogger(),
	}
	s.heads.ttl = 2 * s.srv.ReadTimeout
	// A process-wide setting of fasthttp, the same for every Server: the
	// body buffer of a large request or response is dropped when reset
	// instead of going back to fasthttp's pools.
	fasthttp.SetBodySizePoolLimit(maxPooledBody, maxPooledBody)
	return s
}

// maxPooledBody is the largest body buffer that a connection keeps for
// its next request, or that fasthttp's pools keep. Bodies are read whole,
// and a buffer can grow to about twice a chunked body's length, so
// without the bound an idle connection could hold twice max_body_bytes.
const maxPooledBody = 1 << 20

// releaseLargeBody drops the request body buffer of a finished request
// when it is over maxPooledBody, so that an idle keep-alive connection
// does not keep it until the client's next request.
func releaseLargeBody(ctx *fasthttp.RequestCtx) {
	ctx.Request.ReleaseBody(maxPooledBody)
}

// SetConfig applies a new configuration: connection pools for new nodes,
// and the limits read on every request. Pools of removed nodes stay until
// their last request ends and are then collected.
func (s *Server) SetConfig(cfg *config.Config) {
	s.cfg.Store(cfg)
	s.upMu.Lock()
	defer s.upMu.Unlock()
	keep := make(map[string]*upstream, len(s.ups))
	for _, n := range s.bal.Nodes() {
		if u, ok := s.ups[n.Name]; ok && u.node == n {
			keep[n.Name] = u
			continue
		}
		keep[n.Name] = newUpstream(n, cfg.Upstream.Connect)
	}
	s.ups = keep
}

func (s *Server) config() *config.Config { return s.cfg.Load() }

// SetLimiter replaces the limiter used for new requests. A reload
// reconfigures the running limiter instead, which keeps its limit state.
func (s *Server) SetLimiter(l *ratelimit.Limiter) { s.lim.Store(l) }

func (s *Server) limiter() *ratelimit.Limiter { return s.lim.Load() }

func (s *Server) upstreamFor(n *balancer.Node) *upstream {
	s.upMu.RLock()
	u := s.ups[n.Name]
	s.upMu.RUnlock()
	if u != nil && u.node == n {
		return u
	}
	// The balancer can offer a node before SetConfig has created its pool.
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if u = s.ups[n.Name]; u == nil || u.node != n {
		u = newUpstream(n, s.config().Upstream.Connect)
		s.ups[n.Name] = u
	}
	return u
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.listener.add(ln.Addr())
	return s.srv.Serve(rawconn.Listener(ln))
}

// Shutdown stops accepting connections and waits for requests in flight,
// streams included, until ctx ends. Shortly before ctx's deadline it ends
// the requests still in flight, so that their clients read an error (an
// error line on a stream, 503 otherwise) instead of a cut connection.
func (s *Server) Shutdown(ctx context.Context) error {
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		cut := time.AfterFunc(left-min(shutdownGrace, left/10), func() {
			if n := s.inflight.cancelAll(errShuttingDown); n > 0 {
				s.log.Warn("shutdown_timeout is running out, ending requests in flight", "requests", n)
			}
		})
		defer cut.Stop()
	}
	err := s.srv.ShutdownWithContext(ctx)
	if werr := s.handedOver.wait(ctx); err == nil {
		err = werr
	}
	return err
}

// streamCount counts streams in progress and lets a caller wait until
// none is left.
type streamCount struct {
	mu   sync.Mutex
	n    int
	none chan struct{} // closed when n drops to 0
}

func (c *streamCount) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		c.none = make(chan struct{})
	}
	c.n++
}

func (c *streamCount) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.n == 0 {
		close(c.none)
	}
}

// wait returns when no stream is left, or with ctx's error when ctx ends
// first.
func (c *streamCount) wait(ctx context.Context) error {
	c.mu.Lock()
	if c.n == 0 {
		c.mu.Unlock()
		return nil
	}
	none := c.none
	c.mu.Unlock()
	select {
	case <-none:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdownGrace is the time that requests ended by Shutdown have to send
// their error before the shutdown deadline, at most a tenth of the
// shutdown timeout.
const shutdownGrace = time.Second

// AdminHandler serves the admin routes, metrics and probes alone, for the
// separate listener of admin.listen.
func (s *Server) AdminHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		defer s.limitWrite(ctx)
		rt := classify(ctx.Method(), ctx.Path())
		if !checkHost(ctx, s.config().Admin.Listen) {
			s.end(s.begin(ctx, rt))
			return
		}
		if !rt.operational() && rt.how != handleHealthz && rt.how != handleReadyz {
			s.serveNotFound(ctx, rt)
			return
		}
		s.handleOperational(ctx, rt)
	}
}

// Handler returns the request handler, for tests and embedding.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handle }

// handle is the request pipeline. It redirects an unclean path, classifies
// the request, applies the Host, CORS and API key checks, then serves the
// route locally, from one node, or from every node concerned.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	defer releaseLargeBody(ctx)
	defer s.limitWrite(ctx)
	head, pending := s.heads.take(&ctx.Request.Header)
	switch {
	case pending && head.tooLarge:
		s.respondParseError(ctx, fasthttp.ErrBodyTooLarge, head, true)
		return
	case pending && head.malformed != nil:
		s.respondParseError(ctx, head.malformed, head, true)
		s.closeUnread(ctx)
		return
	}
	if target, ok := cleanPathTarget(ctx); ok {
		// Go's ServeMux, in front of Ollama's router, redirects before
		// any check of Ollama's runs.
		rs := s.begin(ctx, routeRedirect)
		writeRedirect(ctx, target, fasthttp.StatusMovedPermanently)
		s.endUnread(ctx, rs, head.denied || head.unread)
		return
	}
	rt := s.routeOf(ctx.Method(), ctx.Path())
	rs := s.begin(ctx, rt)
	token := rs.gen.Load()
	listen := s.config().Listen
	if !checkHost(ctx, listen) || !s.applyCORS(ctx) {
		s.endUnread(ctx, rs, head.denied || head.unread)
		return
	}
	if ctx.IsOptions() && answersOptions(ctx, listen) {
		rs.route = routeOptions
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		ctx.Response.Header.SetNoDefaultContentType(true)
		s.endUnread(ctx, rs, head.denied || head.unread)
		return
	}
	if rt.api() && !s.identify(ctx, rt, rs) {
		s.endUnread(ctx, rs, head.denied || head.unread)
		return
	}
	if head.denied || head.unread && !servedWithoutBody(rt) {
		// receiveHeader rejected the request or found no use for its
		// body, and dropped it, and a reload has changed the outcome of
		// the checks or the route since.
		ctx.Response.Header.Set("Retry-After", "1")
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable,
			"the configuration changed while the request was read, send it again")
		s.closeUnread(ctx)
		s.end(rs)
		return
	}
	if err := s.readBody(ctx); err != nil {
		status, msg := s.bodyErrorResponse(ctx, err, pendingHead{chunked: ctx.Request.Header.ContentLength() == -1}, true)
		writeError(ctx, rt, status, msg)
		ctx.SetConnectionClose()
		rs.err = msg
		s.end(rs)
		return
	}
	s.serveRoute(ctx, rt, rs)
	if head.unread {
		s.closeUnread(ctx)
	}
	s.endHandled(rs, token)
}

// serveRoute serves a request that passed handle's checks and whose body
// is read, by the kind of its route.
func (s *Server) serveRoute(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	switch rt.how {
	case handleRoot:
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("Ollama is running")
	case handleVersion:
		s.serveVersion(ctx, rt)
	case handleTags:
		s.serveTags(ctx, rt, rs)
	case handlePS:
		s.servePS(ctx, rt, rs)
	case handleModels, handleModel:
		s.serveOpenAIModels(ctx, rt, rs)
	case handleRouted:
		s.serveRouted(ctx, rt, rs)
	case handleFanout:
		s.serveFanout(ctx, rt, rs)
	case handleSticky:
		s.serveSticky(ctx, rt, rs)
	case handleFallback:
		s.serveFallback(ctx, rt, rs)
	case handleRedirect:
		serveRedirect(ctx)
	case handleAdmin:
		s.serveAdmin(ctx, rt)
	case handleMetrics:
		s.serveMetrics(ctx)
	case handleHealthz:
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok")
	case handleReadyz:
		s.serveReady(ctx)
	case handleMethodNotAllowed:
		// gin's text, on every route family alike: Ollama's /v1
		// middleware runs only once a route matched.
		ctx.Response.Header.Set("Allow", allowedMethods(ctx.Path()))
		writeRouterError(ctx, fasthttp.StatusMethodNotAllowed, "405 method not allowed")
	default:
		s.serveNotFound(ctx, rt)
	}
}

// endUnread ends a request that handle responded to before reading its body.
// When receiveHeader dropped the body, the connection closes after the
// response (see closeUnread).
func (s *Server) endUnread(ctx *fasthttp.RequestCtx, rs *reqState, bodyDropped bool) {
	if bodyDropped {
		s.closeUnread(ctx)
	}
	s.end(rs)
}

// routeOf classifies a request on the main listener, where the admin
// routes and metrics are not found when admin.listen is set.
func (s *Server) routeOf(method, path []byte) route {
	rt := classify(method, path)
	if rt.operational() && s.config().Admin.Listen != "" {
		return routeNotFound
	}
	return rt
}

// serveNotFound sends the 404 of Ollama's router (gin) for a path that no
// route serves, the same text under /v1/ as elsewhere.
func (s *Server) serveNotFound(ctx *fasthttp.RequestCtx, _ route) {
	writeRouterError(ctx, fasthttp.StatusNotFound, "404 page not found")
}

// writeRouterError writes an error of gin's router itself, a 404 or 405,
// as plain text with gin's Content-Type, which has no charset.
func writeRouterError(ctx *fasthttp.RequestCtx, status int, text string) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain")
	ctx.SetBodyString(text)
}

// handleParseError responds to requests that fasthttp could not read. A
// body over max_body_bytes gets 413 in the route's error shape without
// being read in full. A head over max_header_bytes gets 431, in OpenAI's
// shape when the path that requestLineFromError recovers starts with /v1/.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	head, pending := s.heads.take(&ctx.Request.Header)
	s.respondParseError(ctx, err, head, pending)
}

// respondParseError writes the error response of a request that failed
// to be read, with err, and logs it. head is the request's entry from
// receiveHeader, when pending is set.
func (s *Server) respondParseError(ctx *fasthttp.RequestCtx, err error, head pendingHead, pending bool) {
	rt := classify(ctx.Method(), ctx.Path())
	method := ctx.Method()
	headerErr := isHeaderError(err)
	switch {
	case pending && !headerErr:
		// The entry is this request's: receiveHeader ran for it, and the
		// body or the target failed after that.
		method = []byte(head.method)
		if path, ok := targetPath([]byte(head.target)); ok {
			rt = classify(method, path)
		}
	case headerErr:
		// fasthttp has reset the request, but its message quotes the
		// start of the head.
		if m, path, complete, ok := requestLineFromError(err); ok {
			method = m
			if complete {
				rt = classify(m, path)
			}
			// Any /v1/ path gets its family's shape, also when the quote
			// cut it off and its route is unknown.
			if rt.family == apiOllama {
				rt.family = familyOfPath(path)
			}
		}
	}
	if !headerErr && isConnClosed(err) && !pending {
		// NOTE: fasthttp reads the first 8 KiB of a body before the
		// handler and resets the request when that read fails. Only a
		// chunked body, or one sent to a /v1/ path, keeps its method and
		// route here. The others are logged as route "other".
		rt, method = routeNotFound, nil
	}
	status, msg := s.bodyErrorResponse(ctx, err, head, pending)
	// begin sets the X-Request-Id that an Anthropic error body quotes.
	rs := s.begin(ctx, rt)
	if e := asProtocolError(err); e != nil {
		e.write(ctx)
	} else {
		writeError(ctx, rt, status, msg)
	}
	ctx.SetConnectionClose()
	s.limitWrite(ctx)
	rs.method = methodString(method)
	rs.err = msg
	s.end(rs)
}

// bodyErrorResponse returns the status and message for a request that
// failed to be read with err, and discards what the client still sends
// where it would otherwise lose the response. head is the request's entry
// from receiveHeader, when pending is set.
func (s *Server) bodyErrorResponse(ctx *fasthttp.RequestCtx, err error, head pendingHead, pending bool) (int, string) {
	headerErr := isHeaderError(err)
	status := fasthttp.StatusBadRequest
	msg := "invalid HTTP request"
	var small *fasthttp.ErrSmallBuffer
	if errors.As(err, &small) {
		// fasthttp's message quotes the raw request head, keys included,
		// so it is never sent back.
		status = fasthttp.StatusRequestHeaderFieldsTooLarge
		msg = "request headers exceed " + strconv.Itoa(s.srv.ReadBufferSize) + " bytes (max_header_bytes)"
		// The rest of the head, and the body, are still on their way. A
		// close with them unread would reset the connection, and a client
		// still sending would lose the 431.
		discardBody(ctx, -1)
	}
	if e := asProtocolError(err); e != nil {
		status, msg = e.status, e.msg
	}
	if isTimeout(err) {
		status = fasthttp.StatusRequestTimeout
		msg = "request not received in full within " + s.srv.ReadTimeout.String() + " (read_timeout)"
	}
	if !headerErr && isConnClosed(err) {
		// The client closed or reset its connection during the body. The
		// status is 400, not 499, so that a client that only half-closed
		// its side reads a clear error.
		msg = "request body incomplete: the client closed the connection before sending all of it"
	}
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		status = fasthttp.StatusRequestEntityTooLarge
		msg = "request body exceeds the limit of " +
			strconv.FormatInt(s.config().MaxBodyBytes, 10) + " bytes (max_body_bytes)"
		switch {
		case pending && head.continueRejected:
			// The client waits for 100 Continue and has sent no body.
		case pending && head.chunked:
			discardBody(ctx, -1)
		case pending && head.length > 0:
			discardBody(ctx, head.length)
		default:
			discardBody(ctx, int64(ctx.Request.Header.ContentLength()))
		}
	}
	return status, msg
}

// limitWrite sets the deadline by which the client must have read a
// non-streamed response: write_timeout from now, because fasthttp starts
// to write the response when the handler returns. A body stream or a
// hijacked connection gets the zero deadline, so that write_timeout never
// cuts a long stream.
//
// fasthttp v1.79.0 skips its own Server.WriteTimeout for a response whose
// handler set a deadline through ctx, and clears that deadline once the
// response is written, so none carries over to the next request on the
// connection. Streams clear it as well, so as not to depend on that.
//
// NOTE: the request is logged and counted when the handler returns, before
// fasthttp writes the response. So a response that write_timeout cuts
// keeps its status (200 for most) in the log and in the metrics. Only the
// Info line of fasthttpLogger and llmproxy_client_write_timeouts_total
// record the cut.
func (s *Server) limitWrite(ctx *fasthttp.RequestCtx) {
	var deadline time.Time
	if !ctx.Response.IsBodyStream() && !ctx.Hijacked() {
		deadline = time.Now().Add(s.config().WriteTimeout)
	}
	_ = ctx.SetWriteDeadline(deadline)
}

// isHeaderError reports whether err comes from reading a request head,
// before receiveHeader runs.
//
// NOTE: besides the two error types, this matches the text that fasthttp
// v1.79.0 puts in every header read error. A head error with other text
// counts as a body error. Its route then comes from a pending entry of
// the same RequestCtx, if one is left.
func isHeaderError(err error) bool {
	var small *fasthttp.ErrSmallBuffer
	var nothing fasthttp.ErrNothingRead
	return errors.As(err, &small) || errors.As(err, &nothing) ||
		strings.Contains(err.Error(), "error when reading request headers")
}

// receiveHeader runs as fasthttp's Server.HeaderReceived, after a request
// head is read and before its body is.
//
// fasthttp reads the first 8 KiB of a body before the handler, and when
// that read fails it resets the request, so handleParseError would see
// GET /. receiveHeader therefore keeps the method and target in s.heads
// for a chunked body and for a body sent to a /v1/ path, whose errors
// have OpenAI's or Anthropic's shape.
//
// Four kinds of request get their length set to 0 and lose any "Expect:
// 100-continue", so that fasthttp reads none of their body and sends no
// 100 Continue. They are a head that Go's net/http rejects (malformedHead),
// a Content-Length over the limit, a request with a body whose Host,
// Origin or API key handle rejects (deniedByHead), and a request that
// waits for a 100 Continue on a route that handle serves without the
// body (bodyUnused). handle then responds to them as the entry says, with the
// status, body and headers that such a request gets otherwise, and the
// connection closes. Server.ExpectHandler
// could only send a bare status: its contract forbids writing a response
// body. A request without a body gets its Host, Origin and API key checks
// in handle alone, and keeps its connection.
func (s *Server) receiveHeader(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	// Drops what a request on the same RequestCtx left when its connection
	// ended while its body was read.
	s.heads.take(h)
	maxBody := int(s.config().MaxBodyBytes)
	if maxBody <= 0 {
		maxBody = fasthttp.DefaultMaxRequestBodySize
	}
	length := h.ContentLength()
	switch malformed := malformedHead(h); {
	case malformed != nil:
		s.heads.keep(h, pendingHead{malformed: malformed, continueRejected: dropBody(h)})
	case length > maxBody:
		s.heads.keep(h, pendingHead{tooLarge: true, continueRejected: dropBody(h), length: int64(length)})
	case (length > 0 || length == -1) && s.deniedByHead(h):
		s.heads.keep(h, pendingHead{denied: true, continueRejected: dropBody(h)})
	case (length > 0 || length == -1) && expectsContinue(h) && s.bodyUnused(h):
		// net/http sends 100 Continue only when a handler reads the body,
		// and Ollama's router serves these routes without reading it.
		s.heads.keep(h, pendingHead{unread: true, continueRejected: dropBody(h)})
	case length == -1:
		s.heads.keep(h, pendingHead{chunked: true})
	case length > 0 && bytes.HasPrefix(h.RequestURI(), []byte("/v1/")):
		// fasthttp resets the request when a body of known length fails,
		// and the route's error shape is not Ollama's.
		s.heads.keep(h, pendingHead{})
	case length == 0 || length == -2:
		// net/http sends 100 Continue only when the handler reads a body,
		// so Ollama sends none for a request without one (-2 is
		// fasthttp's length of a request with neither Content-Length nor
		// Transfer-Encoding). fasthttp sends it for any request with the header.
		h.Del(fasthttp.HeaderExpect)
	}
	// The limit of the configuration in force, the same as
	// s.srv.MaxRequestBodySize but read without a data race.
	return fasthttp.RequestConfig{MaxRequestBodySize: maxBody}
}

// expectsContinue reports whether the request of h waits for a 100
// Continue before it sends its body.
func expectsContinue(h *fasthttp.RequestHeader) bool {
	return h.IsHTTP11() && bytes.EqualFold(h.Peek("Expect"), []byte("100-continue"))
}

// servedWithoutBody reports whether handle serves rt without its body:
// an unknown path, a wrong method or a trailing-slash redirect.
func servedWithoutBody(rt route) bool {
	return rt.how == handleNotFound || rt.how == handleMethodNotAllowed || rt.how == handleRedirect
}

// dropBody sets the length of the request of h to 0 and removes its
// "Expect: 100-continue", so that fasthttp reads none of its body and
// sends no 100 Continue. It reports whether the client waits for a 100
// Continue, and so has sent no body.
func dropBody(h *fasthttp.RequestHeader) (continueRejected bool) {
	expect := expectsContinue(h)
	h.Del("Expect")
	h.SetContentLength(0)
	return expect
}

// pendingHead is what receiveHeader keeps of a request head: the part
// that handleParseError needs when fasthttp fails to read the body after
// receiveHeader, and the reason why receiveHeader rejected the request.
type pendingHead struct {
	method string
	// target is the request target as sent, before normalization.
	target string
	// chunked is set for a body with Transfer-Encoding: chunked.
	chunked bool
	// continueRejected is set when receiveHeader removed the request's
	// "Expect: 100-continue", so its client has sent no body.
	continueRejected bool
	// tooLarge is set when the Content-Length exceeds max_body_bytes.
	// receiveHeader then sets the length to 0, and length keeps the
	// declared one.
	tooLarge bool
	length   int64
	// malformed is the error of a head that Go's net/http rejects, and
	// denied is set for a request that the Host, CORS or API key checks
	// reject. receiveHeader then sets the length to 0.
	malformed *protocolError
	denied    bool
	// unread is set for a request that waits for a 100 Continue on a route
	// that handle serves without the body (servedWithoutBody).
	unread bool
	added  time.Time
}

// pendingHeads maps the request header that fasthttp passes to
// Server.HeaderReceived, which is &ctx.Request.Header of the request's
// RequestCtx, to its pendingHead. handle and handleParseError remove the
// entry of their request. An entry whose request never reached either,
// because its connection ended while the body was read, is removed by
// the next request on the same RequestCtx or after ttl.
type pendingHeads struct {
	// count is len(byHeader), read without mu so that requests without
	// an entry skip the lock.
	count atomic.Int64
	mu    sync.Mutex
	// ttl is more than a request read can last: fasthttp ends the read at
	// the server's ReadTimeout.
	ttl      time.Duration
	byHeader map[*fasthttp.RequestHeader]pendingHead
	swept    time.Time
}

// keep stores head for h with a copy of h's method and target.
func (p *pendingHeads) keep(h *fasthttp.RequestHeader, head pendingHead) {
	head.method = string(h.Method())
	head.target = string(h.RequestURI())
	head.added = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byHeader == nil {
		p.byHeader = map[*fasthttp.RequestHeader]pendingHead{}
	}
	if head.added.Sub(p.swept) > p.ttl {
		for key, old := range p.byHeader {
			if head.added.Sub(old.added) > p.ttl {
				delete(p.byHeader, key)
			}
		}
		p.swept = head.added
	}
	p.byHeader[h] = head
	p.count.Store(int64(len(p.byHeader)))
}

// take removes and returns the entry of h.
func (p *pendingHeads) take(h *fasthttp.RequestHeader) (pendingHead, bool) {
	if p.count.Load() == 0 {
		return pendingHead{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	head, ok := p.byHeader[h]
	if ok {
		delete(p.byHeader, h)
		p.count.Store(int64(len(p.byHeader)))
	}
	return head, ok
}

// requestLineFromError returns the method and normalized path from the
// request head that fasthttp quotes in err, or ok false when the quote
// contains no method and start of a target. complete is false when the
// quote ends inside the path, so that path is only its start. fasthttp
// resets ctx.Request.Header and releases its read buffer before it calls
// the error handler, so this quote is the only copy of the request line
// left.
//
// NOTE: the quote (", contents: %q" of the first 200 bytes) is fasthttp's
// message format as of v1.79.0, not a documented API. It is left out when
// Server.SecureErrorLogMessage is set, and the 431 then has Ollama's
// shape. The test TestHeaderLimitErrorShape fails if an upgrade changes
// the format.
func requestLineFromError(err error) (method, path []byte, complete, ok bool) {
	msg := err.Error()
	i := strings.Index(msg, contentsMarker)
	if i < 0 {
		return nil, nil, false, false
	}
	quoted, qerr := strconv.QuotedPrefix(msg[i+len(contentsMarker):])
	if qerr != nil {
		return nil, nil, false, false
	}
	head, qerr := strconv.Unquote(quoted)
	if qerr != nil {
		return nil, nil, false, false
	}

	// fasthttp skips empty lines before the request line.
	head = strings.TrimLeft(head, "\r\n")
	line, _, _ := strings.Cut(head, "\n")
	m, rest, found := strings.Cut(line, " ")
	if !found || !isToken(m) {
		return nil, nil, false, false
	}
	target, _, complete := strings.Cut(rest, " ")
	if !complete {
		// The quote may end inside the target. Its path is still whole
		// when the query string has started.
		target, _, complete = strings.Cut(target, "?")
	}
	if target == "" {
		return nil, nil, false, false
	}

	path, ok = targetPath([]byte(target))
	if !ok {
		return nil, nil, false, false
	}
	return []byte(m), path, complete, true
}

// targetPath returns the normalized path of a request target, as the
// server computes it, or ok false when the target does not parse.
func targetPath(target []byte) (path []byte, ok bool) {
	var u fasthttp.URI
	// The placeholder host makes "//x" a path, as it is for the server,
	// which always has a Host. An absolute-form target keeps its own host.
	if u.Parse([]byte("proxy"), target) != nil {
		return nil, false
	}
	return append([]byte(nil), u.Path()...), true
}

// contentsMarker precedes the quoted request head in fasthttp's header
// read errors.
const contentsMarker = ", contents: "

// isToken reports whether s is a non-empty HTTP token (RFC 9110 section
// 5.6.2), the syntax of a method.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// discardBody reads and drops the rest of a rejected request body, at
// most left bytes (any number when left is -1, for a chunked body) and
// for at most drainTimeout. Closing a connection with unread data makes
// the kernel send a reset, and a client still sending its body would then
// lose the 413 response. Nothing read is kept, so memory stays bounded.
func discardBody(ctx *fasthttp.RequestCtx, left int64) {
	discard(ctx.Conn(), left)
}

// discard is discardBody on conn.
func discard(conn net.Conn, left int64) {
	if conn == nil || left == 0 || left < -1 {
		return
	}
	// fasthttp may already have read the start of the body into its
	// buffer, so reading stops at a pause in the data rather than at a byte
	// count.
	deadline := time.Now().Add(drainTimeout)
	buf := make([]byte, 32<<10)
	for left != 0 && time.Now().Before(deadline) {
		_ = conn.SetReadDeadline(time.Now().Add(drainPause))
		n, err := conn.Read(buf)
		if left > 0 {
			left = max(left-int64(n), 0)
		}
		if err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
}

// bodyPrefetch is how much of a body fasthttp reads before the handler
// when it streams request bodies (readBodyWithStreaming in fasthttp
// v1.79.0): the whole body when it is no longer.
const bodyPrefetch = 8 << 10

// readBody reads the rest of a request body that fasthttp streams, so
// that PostBody returns the whole body. A body of known length gets a
// buffer that grows as its bytes arrive, up to that length, and a chunked
// one fails with fasthttp.ErrBodyTooLarge once it passes max_body_bytes.
// A body of known length over that limit never reaches readBody (see
// receiveHeader). read_timeout, set by fasthttp on the connection, bounds
// the read.
func (s *Server) readBody(ctx *fasthttp.RequestCtx) error {
	if !ctx.Request.IsBodyStream() {
		return nil
	}
	length := ctx.Request.Header.ContentLength()
	if length >= 0 && length <= bodyPrefetch {
		// fasthttp holds all of it, and Body copies it in place.
		ctx.Request.Body()
		return nil
	}
	limit := int(s.config().MaxBodyBytes)
	if limit <= 0 {
		limit = fasthttp.DefaultMaxRequestBodySize
	}
	body, err := readLimited(ctx.RequestBodyStream(), length, limit)
	if err != nil {
		return err
	}
	ctx.Request.SetBodyRaw(body)
	return nil
}

// readLimited reads r to its end. length is the body's Content-Length,
// or -1 when it is not known, and the buffer never grows beyond it. A
// body that passes limit bytes fails with fasthttp.ErrBodyTooLarge, and
// one that ends before length bytes with io.ErrUnexpectedEOF.
func readLimited(r io.Reader, length, limit int) ([]byte, error) {
	end := limit + 1
	if length >= 0 {
		end = length
	}
	buf := make([]byte, 0, min(end, 64<<10))
	for {
		if len(buf) >= end {
			if length >= 0 {
				return buf, nil
			}
			return nil, fasthttp.ErrBodyTooLarge
		}
		if len(buf) == cap(buf) {
			// Doubling, so a body costs at most about twice its length
			// while it arrives.
			buf = slices.Grow(buf, min(cap(buf), end-len(buf)))
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), end)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			if length >= 0 && len(buf) < length {
				return nil, io.ErrUnexpectedEOF
			}
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// drainPause ends discardBody when the client sends nothing for this long.
const drainPause = 200 * time.Millisecond

// drainTimeout is the maximum time discardBody spends reading.
const drainTimeout = 5 * time.Second

// HTTPLogger returns the logger for fasthttp's own messages, for servers
// of the proxy's routes outside Serve, such as that of admin.listen.
func (s *Server) HTTPLogger() fasthttp.Logger {
	logger := fasthttpLogger{log: s.log}
	if s.m != nil {
		logger.writeTimeouts = s.m.WriteTimeouts
	}
	return logger
}

// fasthttpLogger sends fasthttp's own messages to slog at Debug. The end
// of a connection whose client did not read a response within
// write_timeout goes to Info instead, with the client's address, and
// counts in writeTimeouts when that is set.
type fasthttpLogger struct {
	log           *slog.Logger
	writeTimeouts prometheus.Counter
}

func (l fasthttpLogger) Printf(format string, args ...any) {
	if client, ok := writeTimedOut(args); ok {
		l.log.Info(writeTimeoutMessage, "client", client)
		if l.writeTimeouts != nil {
			l.writeTimeouts.Inc()
		}
		return
	}
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("fasthttp", "message", sprintf(format, args...))
	}
}

// writeTimeoutMessage is logged when a client connection closes because
// the client did not take a response in time.
const writeTimeoutMessage = "client did not read the response in time " +
	"(write_timeout, or upstream.idle on a stream), closing the connection"

// writeTimedOut returns the client's address when one of args is the error
// of a write to the client that timed out. fasthttp's worker pool passes
// the error that ended a connection to Logger.Printf as an argument. Such
// an error comes from the deadline of limitWrite, or from the one that a
// stream relayed line by line sets for each line (relay.limitClientWrite).
func writeTimedOut(args []any) (client string, ok bool) {
	for _, arg := range args {
		err, isErr := arg.(error)
		if !isErr {
			continue
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "write" && oe.Timeout() && oe.Addr != nil {
			return oe.Addr.String(), true
		}
	}
	return "", false
}

// handleOperational serves the admin routes, metrics and probes.
func (s *Server) handleOperational(ctx *fasthttp.RequestCtx, rt route) {
	rs := s.begin(ctx, rt)
	switch rt.how {
	case handleAdmin:
		s.serveAdmin(ctx, rt)
	case handleMetrics:
		s.serveMetrics(ctx)
	case handleHealthz:
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok")
	case handleReadyz:
		s.serveReady(ctx)
	}
	s.end(rs)
}
