package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/streamloop"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// deliver sends the node's response to the client. A streamed response
// to a request for a stream, or on a path the proxy has no route for
// (fields.asSent), goes line by line as it arrives, and any other response
// once read in full, a stream included (see collectStream).
func (s *Server) deliver(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields,
	lease *balancer.Lease, ex *exchange, watch *clientWatch) (retry attempt) {
	status := ex.resp.StatusCode()
	streamed := isStreamed(&ex.resp)
	if streamed && (f.stream || f.asSent) && !ctx.IsHead() {
		ctx.SetStatusCode(status)
		copyResponseHeaders(&ctx.Response.Header, &ex.resp)
		ctx.Response.Header.Set("X-LLMProxy-Node", lease.Node.Name)
		s.deliverStream(ctx, rt, rs, f, lease, ex, watch)
		return attempt{}
	}
	// The body goes straight into fasthttp's pooled response buffer. The
	// node's status and headers follow only once it is whole, so a retry
	// starts from a clean response.
	ctx.Response.ResetBody()
	err := ex.readInto(ctx.Response.BodyWriter(), maxResponseBytes)
	// The exchange ends before the watch cancels its context, or the
	// cancellation would close a connection that could go back to the pool.
	if err != nil {
		err = fmt.Errorf("node %s: read response body: %w", lease.Node.Name, err)
		// The watch's state goes with it into the pool, so the cause is
		// read first.
		cause := err
		nodeFault := false
		if stop := proxyStop(watch); stop != nil {
			cause = stop
		} else if clientLeft(watch, err) {
			cause = errClientGone
		} else {
			nodeFault = true
		}
		ex.close()
		lease.Release()
		ctx.Response.ResetBody()
		if nodeFault && !errors.Is(err, errBodyTooLarge) {
			// Nothing of the body reached the client, so the request may
			// go to another node as if this one had not responded.
			lease.Node.SetLastError(err.Error())
			return attempt{err: err}
		}
		watch.release()
		if nodeFault {
			s.report(lease.Node, reasonMidStream)
		}
		s.failAttempt(ctx, rt, rs, attempt{err: cause})
		return attempt{}
	}
	ctx.SetStatusCode(status)
	copyResponseHeaders(&ctx.Response.Header, &ex.resp)
	ctx.Response.Header.Set("X-LLMProxy-Node", lease.Node.Name)
	body := ctx.Response.Body()
	ex.finish()
	watch.release()
	lease.Release()
	rs.ttfb = elapsed(rs.start)
	if status < 300 {
		s.afterSuccess(rs, rt, f, lease.Node)
		if streamed {
			s.collectStream(ctx, rt, rs, f, body)
		} else {
			s.observeFinal(rs, body)
		}
	}
	if status >= 400 && !ctx.IsHead() {
		// Each API's clients parse only its own error shape, and a node
		// without the route, or a server in front of it, sends plain text
		// or HTML.
		if relay, msg := nodeErrorMessage(rt, status, body); !relay {
			writeError(ctx, rt, status, msg)
		}
	}
	return attempt{}
}

// proxyStop returns the reason when the proxy itself ended a request
// through its watch: errTotalTimeout or errShuttingDown, and nil
// otherwise.
func proxyStop(w *clientWatch) error {
	switch err := w.Err(); {
	case errors.Is(err, context.DeadlineExceeded):
		return errTotalTimeout
	case errors.Is(err, errShuttingDown):
		return errShuttingDown
	}
	return nil
}

// clientLeft reports whether a failed read was the client's doing: the
// watch saw the client leave, or cancelled the exchange. The watch's cause
// is set before it aborts the exchange, so it is checked as well as the
// end of the watch's read.
func clientLeft(w *clientWatch, err error) bool {
	return errors.Is(w.Err(), errClientGone) || w.gone() ||
		errors.Is(err, errClientGone) || errors.Is(err, errCancelled)
}

