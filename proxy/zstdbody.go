package proxy

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// zstdDecoder decodes zstd request bodies whole with DecodeAll, which is
// safe for concurrent use. It starts no goroutines, so a decoder that a
// new limit replaces needs no Close.
type zstdDecoder struct {
	limit int
	dec   *zstd.Decoder
}

// decodedBodies pools the buffers that decoded bodies are written to. A
// decoded body replaces the request body, and the compressed one comes
// back to the pool in its place.
var decodedBodies sync.Pool

// zstdDecoderFor returns the shared decoder for limit, making a new one
// when limit differs from the one held in current.
func zstdDecoderFor(current *atomic.Pointer[zstdDecoder], limit int) (*zstdDecoder, error) {
	if d := current.Load(); d != nil && d.limit == limit {
		return d, nil
	}
	dec, err := zstd.NewReader(nil,
		// WithDecoderMaxMemory bounds what DecodeAll writes, and the
		// window that a frame may declare.
		zstd.WithDecoderMaxMemory(uint64(limit)),
		// One block decoder per CPU: DecodeAll calls beyond that wait.
		zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, err
	}
	d := &zstdDecoder{limit: limit, dec: dec}
	current.Store(d)
	return d, nil
}

// decodeZstdBody replaces a request body sent with Content-Encoding zstd
// by its decoded form, as Ollama's /v1/responses middleware decodes it
// (middleware/openai.go, v0.17.4). It removes the Content-Encoding
// header and sets the Content-Length of the decoded body, so the node
// gets plain JSON. A body that decodes to more than max_body_bytes gets
// 413, and one that is not valid zstd 400, and decodeZstdBody then
// returns false with the error written.
//
// NOTE: DecodeAll checks the limit after each frame, so a body of several
// frames may briefly hold up to twice max_body_bytes before it is
// rejected.
func (s *Server) decodeZstdBody(ctx *fasthttp.RequestCtx, rt route) bool {
	if !isZstd(ctx.Request.Header.ContentEncoding()) {
		return true
	}
	limit := int(s.config().MaxBodyBytes)
	if limit <= 0 {
		limit = fasthttp.DefaultMaxRequestBodySize
	}
	d, err := zstdDecoderFor(&s.zstd, limit)
	if err != nil {
		s.log.Error("failed to create a zstd decoder", "limit", limit, "error", err)
		writeError(ctx, rt, fasthttp.StatusInternalServerError, "failed to create a zstd decoder: "+err.Error())
		return false
	}

	var buf []byte
	if b, ok := decodedBodies.Get().(*[]byte); ok {
		buf = (*b)[:0]
	}
	decoded, err := d.dec.DecodeAll(ctx.PostBody(), buf)
	if err == nil && len(decoded) > limit {
		err = zstd.ErrDecoderSizeExceeded
	}
	if err != nil {
		putDecodedBody(decoded)
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			writeError(ctx, rt, fasthttp.StatusRequestEntityTooLarge,
				"decoded request body exceeds the limit of "+strconv.Itoa(limit)+
					" bytes (max_body_bytes)")
			return false
		}
		writeError(ctx, rt, fasthttp.StatusBadRequest,
			"invalid zstd request body (Content-Encoding: zstd): "+err.Error())
		return false
	}
	putDecodedBody(ctx.Request.SwapBody(decoded))
	ctx.Request.Header.Del(fasthttp.HeaderContentEncoding)
	ctx.Request.Header.SetContentLength(len(decoded))
	return true
}

// isZstd reports whether a Content-Encoding header names zstd alone.
// Content codings are case-insensitive (RFC 9110, section 8.4.1).
func isZstd(encoding []byte) bool {
	return bytes.EqualFold(bytes.TrimSpace(encoding), []byte("zstd"))
}

// putDecodedBody returns a buffer to decodedBodies unless it is larger
// than a connection keeps for its next request.
func putDecodedBody(b []byte) {
	if b == nil || cap(b) > maxPooledBody {
		return
	}
	b = b[:0]
	decodedBodies.Put(&b)
}
