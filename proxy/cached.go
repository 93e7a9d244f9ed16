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
// wait for one upstream request, and a miss is stored when its response
// completes. It reports whether it served the request. False means that
// the request is not cacheable and should be forwarded as usual.
func (s *Server) serveCached(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields) bool {
	c := s.cache
	if c == nil || !cacheable(rt) || f.preload || f.unload {
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
	e, fetched, err := c.Do(wctx, plan, func() *cache.Entry {
		watch.stop()
		setCacheResult(ctx, rs, cache.ResultMiss)
		s.forward(ctx, rt, rs, f)
		return s.storeResponse(ctx, plan)
	})
	watch.finish()
	switch {
	case err != nil:
		rs.status = StatusClientClosed
		ctx.SetConnectionClose()
	case !fetched && e != nil:
		s.sendEntry(ctx, rs, e, plan, cache.ResultMiss)
		rs.cache = "coalesced"
	}
}

// storeResponse stores the non-streamed response that forward left in
// ctx, and returns the entry for the requests that waited for it.
func (s *Server) storeResponse(ctx *fasthttp.RequestCtx, plan cache.Plan) *cache.Entry {
	if ctx.Response.StatusCode() != fasthttp.StatusOK || outlivesHandler(ctx) {
		return nil
	}
	agg := s.cache.NewAggregator(plan)
	_, _ = agg.Write(ctx.Response.Body())
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	e, err := s.cache.Store(sctx, plan, agg, true)
	if err != nil && !errors.Is(err, cache.ErrNotCacheable) {
		s.log.Debug("response not cached", "route", plan.Route, "error", err)
	}
	return e
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
	e, fetched, err := c.Do(wctx, plan, func() *cache.Entry {
		watch.stop()
		setCacheResult(ctx, rs, b.Result())
		s.forward(ctx, rt, rs, f)
		return s.storeEmbeddings(ctx, rs, b, plan)
	})
	watch.finish()
	switch {
	case err != nil:
		rs.status = StatusClientClosed
		ctx.SetConnectionClose()
	case !fetched && e != nil:
		s.sendEntry(ctx, rs, e, plan, cache.ResultMiss)
		rs.cache = "coalesced"
	}
}

// storeEmbeddings stores the vectors a node computed for the missing
// inputs and responds to the whole request, in input order.
func (s *Server) storeEmbeddings(ctx *fasthttp.RequestCtx, rs *reqState, b *cache.Batch, plan cache.Plan) *cache.Entry {
	if ctx.Response.StatusCode() != fasthttp.StatusOK || outlivesHandler(ctx) {
		return nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	e, err := s.cache.StoreEmbeddings(sctx, b, ctx.Response.Body())
	if err != nil {
		if b.Partial() {
			writeError(ctx, rs.route, fasthttp.StatusBadGateway,
				"node returned an invalid embedding response: "+err.Error())
		}
		return nil
	}
	if b.Partial() {
		body, ct := e.Render(plan)
		ctx.SetContentType(ct)
		ctx.SetBody(body)
	}
	return e
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
