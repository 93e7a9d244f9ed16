package cache

import (
	"fmt"
	"math"
)

// MergeStream returns the one JSON object that a generation request with
// "stream": false expects, built from a whole streamed response to it:
// NDJSON lines on /api/generate and /api/chat, SSE events on
// /v1/chat/completions and /v1/completions. The object is the one that a
// cache hit renders for such a request (see Entry.Render), with model as
// the request named it.
//
// It returns an error wrapping ErrNotCacheable for other routes, and one
// wrapping ErrIncomplete or ErrInvalidResponse for a stream without its
// final line or [DONE], one that carries an error, or one that is not in
// the route's format.
func MergeStream(routeName, model string, stream []byte) (body []byte, contentType string, err error) {
	r := routes[routeName]
	if r == routeUnknown || r.isEmbedding() {
		return nil, "", fmt.Errorf("%w: route %s has no merged form", ErrNotCacheable, routeName)
	}
	// The caller holds the whole stream already, so no size limit applies.
	agg := &Aggregator{route: r, maxBytes: math.MaxInt64}
	_, _ = agg.Write(stream)
	merged, err := agg.finish()
	if err != nil {
		return nil, "", err
	}
	e := Entry{route: r, response: merged}
	body, contentType = e.Render(Plan{Route: routeName, route: r, requestModel: model})
	return body, contentType, nil
}