// afterSuccess updates the node's inventory after a successful request.
// It marks the model loaded or unloaded, and refreshes the node when the
// request changed its models. After a create, it purges the cached
// responses of the model created.
func (s *Server) afterSuccess(rs *reqState, rt route, f fields, n *balancer.Node) {
	if rt.inference && f.model != "" {
		if f.unload {
			n.MarkUnloaded(f.model)
		} else {
			n.MarkLoaded(f.model, f.numCtx)
		}
	}
	if f.refresh {
		s.refreshNodes([]*balancer.Node{n})
	}
	if rs.changedModel != "" {
		s.PurgeModel(rs.changedModel, modelOpReason(rs))
	}
}

// isStreamed reports whether a response is framed as a stream: NDJSON or
// SSE.
func isStreamed(h *fasthttp.ResponseHeader) bool {
	ct := h.ContentType()
	return bytes.HasPrefix(ct, []byte("application/x-ndjson")) ||
		bytes.HasPrefix(ct, []byte("text/event-stream"))
}

// copyResponseHeaders copies the node's headers except those that
// describe its connection or framing, which the proxy sets itself, and the
// hop-by-hop headers that a proxy removes (RFC 9110 section 7.6.1),
// including every field that the node's Connection headers name.
//
// A response without a Content-Type, such as Ollama's to HEAD or POST on
// /api/blobs/:digest, gets none from the proxy either.
func copyResponseHeaders(dst *fasthttp.ResponseHeader, src *fasthttp.ResponseHeader) {
	// ContentType returns fasthttp's default for a response that has none.
	src.SetNoDefaultContentType(true)
	if ct := src.ContentType(); len(ct) > 0 {
		dst.SetContentTypeBytes(ct)
	} else {
		dst.SetNoDefaultContentType(true)
	}
	src.SetNoDefaultContentType(false)
	// A field may come before the Connection header that names it, so a
	// first pass collects the Connection values. They point into src, and
	// up to len(connBuf) of them stay on the stack.
	var connBuf [4][]byte
	conn := connBuf[:0]
	for k, v := range src.All() {
		if string(k) == fasthttp.HeaderConnection {
			conn = append(conn, v)
		}
	}
	for k, v := range src.All() {
		if skipResponseHeader(k) || (len(conn) > 0 && listedIn(conn, k)) {
			continue
		}
		dst.AddBytesKV(k, v)
	}
}

// skipResponseHeader reports whether a node's header stays out of the
// response to the client. Names arrive in fasthttp's canonical form,
// because the upstream client normalizes header names.
func skipResponseHeader(name []byte) bool {
	switch string(name) {
	case "Content-Type", "Content-Length", "Date", "Server",
		"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// listedIn reports whether name is one of the comma-separated field names
// in the Connection header values conn, compared without regard to case.
func listedIn(conn [][]byte, name []byte) bool {
	for _, v := range conn {
		for len(v) > 0 {
			field, rest, _ := bytes.Cut(v, []byte(","))
			if bytes.EqualFold(bytes.TrimSpace(field), name) {
				return true
			}
			v = rest
		}
	}
	return false
}

// setStreamHeaders sets the headers the proxy adds to every NDJSON or SSE
// stream, live or from the cache, so that no proxy buffers or caches it.
func setStreamHeaders(h *fasthttp.ResponseHeader) {
	h.Set("X-Accel-Buffering", "no")
	h.Set("Cache-Control", "no-cache")
}

// deliverStream hands the response to fasthttp as a body stream. fasthttp
// calls relay.Read after the handler returns and writes each read as one
// HTTP chunk, flushed at once, so a line leaves the proxy as soon as it
// arrives. From here on the relay owns rs and ends it in Close, so the
// handler must not read the response body. Response.Body would read the
// stream in the handler, which sends a looped stream straight to the
// client's socket ahead of the response head, and would close the relay.
func (s *Server) deliverStream(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields,
	lease *balancer.Lease, ex *exchange, watch *clientWatch) {
	setStreamHeaders(&ctx.Response.Header)
	ctx.Response.ImmediateHeaderFlush = true
	r := relayPool.Get().(*relay)
	r.loop = useLoop(ctx, ex)
	if s.m != nil {
		s.m.StreamRelays.WithLabelValues(relayName(r.loop)).Inc()
	}
	if r.loop {
		r.reset(nil)
	} else {
		// Reads go through the exchange, which replaces the first-byte
		// deadline with the idle one.
		r.reset(ex)
	}
	r.s, r.rt, r.rs, r.f, r.lease, r.ex, r.watch = s, rt, rs, f, lease, ex, watch
	r.token = rs.gen.Load()
	r.sse = bytes.HasPrefix(ex.resp.ContentType(), []byte("text/event-stream"))
	r.promptEstimate = int64(len(ctx.PostBody()) / 4)
	r.client = ctx.Conn()
	rs.deferred = true
	rs.status = ex.resp.StatusCode()
	rs.ctx = nil
	if !ctx.Request.Header.IsHTTP11() {
		s.handedOver.add()
		streamHTTP10(ctx, r, s.handedOver.done)
		return
	}
	ctx.SetBodyStream(r, -1)
}

// hijackStartLimit is how long takeOver waits for fasthttp to call its
// hijack handler before it gives the connection up. The handler normally
// starts as soon as the request handler returns.
const hijackStartLimit = 10 * time.Second

// takeOver has fasthttp hand ctx's connection to run once the request
// handler returns, without writing a response of its own. fasthttp skips
// the hijack handler when the connection fails first, so abandon runs
// instead when run has not started within hijackStartLimit. Exactly one
// of the two runs.
func takeOver(ctx *fasthttp.RequestCtx, run func(net.Conn), abandon func()) {
	var claimed atomic.Bool
	fallback := time.AfterFunc(hijackStartLimit, func() {
		if claimed.CompareAndSwap(false, true) {
			abandon()
		}
	})
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		if !claimed.CompareAndSwap(false, true) {
			return
		}
		fallback.Stop()
		run(c)
	})
}

