package proxy

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// zstdMaxWindow bounds the window that a zstd frame may declare. zstd
// levels up to 19 use at most 8 MiB (zstd's own compression parameter
// tables), so only the --ultra levels exceed it.
const zstdMaxWindow = 8 << 20

// zstdDecoders decodes zstd request bodies. A body is decoded as a stream,
// so decoding stops as soon as the output passes the limit, however few
// bytes the body has. At most one decode per CPU runs at once (slots),
// which bounds the memory of bodies that decode to nearly the limit: each
// decode holds up to the limit and a chunk, plus the window.
type zstdDecoders struct {
	pool  atomic.Pointer[zstdPool]
	slots chan struct{}
}

// zstdPool holds *zstd.Decoder values for bodies of at most limit bytes,
// each decoding in the calling goroutine.
type zstdPool struct {
	limit int
	sync.Pool
}

func newZstdDecoders() *zstdDecoders {
	return &zstdDecoders{slots: make(chan struct{}, runtime.GOMAXPROCS(0))}
}

// get returns a decoder of r for limit and the pool to return it to. A
// limit other than the current pool's, after a reload, starts a new pool.
func (z *zstdDecoders) get(r io.Reader, limit int) (*zstd.Decoder, *zstdPool, error) {
	p := z.pool.Load()
	if p == nil || p.limit != limit {
		p = &zstdPool{limit: limit}
		z.pool.Store(p)
	}
	if d, ok := p.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, p, nil
		}
		d.Close()
	}
	d, err := zstd.NewReader(r,
		// One goroutine: the caller's, with no decoding ahead of the read.
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow))
	return d, p, err
}

// put returns d to p, or closes it when a new pool has replaced p.
func (z *zstdDecoders) put(d *zstd.Decoder, p *zstdPool) {
	if z.pool.Load() != p {
		d.Close()
		return
	}
	_ = d.Reset(nil)
	p.Put(d)
}

// errDecodedTooLarge ends the decoding of a body whose output passed the
// limit.
var errDecodedTooLarge = errors.New("decoded body too large")

// zstdDecodedLimit is the most a zstd body may decode to, as in Ollama,
// whose /v1/responses middleware reads at most 20 MiB of decoded body
// (maxDecompressedBodySize in middleware/openai.go). A lower
// max_body_bytes lowers it further.
const zstdDecodedLimit = 20 << 20

// zstdChunkSize is the size of the pooled buffers that a body is decoded
// into before it is copied out whole.
const zstdChunkSize = 1 << 20

// zstdChunks pools *[]byte buffers of zstdChunkSize bytes.
var zstdChunks = sync.Pool{New: func() any {
	b := make([]byte, zstdChunkSize)
	return &b
}}

// decode returns body decoded, failing with errDecodedTooLarge once the
// output passes limit bytes. A body whose first frame declares a larger
// content size fails before decoding. The output goes into pooled chunks
// and is copied into one buffer only when the whole body fits, so a
// body rejected for its size leaves no garbage behind.
func (z *zstdDecoders) decode(body []byte, limit int) ([]byte, error) {
	var h zstd.Header
	if h.Decode(body) == nil && h.HasFCS && h.FrameContentSize > uint64(limit) {
		return nil, errDecodedTooLarge
	}
	z.slots <- struct{}{}
	defer func() { <-z.slots }()
	d, p, err := z.get(bytes.NewReader(body), limit)
	if err != nil {
		return nil, err
	}
	defer z.put(d, p)

	var chunks []*[]byte
	defer func() {
		for _, c := range chunks {
			zstdChunks.Put(c)
		}
	}()
	total := 0
	for {
		c := zstdChunks.Get().(*[]byte)
		chunks = append(chunks, c)
		n, err := fill(d, *c)
		total += n
		if total > limit {
			return nil, errDecodedTooLarge
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	out := make([]byte, 0, total)
	for _, c := range chunks {
		out = append(out, (*c)[:min(len(*c), total-len(out))]...)
	}
	return out, nil
}

// fill reads from r until buf is full or r returns an error, and returns
// the bytes read and that error, io.EOF at the end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// decodeZstdBody replaces a request body sent with Content-Encoding zstd
// by its decoded form, as Ollama's /v1/responses middleware decodes it
// (middleware/openai.go, v0.17.4). It removes the Content-Encoding
// header and sets the Content-Length of the decoded body, so the node
// gets plain JSON. The limit is zstdDecodedLimit, or max_body_bytes when
// that is lower. A body that decodes to more gets 413. One that is not
// valid zstd, or whose window exceeds zstdMaxWindow, gets 400.
// decodeZstdBody then returns false with the error written.
func (s *Server) decodeZstdBody(ctx *fasthttp.RequestCtx, rt route) bool {
	if !isZstd(ctx.Request.Header.ContentEncoding()) {
		return true
	}
	limit, source := zstdDecodedLimit, "the limit for decoded bodies"
	if mb := int(s.config().MaxBodyBytes); mb > 0 && mb < limit {
		limit, source = mb, "max_body_bytes"
	}
	decoded, err := s.zstd.decode(ctx.PostBody(), limit)
	switch {
	case errors.Is(err, errDecodedTooLarge) || errors.Is(err, zstd.ErrDecoderSizeExceeded):
		writeError(ctx, rt, fasthttp.StatusRequestEntityTooLarge,
			"decoded request body exceeds the limit of "+strconv.Itoa(limit)+
				" bytes ("+source+")")
		return false
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		// Ollama's middleware rejects a body it cannot decompress itself.
		writeEarlyError(ctx, rt, fasthttp.StatusBadRequest,
			"invalid zstd request body (Content-Encoding: zstd): its window exceeds "+
				strconv.Itoa(zstdMaxWindow>>20)+" MiB; compress at level 19 or lower")
		return false
	case err != nil:
		writeEarlyError(ctx, rt, fasthttp.StatusBadRequest,
			"invalid zstd request body (Content-Encoding: zstd): "+err.Error())
		return false
	}
	ctx.Request.SetBodyRaw(decoded)
	ctx.Request.Header.Del(fasthttp.HeaderContentEncoding)
	ctx.Request.Header.SetContentLength(len(decoded))
	return true
}

// isZstd reports whether a Content-Encoding header names zstd alone.
// Content codings are case-insensitive (RFC 9110, section 8.4.1).
func isZstd(encoding []byte) bool {
	return bytes.EqualFold(bytes.TrimSpace(encoding), []byte("zstd"))
}
