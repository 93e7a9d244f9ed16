package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

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
// A stream that carries an error becomes the error response Ollama sends
// for a failed generation: 500 with the message, in the route's shape. On
// other routes, and for a stream that does not merge because it lacks its
// final line or [DONE], the client gets the node's bytes as they came,
// with the node's Content-Type. A body that
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
	if msg, ok := streamError(stream, sse); ok {
		// Ollama's waitForStream (server/routes.go) sends such a request's
		// error as {"error":...} with status 500 unless the error names
		// another.
		writeError(ctx, rt, fasthttp.StatusInternalServerError, msg)
		return
	}
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

// streamError returns the message of the first error in a stream: an
// NDJSON line or SSE data payload whose object has an "error" string, or
// an "error" object with a "message" string (OpenAI's shape).
func streamError(stream []byte, sse bool) (string, bool) {
	var p fastjson.Parser
	for line := range bytes.Lines(stream) {
		line = bytes.TrimSpace(line)
		if sse {
			data, ok := bytes.CutPrefix(line, []byte("data:"))
			if !ok {
				continue
			}
			line = bytes.TrimSpace(data)
		}
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		v, err := p.ParseBytes(line)
		if err != nil {
			continue
		}
		e := v.Get("error")
		switch {
		case e == nil:
		case e.Type() == fastjson.TypeString:
			return string(e.GetStringBytes()), true
		case e.Type() == fastjson.TypeObject && e.Get("message") != nil &&
			e.Get("message").Type() == fastjson.TypeString:
			return string(e.GetStringBytes("message")), true
		}
	}
	return "", false
}