// streamHTTP10 sends a stream to an HTTP/1.0 client, which does not know
// chunked encoding: the response has no Content-Length and its end is the
// end of the connection. fasthttp always chunks a body stream, so the
// proxy takes over the connection once the handler returns. fasthttp's
// shutdown does not wait for such a connection, so done runs after the
// body is closed, for Server.Shutdown to wait on. A connection that fails
// before the takeover still gets r closed, which frees the node's slot.
func streamHTTP10(ctx *fasthttp.RequestCtx, r streamBody, done func()) {
	ctx.Response.Header.SetContentLength(-2) // identity: no Content-Length
	ctx.SetConnectionClose()
	head := append([]byte(nil), ctx.Response.Header.Header()...)
	takeOver(ctx, func(c net.Conn) {
		defer done()
		defer r.Close()
		if _, err := c.Write(head); err != nil {
			return
		}
		_, _ = r.copyTo(c)
	}, func() {
		_ = r.Close()
		done()
	})
}

// streamBody is the body of a stream that streamHTTP10 writes to a
// connection it took over: a relay, or a stream replayed from the cache.
type streamBody interface {
	copyTo(w io.Writer) (int64, error)
	Close() error
}

// relay reads a streamed response from a node line by line and gives each
// line to fasthttp once it is whole, and on an SSE stream once its event
// is whole. It reads the final line for accounting and ends a broken
// stream with an error in the stream's own format, after the last whole
// line or event.
type relay struct {
	s  *Server
	rt route
	rs *reqState
	// token is the owner token of rs (see reqState.gen), with which Close
	// ends the request.
	token uint64
	f     fields
	lease *balancer.Lease
	ex    *exchange
	watch *clientWatch
	sse   bool

	// chunks counts the non-blank lines sent on, and promptEstimate is the
	// request body's size over four. A stream without the node's final
	// counts is charged these two instead.
	chunks         int64
	promptEstimate int64

	br *bufio.Reader
	// src is the body that br reads, kept for growBuffer.
	src     io.Reader
	pending []byte // the part of a line that did not fit the caller's buffer
	pendBuf []byte
	// ahead is the number of buffered bytes that Read may send: whole
	// lines or events, or what fillWhole lets go as it is. eof is set once
	// the node's body ended.
	ahead int
	eof   bool
	// tail contains the last bytes sent to the client, so that the error
	// that ends a broken stream can first close an open line or SSE event.
	// It starts as blank lines, as if an event had just ended.
	tail   [4]byte
	sent   bool
	done   bool
	failed error

	// loop is set when WriteTo relays the stream on a streamloop, which
	// writes to client directly. loopBuf holds the body bytes buffered
	// before the handover, and partial the start of a line that the
	// loop's next payload continues, unless the line is overlong.
	loop   bool
	client net.Conn
	// writeBy is the client write deadline that Read set last, and
	// stallSet is set once Read bounded the client's writes by progress.
	writeBy  time.Time
	stallSet bool
	loopBuf  []byte
	partial  []byte
	overlong bool
}

