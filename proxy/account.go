package proxy

import (
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/ratelimit"
	"github.com/llmproxy/llmproxy/statuspage"
)

// reqState is the record of one request for the access log and the
// metrics. Records are pooled: begin takes one from reqStates and end puts
// it back, so a holder that keeps a record past its end would share it
// with a later request.
type reqState struct {
	requestFields
	// gen is odd while a request owns the record and even while the
	// record is in reqStates, because begin and end each add one. A holder
	// that saved gen when it got the record, its owner token, can tell
	// whether the record is still its own.
	gen atomic.Uint64
}

// requestFields are the fields of a reqState that begin sets and end
// clears.
type requestFields struct {
	id     string
	start  time.Time
	method string
	route  route
	// path is the request path of a fallback route, logged in place of
	// the route's name, which is the same for every such path. It is ""
	// on every other route.
	path  string
	model string
	// changedModel is the model, by wire.ModelKey, whose cached responses
	// a delete, copy, create or pull makes stale once it succeeds on a
	// node. It is the destination of a copy, the model the body names on
	// the other three routes, and "" on every other route.
	changedModel string
	// modelListed is set when the balancer placed the request by its
	// model, which a node listed then, so the model is a bounded label
	// even if the node leaves before the request ends.
	modelListed bool
	node        string
	status      int
	// ttfb is the time from arrival to the first byte of the response body
	// leaving the proxy, or 0 when nothing was sent.
	ttfb             time.Duration
	promptTokens     int64
	completionTokens int64
	cache            string
	class            string
	key              string
	// client identifies the client for fair queuing by key name or address.
	client string
	// lease is the node lease of a routed request. observeFinal passes it
	// the timings the node reports.
	lease *balancer.Lease
	// apiKey is the client's key, nil for anonymous clients.
	apiKey *ratelimit.Key
	// reservation is the tokens and slot admitted for the request, settled
	// when it ends.
	reservation *ratelimit.Reservation
	retries     int
	err         string
	// proxyEnded is set when the proxy itself ended a stream before the
	// node finished it: at shutdown or at upstream.total.
	proxyEnded bool
	// deferred is set when a streamed response outlives the handler. The
	// relay then ends the request when the stream ends.
	deferred bool
	// ctx is nil once the handler has returned.
	ctx *fasthttp.RequestCtx
}

// begin starts a request's record and sets the X-Request-Id response
// header. It reuses the client's X-Request-Id when that is at most 128
// bytes long.
func (s *Server) begin(ctx *fasthttp.RequestCtx, rt route) *reqState {
	id := ctx.Request.Header.Peek("X-Request-Id")
	rs := reqStates.Get().(*reqState)
	rs.requestFields = requestFields{
		start:  time.Now(),
		method: methodString(ctx.Method()),
		route:  rt,
		class:  "standard",
		ctx:    ctx,
	}
	rs.gen.Add(1)
	if len(id) == 0 || len(id) > 128 {
		var buf [64]byte
		id = strconv.AppendUint(append(buf[:0], s.idPrefix...), s.idSeq.Add(1), 16)
	}
	rs.id = string(id)
	ctx.Response.Header.SetCanonical(headerRequestID, id)
	return rs
}

// headerRequestID is the canonical name of the request id header.
var headerRequestID = []byte("X-Request-Id")

// reqStates recycles request records: end is the last use of each.
var reqStates = sync.Pool{New: func() any { return new(reqState) }}

// methodString returns the usual methods without allocating.
func methodString(m []byte) string {
	switch string(m) {
	case fasthttp.MethodPost:
		return fasthttp.MethodPost
	case fasthttp.MethodGet:
		return fasthttp.MethodGet
	case fasthttp.MethodHead:
		return fasthttp.MethodHead
	case fasthttp.MethodDelete:
		return fasthttp.MethodDelete
	case fasthttp.MethodOptions:
		return fasthttp.MethodOptions
	}
	return string(m)
}

// end records a finished request, metrics and one access log line, and
// recycles rs. Only the request that owns rs may call it, once (see
// endAs).
func (s *Server) end(rs *reqState) { s.endAs(rs, rs.gen.Load()) }

// endAs ends rs for the holder of token, the owner token that it saved
// when it got rs. When rs was ended since, endAs reports the bug and
// changes nothing, because rs may belong to another request by now.
func (s *Server) endAs(rs *reqState, token uint64) {
	if token%2 == 0 || !rs.gen.CompareAndSwap(token, token+1) {
		s.reportStaleEnd()
		return
	}
	if rs.ctx != nil && rs.status == 0 {
		rs.status = rs.ctx.Response.StatusCode()
	}
	if rs.err == "" && rs.status >= 400 && rs.ctx != nil {
		// An error that the proxy, or a node, sent in full: log its message.
		rs.err = bodyErrorMessage(&rs.ctx.Response)
	}
	model := s.requestModelLabel(rs)
	if !rs.route.inference {
		// Only routes that run a model use tokens. The lines of a pull or
		// create stream would otherwise count as completion tokens.
		rs.promptTokens, rs.completionTokens = 0, 0
	}
	if rs.reservation != nil {
		rs.settle() // the limiter counts the tokens it settles
	} else {
		s.countTokens(rs, model)
	}
	d := time.Since(rs.start)
	node := rs.node
	if node == "" {
		node = "none"
	}
	if s.m != nil {
		ms := s.m.Request(rs.route.name, model, node, rs.status)
		ms.Requests.Inc()
		ms.Duration.Observe(d.Seconds())
		if rs.ttfb > 0 && rs.route.inference {
			s.m.TimeToFirstToken(model).Observe(rs.ttfb.Seconds())
		}
	}
	if rs.status >= 500 || rs.status == 429 {
		// Never a prompt or a key: only what identifies the request.
		s.recentErrors.Add(statuspage.ErrorRecord{RequestID: rs.id, Route: rs.route.name,
			Model: rs.model, Node: rs.node, Status: rs.status, Error: rs.err})
	}
	level := slog.LevelInfo
	if rs.route.how == handleRoot || rs.route.how == handleAdmin {
		level = slog.LevelDebug
	}
	if s.log.Enabled(nil, level) {
		s.logRequest(rs, level, d)
	}
	rs.requestFields = requestFields{}
	reqStates.Put(rs)
}

