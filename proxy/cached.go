package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/cache"
)

// storeTimeout is the maximum time for writing a response to the cache
// after it was sent, so that a slow Redis cannot hold a request open for
// long.
const storeTimeout = 2 * time.Second

// cacheable reports whether the cache may store the responses of rt.
func cacheable(rt route) bool {
	return rt.inference && rt.name != "/v1/responses" && rt.name != "/v1/messages"
}

// serveCached serves a request through the response cache. A hit is sent
// at once in the form the client requested. Identical non-streaming misses
// wait for one upstream request and receive its response, error or not,
// and a miss is stored when its response completes. It reports whether it
// served the request. False means that the request is not cacheable, or
// names a model that no node lists (see modelUnlisted), and should be
// forwarded as usual.
func (s *Server) serveCached(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields) bool {
	c := s.cache
	if c == nil || !cacheable(rt) || f.preload || f.unload {
		return false
	}
	if s.modelUnlisted(f.model) {
		setCacheResult(ctx, rs, cache.ResultBypass)
		return false
	}
	noCache, noStore := cache.ParseCacheControl(string(ctx.Request.Header.Peek("Cache-Control")))
	plan := c.Classify(cache.Request{Route: rt.name, Body: ctx.PostBody(),
		NoCache: noCache, NoStore: noStore, KeyName: rs.key})
	switch plan.Kind {
	case cache.KindResponse:
		s.serveCachedResponse(ctx, rt, rs, f, plan)
	case cache.KindEmbed:
		s.serveCachedEmbeddings(ctx, rt, rs, f, plan)
	default:
		setCacheResult(ctx, rs, cache.ResultBypass)
		return false
	}
	return true
}

func setCacheResult(ctx *fasthttp.RequestCtx, rs *reqState, r cache.Result) {
	rs.cache = string(r)
	ctx.Response.Header.Set("X-LLMProxy-Cache", string(r))
}

// sendEntry responds with a cached entry rendered for this request. A
// stream is sent as the proxy sends a live one: chunked, with the same
// headers, or to an HTTP/1.0 client, ended by closing the connection.
func (s *Server) sendEntry(ctx *fasthttp.RequestCtx, rs *reqState, e *cache.Entry,
	plan cache.Plan, r cache.Result) {
	body, ct := e.Render(plan)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType(ct)
	setCacheResult(ctx, rs, r)
	rs.ttfb = elapsed(rs.start)
	if !plan.Stream {
		ctx.SetBody(body)
		return
	}
	setStreamHeaders(&ctx.Response.Header)
	if !ctx.Request.Header.IsHTTP11() {
		s.handedOver.add()
		streamHTTP10(ctx, replayBody(body), s.handedOver.done)
		return
	}
	// A body stream of unknown size is sent chunked.
	ctx.SetBodyStream(bytes.NewReader(body), -1)
}

// replayBody is a cached stream that streamHTTP10 writes to an HTTP/1.0
// client.
type replayBody []byte

func (b replayBody) copyTo(w io.Writer) (int64, error) {
	n, err := w.Write(b)
	return int64(n), err
}

func (replayBody) Close() error { return nil }

func (s *Server) serveCachedResponse(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields, plan cache.Plan) {
	c := s.cache
	if e, r := c.Lookup(context.Background(), plan); e != nil {
		s.sendEntry(ctx, rs, e, plan, r)
		return
	}
	if plan.Stream {
		// A streamed miss is relayed as it arrives and stored when it
		// completes.
		// NOTE: streamed misses are not coalesced with identical requests,
		// because the first request's response leaves the handler before it
		// is complete.
		f.store = &pendingStore{cache: c, plan: plan, agg: c.NewAggregator(plan)}
		setCacheResult(ctx, rs, cache.ResultMiss)
		s.forward(ctx, rt, rs, f)
		return
	}
	wctx, watch := watchClient(context.Background(), ctx.Conn())
	e, fetched, err := c.Do(wctx, plan, func() (*cache.Entry, error) {
		watch.stop()
		setCacheResult(ctx, rs, cache.ResultMiss)
		s.forward(ctx, rt, rs, f)
		return s.storeResponse(ctx, plan)
	})
	watch.finish()
	s.finishCoalesced(ctx, rs, plan, e, fetched, err)
}

// finishCoalesced responds to a request that cache.Do served, unless its
// own fetch already did: with the entry or the sharedResponse of the
// request it waited for, or by closing the connection of a client that
// went away while it waited.
func (s *Server) finishCoalesced(ctx *fasthttp.RequestCtx, rs *reqState, plan cache.Plan,
	e *cache.Entry, fetched bool, err error) {
	var shared *sharedResponse
	switch {
	case fetched:
		// The request's own fetch sent the response.
	case e != nil:
		s.sendEntry(ctx, rs, e, plan, cache.ResultMiss)
		rs.cache = "coalesced"
	case errors.As(err, &shared):
		shared.send(ctx, rs)
		rs.cache = "coalesced"
	default:
		rs.status = StatusClientClosed
		ctx.SetConnectionClose()
	}
}

// sharedResponse is a non-streamed response that the leader of coalesced
// requests sent but did not store, such as an error of a node or of the
// proxy, or a 200 that the cache rejected. cache.Do returns it as the
// error of every request that waited for the leader, and each sends it as
// its own response. The waiters share the leader's route, because the
// route is part of the key, so the body has the shape their clients
// expect.
//
// NOTE: a waiter also receives a 503 that the leader got from the queue
// of its priority class (queue full, or max_wait passed), although the
// waiter's own class may be another.
type sharedResponse struct {
	status      int
	contentType string
	retryAfter  string
	node        string // the leader's X-LLMProxy-Node
	body        []byte
}

