package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/streamloop"
)

// maxObservedLine is the longest stream line that a looped relay keeps
// whole to read its accounting fields. Ollama's final line of
// /api/generate carries the context as an array of numbers, which can run
// to hundreds of kilobytes.
const maxObservedLine = 1 << 20

// errClientStalled ends a stream whose client took no bytes for
// upstream.idle. The client counts as gone, so it matches errClientGone.
var errClientStalled error = clientStalledError{}

type clientStalledError struct{}

func (clientStalledError) Error() string { return "client read nothing within upstream.idle" }

func (clientStalledError) Is(target error) bool {
	return target == errClientGone || target == context.Canceled
}

// unsentWriteLimit bounds the blocking write of the bytes that a failed
// looped stream still owed its client.
const unsentWriteLimit = 5 * time.Second

// useLoop reports whether a stream can go to a streamloop: both sockets
// are plain sockets, the client speaks HTTP/1.1 (the loop writes chunks),
// and the response has a body.
func useLoop(ctx *fasthttp.RequestCtx, ex *exchange) bool {
	if !streamloop.Available() || !ctx.Request.Header.IsHTTP11() || ex.body == http.NoBody {
		return false
	}
	if _, ok := ctx.Conn().(syscall.Conn); !ok {
		return false
	}
	_, ok := ex.conn.(syscall.Conn)
	return ok
}

// relayName is the label value of llmproxy_stream_relays_total.
func relayName(loop bool) string {
	if loop {
		return "event_loop"
	}
	return "goroutine"
}

// SupportsBodyWriteTo makes fasthttp call WriteTo instead of Read when
// the stream goes to a streamloop.
func (r *relay) SupportsBodyWriteTo() bool { return r.loop }

// WriteTo relays the stream on a streamloop, writing straight to the
// client's socket: fasthttp has flushed the response header, and w, its
// chunk writer, is empty. It returns once the body is complete, leaving
// the last chunk to fasthttp, and fails when the client left.
func (r *relay) WriteTo(w io.Writer) (int64, error) {
	res, err := r.runLoop()
	if err != nil {
		r.s.log.Warn("event loop unavailable, relaying the stream line by line",
			"request_id", r.rs.id, "node", r.lease.Node.Name, "err", err)
		r.attach(r.ex)
		return r.copyTo(w)
	}
	switch {
	case res.Err == nil:
		r.done = true
		r.ex.reuse = r.ex.reuse && res.Reusable
		return 0, nil
	case errors.Is(res.Err, streamloop.ErrClientGone):
		r.done, r.failed = true, errClientGone
		return 0, errClientGone
	case errors.Is(res.Err, streamloop.ErrClientStalled):
		r.done, r.failed = true, errClientStalled
		return 0, errClientStalled
	case errors.Is(res.Err, streamloop.ErrDataPanic):
		// A bug in consume, not the node's fault: the stream ends with a
		// cut connection, and the node is not blamed.
		r.s.log.Error("stream relay failed", "request_id", r.rs.id, "node", r.lease.Node.Name, "err", res.Err)
		r.done, r.failed = true, res.Err
		return 0, res.Err
	}
	cause := res.Err
	switch {
	case errors.Is(cause, streamloop.ErrCancelled):
		cause = errCancelled
	case errors.Is(cause, streamloop.ErrIdle):
		cause = errIdleTimeout
	}
	line, err := r.failure(cause)
	if err != nil {
		return 0, err
	}
	if len(res.Unsent) > 0 {
		c := r.client
		_ = c.SetWriteDeadline(time.Now().Add(unsentWriteLimit))
		_, err := c.Write(res.Unsent)
		_ = c.SetWriteDeadline(time.Time{})
		if err != nil {
			r.failed = errClientGone
			return 0, errClientGone
		}
	}
	if _, err := w.Write(line); err != nil {
		return 0, err
	}
	return 0, nil
}

// runLoop relays the stream on a loop and waits for its end. Meanwhile
// it holds the client connection's write lock, and with it a reference
// that keeps the socket open and its descriptor number from being reused
// under the loop.
func (r *relay) runLoop() (streamloop.Result, error) {
	raw, err := r.client.(syscall.Conn).SyscallConn()
	if err != nil {
		return streamloop.Result{}, err
	}
	var res streamloop.Result
	var startErr error
	err = raw.Write(func(dst uintptr) bool {
		var h *streamloop.Handle
		if h, startErr = r.startLoop(int(dst)); startErr == nil {
			res = h.Wait()
			r.ex.handle.Store(nil)
		}
		return true
	})
	if err == nil {
		err = startErr
	}
	return res, err
}

// startLoop stops the client watch, whose work the loop takes over, and
// hands both sockets to a loop.
func (r *relay) startLoop(dst int) (*streamloop.Handle, error) {
	ex := r.ex
	src, err := streamloop.Fd(ex.conn.(syscall.Conn))
	if err != nil {
		return nil, err
	}
	r.watch.stop()

	buffered := ex.br.Buffered()
	peeked, _ := ex.br.Peek(buffered)
	r.loopBuf = append(r.loopBuf[:0], peeked...)
	framing, length := streamloop.Chunked, int64(0)
	switch n := ex.resp.ContentLength(); {
	case n >= 0:
		framing, length = streamloop.Length, int64(n)
	case n == -2:
		framing = streamloop.UntilClose
	}

	h, err := streamloop.Start(streamloop.Stream{
		Src: src, Dst: dst,
		Buffered: r.loopBuf,
		Framing:  framing, Length: length,
		Idle: ex.idle,
		Data: r.consume,
		// The same bound as the line by line relay, whose buffer holds the
		// start of a line or event.
		Whole: r.unit(), MaxHeld: maxHeldUnit,
	})
	if err != nil {
		return nil, err
	}
	ex.handle.Store(h)
	if ex.cancelled.Load() {
		h.Cancel()
	}
	// The buffered bytes went to the loop, so the reader can serve other
	// exchanges while the stream runs.
	ex.u.hc.ReleaseReader(ex.br)
	ex.br = nil
	return h, nil
}

// copyTo copies the stream to w line by line through Read: WriteTo's
// fallback, and the body of an HTTP/1.0 stream.
func (r *relay) copyTo(w io.Writer) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	var total int64
	for {
		n, err := r.Read(*bp)
		if n > 0 {
			if _, werr := w.Write((*bp)[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// consume reads the accounting fields of the payload that the loop is
// about to send, on the loop's goroutine.
func (r *relay) consume(b []byte) {
	if r.f.store != nil {
		_, _ = r.f.store.agg.Write(b)
	}
	r.markSent(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			r.carry(b)
			return
		}
		line := b[:i+1]
		if len(r.partial) > 0 || r.overlong {
			r.carry(line)
			line = r.partial
		}
		switch {
		case r.overlong:
			// Too long to keep, and so neither blank nor "data: [DONE]".
			r.chunks++
		default:
			r.observe(line)
			if isContentLine(line) {
				r.chunks++
			}
		}
		r.partial, r.overlong = r.partial[:0], false
		b = b[i+1:]
	}
}

// carry keeps the start of a line that continues in the next payload, up
// to maxObservedLine.
func (r *relay) carry(b []byte) {
	if r.overlong || len(r.partial)+len(b) > maxObservedLine {
		r.overlong = true
		r.partial = r.partial[:0]
		return
	}
	r.partial = append(r.partial, b...)
}
