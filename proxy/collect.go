package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/cache"
)

// collectStream turns a stream that the node sent to a request for one
// whole response ("stream": false, or a route that never streams) into
// that response. deliver has read the stream whole into ctx's body, with
// the node's status and headers.
//
// Ollama sends one JSON object then (see the *_nostream.body recordings of
// Ollama 0.25 in cache/testdata), but another proxy or an
// Ollama-compatible server may stream. The client gets what it requested,
// as from Ollama: on the generation routes the stream merged into the one
// object that a cache hit renders for the request (see cache.MergeStream).
// On other routes, and for a stream that does not merge because it lacks
// its final line or [DONE] or carries an error, the client gets the
// node's bytes as they came, with the node's Content-Type. A body that
// the node cuts fails like any other and may be retried.
//
// Reading the stream whole, rather than relaying it, keeps the request on
// the path of non-streamed responses. Nothing reaches the client before
// the body is complete, so a failed read can still be retried on another
// node. The handler also holds the finished response when it stores it in
// the cache or hands it to coalesced requests. A merged response is cached
// like any other, because it is the form that a hit renders anyway. A
// stream that did not merge fails the cache's parse as well and is not
// stored.
func (s *Server) collectStream(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields, stream []byte) {
	sse := bytes.HasPrefix(ctx.Response.Header.ContentType(), []byte("text/event-stream"))
	s.observeStream(rs, stream, sse, int64(len(ctx.PostBody())/4))
	merged, contentType, err := cache.MergeStream(rt.name, f.rawModel, stream)
	if err != nil {
		s.log.Debug("node streamed a response requested whole, sending the stream as it came",
			"request_id", rs.id, "node", rs.node, "error", err)
		return
	}
	ctx.SetContentType(contentType)
	// SetBody copies merged over the buffer that stream is part of, which
	// is safe because merged does not share it.
	ctx.SetBody(merged)
}

// observeStream reads the token counts of a stream held whole, as a relay
// reads them from each line, and charges an estimate when it has none.
func (s *Server) observeStream(rs *reqState, stream []byte, sse bool, promptEstimate int64) {
	var chunks int64
	for line := range bytes.Lines(stream) {
		if final, ok := finalObject(line, sse); ok {
			s.observeFinal(rs, final)
		}
		if isContentLine(line) {
			chunks++
		}
	}
	rs.estimateTokens(chunks, promptEstimate)
}