// relayBufferSize is the size of a relay's read buffer, which holds the
// bytes read ahead of the client. Ollama's stream lines are a few hundred
// bytes.
const relayBufferSize = 8 << 10

// maxHeldUnit is the longest start of a line or SSE event that a relay
// holds back until the rest arrives. The final line of /api/generate
// carries the context, at about 5 to 7 bytes per token (an estimate from
// its JSON numbers), so 1 MiB covers some 150,000 tokens. A longer line
// passes in pieces, and a stream cut inside it leaves the client part of
// that line before the error. The Ollama Go client (v0.17.4) reads lines
// of up to 8 MB.
const maxHeldUnit = 1 << 20

var relayPool = sync.Pool{New: func() any {
	return new(relay)
}}

// reset prepares the relay to read body, or for a streamloop when body is
// nil. The reader is made on first use, so that relays that only ever
// hand streams to a loop hold no read buffer.
func (r *relay) reset(body io.Reader) {
	r.chunks, r.promptEstimate = 0, 0
	if body != nil {
		r.attach(body)
	}
	r.pending, r.tail, r.sent, r.done, r.failed = nil, blankTail, false, false, nil
	r.ahead, r.eof = 0, false
	r.client, r.overlong = nil, false
	r.loopBuf, r.partial = r.loopBuf[:0], r.partial[:0]
}

// attach makes the relay read the stream from body.
func (r *relay) attach(body io.Reader) {
	if r.br == nil || r.br.Size() != relayBufferSize {
		r.br = bufio.NewReaderSize(nil, relayBufferSize)
	}
	r.src = readerOnly{body}
	r.br.Reset(r.src)
}

// keepPending stores b as the bytes still to be copied out by Read.
func (r *relay) keepPending(b []byte) {
	r.pendBuf = append(r.pendBuf[:0], b...)
	r.pending = r.pendBuf
}

// readerOnly hides the exchange's other methods from bufio.
type readerOnly struct{ io.Reader }

// Read copies the next line of the response into p, or the rest of a line
// that did not fit, and bounds the client's write of it.
func (r *relay) Read(p []byte) (int, error) {
	n, err := r.readLine(p)
	if n > 0 {
		r.limitClientWrite()
	}
	return n, err
}

// stallBounder is a client connection that can bound a waiting write by
// the client's progress (rawconn.Conn on Linux).
type stallBounder interface {
	SetWriteStall(d time.Duration)
	WriteStalled() bool
}

// limitClientWrite ends the stream, freeing the node's slot, when the
// client takes no bytes for upstream.idle, as the event loop does. Where
// the connection cannot tell the client's progress, each write of a line
// gets upstream.idle instead.
//
// NOTE: on such connections (systems other than Linux) a slow reader is
// cut once one write waits longer than upstream.idle, which Linux's
// wake-up at a third of the send buffer can make happen to a client that
// still reads.
func (r *relay) limitClientWrite() {
	if r.client == nil || r.ex == nil || r.ex.idle <= 0 {
		return
	}
	if sb, ok := r.client.(stallBounder); ok {
		if !r.stallSet {
			sb.SetWriteStall(r.ex.idle)
			r.stallSet = true
		}
		return
	}
	r.writeBy = time.Now().Add(r.ex.idle)
	_ = r.client.SetWriteDeadline(r.writeBy)
}

