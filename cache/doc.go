// Package cache is llmproxy's response cache for Ollama responses, in two
// tiers: L1 in process memory (ristretto, bounded in bytes) and L2 in
// Redis, shared by every proxy instance. An L2 hit fills L1, and Purge
// reaches the L1 of every instance through a Redis pub/sub channel. Redis
// trouble is never an error, except for Purge: every Redis call is bounded
// by redis.timeout, and on failure the cache works from L1 alone and
// counts the fallback.
//
// Embedding requests are always cached, each input on its own, so a batch
// with some cached inputs sends only the others upstream. Generation
// requests are cached when their response is deterministic. A response is
// stored once, in its non-stream form, and rendered as a stream or as one
// object, whichever the request expects.
//
// A handler uses the cache in this order:
//
//	noCache, noStore := cache.ParseCacheControl(cacheControlHeader)
//	plan := c.Classify(cache.Request{Route: path, Body: body, NoCache: noCache, NoStore: noStore})
//	switch plan.Kind {
//	case cache.KindNone:
//		// forward as is; X-LLMProxy-Cache: bypass
//	case cache.KindResponse:
//		if e, res := c.Lookup(ctx, plan); e != nil {
//			// send e.Render(plan); X-LLMProxy-Cache: res
//		}
//		e, fetched, err := c.Do(ctx, plan, func() (*cache.Entry, error) {
//			agg := c.NewAggregator(plan)
//			// forward, copying the response to the client and to agg
//			e, _ := c.Store(ctx, plan, agg, status == 200 && streamEndedWell)
//			// without e: return nil and an error that describes the response
//			return e, nil
//		})
//		// !fetched: send e.Render(plan), or the response that err describes
//		// unless err is ctx.Err()
//	case cache.KindEmbed:
//		b := c.LookupEmbeddings(ctx, plan)
//		if e := b.Entry(); e != nil {
//			// send e.Render(plan); X-LLMProxy-Cache: b.Result()
//		}
//		// in Do's fetch: send b.UpstreamBody(), then
//		// e, err := c.StoreEmbeddings(ctx, b, response) and send e.Render(plan)
//	}
package cache