// logRequest writes the access log line of rs, which took d.
func (s *Server) logRequest(rs *reqState, level slog.Level, d time.Duration) {
	route := rs.route.name
	if rs.path != "" {
		route = rs.path
	}
	s.log.LogAttrs(nil, level, "request",
		slog.String("request_id", rs.id),
		slog.String("method", rs.method),
		slog.String("route", route),
		slog.String("model", rs.model),
		slog.String("node", rs.node),
		slog.Int("status", rs.status),
		slog.Duration("duration", d),
		slog.Duration("ttfb", rs.ttfb),
		slog.Int64("prompt_tokens", rs.promptTokens),
		slog.Int64("completion_tokens", rs.completionTokens),
		slog.String("cache", rs.cache),
		slog.String("class", rs.class),
		slog.String("key", rs.key),
		slog.Int("retries", rs.retries),
		slog.String("error", rs.err),
	)
}

// endHandled ends the request that handle began with the owner token
// token, unless its response outlives the handler (rs.deferred) and the
// body stream ends it. Reading the body of such a response in the handler
// would end the request early, through the stream's Close, and is a bug
// that endHandled reports.
func (s *Server) endHandled(rs *reqState, token uint64) {
	if rs.gen.Load() != token {
		s.reportStaleEnd()
		return
	}
	if !rs.deferred {
		s.endAs(rs, token)
	}
}

// panicOnStaleEnd makes reportStaleEnd panic. This package's tests set it,
// so that a request record ended twice fails the test that ends it.
var panicOnStaleEnd bool

// reportStaleEnd reports an end of a request record that its caller no
// longer owns.
func (s *Server) reportStaleEnd() {
	const msg = "request record ended twice, ignoring the second end (a bug in llmproxy)"
	if panicOnStaleEnd {
		panic(msg)
	}
	s.log.Error(msg)
}

// requestModelLabel is modelLabel of the request's model, without a
// search of the nodes when the balancer placed the request by it.
func (s *Server) requestModelLabel(rs *reqState) string {
	if rs.modelListed && rs.model != "" {
		return rs.model
	}
	return s.modelLabel(rs.model)
}

// modelLabel bounds the model label. Only models that some node lists are
// named, "" becomes "none", and every other model counts as "other"
// (metrics.OtherModel).
func (s *Server) modelLabel(model string) string {
	if model == "" {
		return "none"
	}
	if s.bal.HasModel(model) {
		return model
	}
	return "other"
}

// observeFinal reads the token counts and timings of a response's final
// object: Ollama's done line, its embed response, or an OpenAI object with
// usage.
func (s *Server) observeFinal(rs *reqState, line []byte) {
	st := scanFinal(line)
	if st.usage || st.embed {
		rs.promptTokens, rs.completionTokens = st.promptTokens, st.completionTokens
		return
	}
	if !st.done {
		return
	}
	rs.promptTokens, rs.completionTokens = st.promptTokens, st.completionTokens
	// A node that a reload removed during the request has had its gauges
	// removed, and setting the rate would bring one back.
	if s.m != nil && st.evalNs > 0 && rs.completionTokens > 0 && rs.node != "" &&
		s.bal.Node(rs.node) != nil {
		tps := float64(rs.completionTokens) / (float64(st.evalNs) / 1e9)
		s.m.TokenRate(rs.node, s.requestModelLabel(rs)).Set(tps)
	}
	if rs.lease != nil {
		rs.lease.Observe(time.Duration(st.loadNs), time.Duration(st.totalNs),
			rs.completionTokens, time.Duration(st.evalNs))
	}
}

// estimateTokens charges a stream that carried no token counts one token
// per chunk, because Ollama streams about one token per chunk, and
// promptEstimate for the prompt. Such a stream ended before its final line
// or is an OpenAI stream without usage, and the estimate keeps a client
// that leaves early within its key's token limits.
func (rs *reqState) estimateTokens(chunks, promptEstimate int64) {
	if rs.promptTokens == 0 && rs.completionTokens == 0 && chunks > 0 {
		rs.completionTokens, rs.promptTokens = chunks, promptEstimate
	}
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// countTokens counts the tokens of a request that no limiter settled.
func (s *Server) countTokens(rs *reqState, model string) {
	if s.m == nil {
		return
	}
	key := rs.key
	if key == "" {
		key = ratelimit.AnonymousLabel
	}
	if rs.promptTokens <= 0 && rs.completionTokens <= 0 {
		return
	}
	c := s.m.TokensOf(key, model)
	if rs.promptTokens > 0 {
		c.Prompt.Add(float64(rs.promptTokens))
	}
	if rs.completionTokens > 0 {
		c.Completion.Add(float64(rs.completionTokens))
	}
}