// clientStalled reports whether the client's write bound ended the stream.
func (r *relay) clientStalled() bool {
	if sb, ok := r.client.(stallBounder); ok && r.stallSet {
		return sb.WriteStalled()
	}
	return !r.writeBy.IsZero() && time.Until(r.writeBy) <= 0
}

// readLine is Read without the bound on the client's write.
func (r *relay) readLine(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		r.markSent(p[:n])
		return n, nil
	}
	if r.done {
		return 0, io.EOF
	}
	if r.ahead == 0 {
		err := r.fillWhole()
		if err == io.EOF {
			r.done = true
			return 0, io.EOF
		}
		if err != nil {
			// The start of a line or event that the node did not finish
			// stays in the buffer, unsent.
			return r.fail(p, err)
		}
	}
	buf, _ := r.br.Peek(r.ahead)
	line := buf
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		line = buf[:i+1]
	}
	if line[len(line)-1] == '\n' {
		r.observe(line)
		if isContentLine(line) {
			r.chunks++
		}
	}
	if r.f.store != nil {
		_, _ = r.f.store.agg.Write(line)
	}
	n := copy(p, line)
	used := n
	if n < len(line) {
		r.keepPending(line[n:])
		used = len(line)
	} else if r.sse {
		n += r.eventEnd(p[n:], line, buf[n:])
		used = n
	}
	_, _ = r.br.Discard(used)
	r.ahead -= used
	r.markSent(p[:n])
	return n, nil
}

// fillWhole reads from the node until the buffer holds a whole line, or
// on an SSE stream a whole event, and sets ahead to the bytes that Read
// may send. A full buffer, or the rest of a body that ended normally, goes
// as it is. It returns io.EOF when the body ended and nothing is left, and
// the read's error when the node failed.
func (r *relay) fillWhole() error {
	unit := r.unit()
	for {
		n := r.br.Buffered()
		buf, _ := r.br.Peek(n)
		if whole := unit.WholeLen(buf); whole > 0 {
			r.ahead = whole
			return nil
		}
		if n == r.br.Size() && n < maxHeldUnit && !r.eof {
			r.growBuffer()
			continue
		}
		if n == r.br.Size() || (r.eof && n > 0) {
			r.ahead = n
			return nil
		}
		if r.eof {
			return io.EOF
		}
		// bufio returns a read's error only once the bytes that came
		// with it are buffered, so the whole lines before it go first.
		if _, err := r.br.Peek(n + 1); err == io.EOF {
			r.eof = true
		} else if err != nil {
			return err
		}
	}
}

// growBuffer replaces the full read buffer with one twice its size, up to
// maxHeldUnit, that starts with the bytes buffered so far, for the rest
// of a line or event longer than the buffer. attach puts a buffer of the
// usual size back for the next stream.
func (r *relay) growBuffer() {
	buf, _ := r.br.Peek(r.br.Buffered())
	start := bytes.Clone(buf)
	r.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(start), r.src),
		min(2*r.br.Size(), maxHeldUnit))
}

// unit returns the piece of the stream that the relay sends only whole:
// SSE events or NDJSON lines.
func (r *relay) unit() streamloop.Unit {
	if r.sse {
		return streamloop.Events
	}
	return streamloop.Lines
}

// eventEnd moves the blank line that ends an SSE event into p, after the
// event's data line, when next, the bytes after the line that Read may
// send, starts with it. The event then leaves in one write instead of
// two, and a client can act on it only at the blank line anyway. It
// returns the number of bytes moved.
func (r *relay) eventEnd(p, line, next []byte) int {
	if len(line) <= 2 && (line[0] == '\n' || line[0] == '\r') {
		return 0 // the line itself is blank
	}
	var blank []byte
	switch {
	case len(next) >= 1 && next[0] == '\n':
		blank = next[:1]
	case len(next) >= 2 && next[0] == '\r' && next[1] == '\n':
		blank = next[:2]
	default:
		return 0
	}
	if len(p) < len(blank) {
		return 0
	}
	n := copy(p, blank)
	if r.f.store != nil {
		_, _ = r.f.store.agg.Write(blank)
	}
	return n
}