func (r *sharedResponse) Error() string {
	return "an identical request in flight received status " + itoa(r.status)
}

// shareResponse returns the non-streamed response in ctx as a
// sharedResponse, or nil when the client received no response that
// another client could use: it went away, or the response outlives the
// handler.
func shareResponse(ctx *fasthttp.RequestCtx) error {
	if outlivesHandler(ctx) {
		return nil
	}
	h := &ctx.Response.Header
	return &sharedResponse{
		status:      ctx.Response.StatusCode(),
		contentType: string(h.ContentType()),
		retryAfter:  string(h.Peek("Retry-After")),
		node:        string(h.Peek("X-LLMProxy-Node")),
		// The response buffer goes back to fasthttp's pool when the
		// leader's handler returns.
		body: bytes.Clone(ctx.Response.Body()),
	}
}

// send responds with r, marked as a cache miss.
func (r *sharedResponse) send(ctx *fasthttp.RequestCtx, rs *reqState) {
	ctx.SetStatusCode(r.status)
	ctx.SetContentType(r.contentType)
	if r.retryAfter != "" {
		ctx.Response.Header.Set("Retry-After", r.retryAfter)
	}
	if r.node != "" {
		ctx.Response.Header.Set("X-LLMProxy-Node", r.node)
	}
	ctx.SetBody(r.body)
	setCacheResult(ctx, rs, cache.ResultMiss)
	rs.ttfb = elapsed(rs.start)
}

// storeResponse stores the non-streamed response that forward left in
// ctx. It returns the entry for the requests that waited for this one, or
// a sharedResponse when the response is not stored, see shareResponse.
func (s *Server) storeResponse(ctx *fasthttp.RequestCtx, plan cache.Plan) (*cache.Entry, error) {
	if ctx.Response.StatusCode() != fasthttp.StatusOK || outlivesHandler(ctx) {
		return nil, shareResponse(ctx)
	}
	agg := s.cache.NewAggregator(plan)
	_, _ = agg.Write(ctx.Response.Body())
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	e, err := s.cache.Store(sctx, plan, agg, true)
	if err != nil {
		if !errors.Is(err, cache.ErrNotCacheable) {
			s.log.Debug("response not cached", "route", plan.Route, "error", err)
		}
		if !s.cache.Waiting(plan) {
			// A body the cache rejected may be large, and is copied only
			// for requests that wait for it. One that starts waiting
			// after this check leads a fetch of its own.
			return nil, nil
		}
		return nil, shareResponse(ctx)
	}
	return e, nil
}

// outlivesHandler reports whether the response in ctx is sent after the
// handler returns: a body stream, or a stream on a connection taken over
// from fasthttp. Its body is not in ctx, and reading it with
// Response.Body would consume the stream and end the request early.
// deliver relays a stream only to a request for one, so the stores of
// non-streamed responses do not meet one. The check keeps it that way.
func outlivesHandler(ctx *fasthttp.RequestCtx) bool {
	return ctx.Response.IsBodyStream() || ctx.Hijacked()
}

// serveCachedEmbeddings serves the cached inputs of an embedding request
// from the cache and sends only the missing ones to a node.
func (s *Server) serveCachedEmbeddings(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields, plan cache.Plan) {
	c := s.cache
	b := c.LookupEmbeddings(context.Background(), plan)
	if e := b.Entry(); e != nil {
		s.sendEntry(ctx, rs, e, plan, b.Result())
		return
	}
	f.body = b.UpstreamBody()
	wctx, watch := watchClient(context.Background(), ctx.Conn())
	e, fetched, err := c.Do(wctx, plan, func() (*cache.Entry, error) {
		watch.stop()
		setCacheResult(ctx, rs, b.Result())
		s.forward(ctx, rt, rs, f)
		return s.storeEmbeddings(ctx, rs, b, plan)
	})
	watch.finish()
	s.finishCoalesced(ctx, rs, plan, e, fetched, err)
}

// storeEmbeddings stores the vectors a node computed for the missing
// inputs and responds to the whole request, in input order. It returns
// the entry or the sharedResponse for the requests that waited for this
// one, as storeResponse does.
func (s *Server) storeEmbeddings(ctx *fasthttp.RequestCtx, rs *reqState, b *cache.Batch,
	plan cache.Plan) (*cache.Entry, error) {
	if ctx.Response.StatusCode() != fasthttp.StatusOK || outlivesHandler(ctx) {
		return nil, shareResponse(ctx)
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	e, err := s.cache.StoreEmbeddings(sctx, b, ctx.Response.Body())
	if err != nil {
		if b.Partial() {
			// The parser's error may quote the node's body, so only the
			// log gets it.
			msg := "node " + rs.node + " returned an invalid embedding response"
			writeError(ctx, rs.route, fasthttp.StatusBadGateway, msg)
			rs.err = msg + ": " + err.Error()
		}
		return nil, shareResponse(ctx)
	}
	if b.Partial() {
		body, ct := e.Render(plan)
		ctx.SetContentType(ct)
		ctx.SetBody(body)
	}
	return e, nil
}

// pendingStore collects a streamed response for the cache while it is
// relayed, and stores it if the stream completes.
type pendingStore struct {
	cache *cache.Cache
	plan  cache.Plan
	agg   *cache.Aggregator
}

func (p *pendingStore) finish(complete bool) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	_, _ = p.cache.Store(ctx, p.plan, p.agg, complete)
}