func (r *relay) markSent(b []byte) {
	if len(b) == 0 {
		return
	}
	if !r.sent {
		r.sent = true
		r.rs.ttfb = elapsed(r.rs.start)
	}
	if len(b) >= len(r.tail) {
		copy(r.tail[:], b[len(b)-len(r.tail):])
		return
	}
	shifted := copy(r.tail[:], r.tail[len(b):])
	copy(r.tail[shifted:], b)
}

// blankTail is the tail of a relay that has sent nothing.
var blankTail = [4]byte{'\n', '\n', '\n', '\n'}

// closeOpenEvent appends to b what ends the line or SSE event that the
// bytes sent so far, ending in tail, left open. On an SSE stream a cut
// line gets "\n\n" and a whole line of an event without its blank line
// gets "\n", so that the error event after them is dispatched alone. An
// NDJSON stream only needs its last line ended. A final '\r' counts as
// an open line, which is safe because '\n' after it makes a CRLF and an
// extra blank line dispatches nothing.
func closeOpenEvent(b []byte, tail [4]byte, sse bool) []byte {
	last := tail[:]
	switch {
	case bytes.HasSuffix(last, []byte("\r\n")):
		last = last[:len(last)-2]
	case last[len(last)-1] == '\n':
		last = last[:len(last)-1]
	default:
		if sse {
			return append(b, "\n\n"...)
		}
		return append(b, '\n')
	}
	if sse && last[len(last)-1] != '\n' {
		return append(b, '\n')
	}
	return b
}

// observe reads the accounting fields of a final line: Ollama's done line
// or an SSE event with usage.
func (r *relay) observe(line []byte) {
	if final, ok := finalObject(line, r.sse); ok {
		r.s.observeFinal(r.rs, final)
	}
}

// finalObject returns the JSON object of a stream line that can carry the
// accounting fields: Ollama's done line, or the data of an SSE event with
// usage. ok is false for any other line.
func finalObject(line []byte, sse bool) (object []byte, ok bool) {
	if sse {
		// The space after "data:" is optional in SSE.
		data, found := bytes.CutPrefix(line, []byte("data:"))
		if !found || !bytes.Contains(data, []byte(`"usage"`)) {
			return nil, false
		}
		data = bytes.TrimLeft(data, " ")
		return data, len(data) > 0 && data[0] == '{'
	}
	return line, doneTrue(line)
}

// doneTrue reports whether an NDJSON line has "done": true, with or
// without spaces around the colon. A quote inside a JSON string is
// escaped, so "done" between real quotes is a key or a whole string
// value, and a value is followed by no colon.
func doneTrue(line []byte) bool {
	key := []byte(`"done"`)
	for i := bytes.Index(line, key); i >= 0; {
		j := skipSpace(line, i+len(key))
		if j < len(line) && line[j] == ':' {
			return bytes.HasPrefix(line[skipSpace(line, j+1):], []byte("true"))
		}
		next := bytes.Index(line[i+len(key):], key)
		if next < 0 {
			return false
		}
		i += len(key) + next
	}
	return false
}

// fail ends a broken stream. When the client went away, nothing more can
// be sent. Otherwise the client gets an error line in the stream's own
// format and a clean end of the response.
func (r *relay) fail(p []byte, err error) (int, error) {
	b, ferr := r.failure(err)
	if ferr != nil {
		return 0, ferr
	}
	n := copy(p, b)
	r.keepPending(b[n:])
	return n, nil
}

// failure records why a stream broke and returns the error line for the
// client, or errClientGone when the client left. The failure counts
// against the node unless the client or the proxy ended the stream:
// upstream.total or a shutdown.
func (r *relay) failure(err error) ([]byte, error) {
	r.done = true
	stop := proxyStop(r.watch)
	if stop == nil && clientLeft(r.watch, err) {
		r.failed = errClientGone
		return nil, errClientGone
	}
	var msg string
	if stop != nil {
		// The proxy ended the stream, not the node's fault.
		r.failed = stop
		msg = stop.Error()
	} else {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = errBodyCut
		}
		r.failed = err
		r.s.report(r.lease.Node, reasonMidStream)
		msg = "node " + r.lease.Node.Name + " failed during the response: " + clientText(err)
	}
	b := closeOpenEvent(nil, r.tail, r.sse)
	return appendStreamError(b, r.rt, r.sse, msg, statusFor(r.failed)), nil
}

// appendStreamError appends the error that ends a broken stream: an
// Anthropic error event on /v1/messages, an OpenAI error object in a data
// line on the other SSE streams, and Ollama's error line on NDJSON ones.
// The error type matches the non-streamed error of the same status.
func appendStreamError(b []byte, rt route, sse bool, msg string, status int) []byte {
	switch {
	case sse && rt.family == apiAnthropic:
		// Anthropic streams name each event. Ollama's error event, like
		// Anthropic's, has no request_id.
		b = append(b, "event: error\ndata: "...)
		b = append(b, wire.AnthropicError(msg, wire.AnthropicErrorType(status), "")...)
		return append(b, "\n\n"...)
	case sse:
		b = append(b, "data: "...)
		b = append(b, wire.OpenAIError(msg, wire.OpenAIErrorType(status))...)
		return append(b, "\n\n"...)
	}
	b = append(b, wire.OllamaError(msg)...)
	return append(b, '\n')
}

// Close ends the request once fasthttp has written the body or given up.
// It frees the node connection and slot, and logs the request.
func (r *relay) Close() error {
	complete := r.done && r.failed == nil
	// The exchange ends before the watch cancels its context, as in
	// deliver.
	if complete {
		r.ex.finish()
	} else {
		r.ex.close()
	}
	r.watch.release()
	r.lease.Release()
	rs := r.rs
	rs.estimateTokens(r.chunks, r.promptEstimate)
	if r.f.store != nil {
		r.f.store.finish(complete && rs.status == fasthttp.StatusOK)
	}
	switch {
	case r.failed != nil && errors.Is(r.failed, errClientGone):
		rs.status = StatusClientClosed
		rs.err = r.failed.Error()
	case r.failed != nil:
		rs.err = r.failed.Error()
		rs.proxyEnded = errors.Is(r.failed, errShuttingDown) || errors.Is(r.failed, errTotalTimeout)
	case !r.done && r.clientStalled():
		rs.status = StatusClientClosed
		rs.err = errClientStalled.Error()
	case !r.done:
		// fasthttp stopped reading: the client connection failed.
		rs.status = StatusClientClosed
		rs.err = errClientGone.Error()
	default:
		r.s.afterSuccess(rs, r.rt, r.f, r.lease.Node)
	}
	if !complete && rs.changedModel != "" {
		// A create whose stream ended early, as when its client left.
		r.s.purgeCutOff(rs, r.lease.Node)
	}
	// A write on the kept-alive connection before the next handler runs,
	// such as 100 Continue, must not meet the stream's bound.
	if sb, ok := r.client.(stallBounder); ok && r.stallSet {
		sb.SetWriteStall(0)
		r.stallSet = false
	}
	if !r.writeBy.IsZero() {
		_ = r.client.SetWriteDeadline(time.Time{})
		r.writeBy = time.Time{}
	}
	s := r.s
	r.s, r.rs, r.lease, r.ex, r.watch, r.client = nil, nil, nil, nil, nil, nil
	if r.br != nil && r.br.Size() != relayBufferSize {
		// A buffer grown for a long line is not pooled.
		r.br = nil
	}
	if r.br != nil {
		r.br.Reset(nil)
	}
	r.src = nil
	r.loop = false
	token := r.token
	relayPool.Put(r)
	s.endAs(rs, token)
	return nil
}

// isContentLine reports whether a stream line may carry a token: not a
// blank line and not the "data: [DONE]" that ends an OpenAI stream.
func isContentLine(line []byte) bool {
	trimmed := bytes.TrimRight(line, "\r\n")
	return len(trimmed) > 0 && !bytes.Equal(trimmed, []byte("data: [DONE]"))
}
