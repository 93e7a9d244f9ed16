package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/rawconn"
	"github.com/llmproxy/llmproxy/internal/streamloop"
)

// upstream sends requests to one node over a pool of keep-alive
// connections. Each exchange owns its connection, so that cancelling a
// request closes exactly that connection. Ollama notices the closed
// connection and stops generating, which frees the node's slot.
type upstream struct {
	node *balancer.Node
	hc   *fasthttp.HostClient
	host string // the node's host:port, sent as Host
}

// timeouts are the limits of one exchange.
type timeouts struct {
	connect   time.Duration
	firstByte time.Duration
	idle      time.Duration
}

var errIdleTimeout = errors.New("no data from node within the idle timeout")

// errCancelled ends the read of an exchange whose context ended.
var errCancelled = errors.New("exchange cancelled")

// errTotalTimeout ends a response that outlasted upstream.total. It is a
// context.DeadlineExceeded, whose own words ("context deadline exceeded")
// its message leaves out.
var errTotalTimeout error = totalTimeoutError{}

type totalTimeoutError struct{}

func (totalTimeoutError) Error() string {
	return "request took longer than upstream.total, the limit on the time one request may take at a node"
}

func (totalTimeoutError) Unwrap() error { return context.DeadlineExceeded }

// errFirstByteTimeout means the node accepted the request but sent no
// response headers in time.
var errFirstByteTimeout = errors.New("no response from node within the first-byte timeout")

// errBodyNotTaken is the first-byte timeout of a node that stopped reading
// the request body.
var errBodyNotTaken = fmt.Errorf("%w (the node did not take the whole request body in time)",
	errFirstByteTimeout)

// errNodeMarkedDown ends an exchange that was still waiting for the
// response head when health checks marked its node down. Like a refused
// connection, it sends the request to another node.
var errNodeMarkedDown = errors.New("node marked down by health checks before it sent a response")

// errBodyCut ends a response body whose node connection closed or failed
// before the last byte that the framing announced. It is the stream
// loop's error for the same case, so that clients read one text.
var errBodyCut = streamloop.ErrNodeClosed

// bodyCut wraps err, a read error of a closed node connection, in
// errBodyCut. The body reader's "unexpected EOF" adds nothing to it and
// is left out, so that a cut reads the same as from the stream loop.
func bodyCut(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
		return errBodyCut
	}
	return fmt.Errorf("%w: %w", errBodyCut, err)
}

// errBodyTooLarge ends a response body that exceeds the proxy's bound.
var errBodyTooLarge = errors.New("response body too large")

// upstreamReadBuffer is the read buffer of a node connection, in bytes,
// and so the largest response head that the proxy reads.
const upstreamReadBuffer = 8 << 10

func newUpstream(n *balancer.Node, connect time.Duration) *upstream {
	addr := n.URL.Host
	tls := n.URL.Scheme == "https"
	if _, _, err := net.SplitHostPort(addr); err != nil {
		if tls {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	d := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	return &upstream{
		node: n,
		host: n.URL.Host,
		hc: &fasthttp.HostClient{
			Addr:  addr,
			IsTLS: tls,
			Dial: func(a string) (net.Conn, error) {
				c, err := d.Dial("tcp", a)
				if err != nil {
					return nil, err
				}
				return rawconn.Wrap(c), nil
			},
			// Ollama's http.Server sets no idle timeout, so this bound is
			// the proxy's own. It limits how long idle connections to a
			// restarted or unreachable node linger in the pool.
			MaxIdleConnDuration:           30 * time.Second,
			MaxConns:                      1 << 16,
			NoDefaultUserAgentHeader:      true,
			DisableHeaderNamesNormalizing: false,
			ReadBufferSize:                upstreamReadBuffer,
			WriteBufferSize:               8 << 10,
		},
	}
}

// exchange is one request to a node, from the sent request to the end of
// the response body. Exchanges are pooled: after finish or close, the
// exchange and its response header belong to the pool.
type exchange struct {
	u    *upstream
	conn net.Conn
	// done returns the connection to the pool when reuse is true, and
	// closes it otherwise.
	done func(reuse bool)
	br   *bufio.Reader
	// reader is the source of br: conn, with the idle deadline moved
	// before each read once the head is in.
	reader idleReader
	resp   fasthttp.ResponseHeader
	body   io.Reader
	// chunked is set for a chunked body, whose trailer section Read
	// consumes after the last chunk.
	chunked bool
	// limited backs body for a response with a Content-Length, so that
	// it is not allocated per exchange.
	limited io.LimitedReader
	idle    time.Duration
	// deadline is the read deadline last set on the connection, and
	// idling is set once the body is being read.
	deadline time.Time
	idling   bool
	reuse    bool // the connection may go back to the pool when done
	// cancelled is set when the exchange's context ended, before the
	// connection's deadline is moved to the past.
	cancelled atomic.Bool
	// downLink lists the exchange in its node's DownListeners while
	// waitingHead is set, from before the request is written until the
	// response head is read. nodeDown is set when the node went down in
	// that time, before the connection's deadline is moved to the past.
	downLink    balancer.DownLink
	waitingHead bool
	nodeDown    atomic.Bool
	// watch is the request's client watch when the exchange is attached
	// to it; stop ends the cancellation callback on any other context.
	watch  *clientWatch
	stop   func() bool
	closed bool
	// handle is the streamloop that relays the body, which abort cancels.
	handle atomic.Pointer[streamloop.Handle]
}

var exchangePool = sync.Pool{New: func() any { return new(exchange) }}

// send writes req to the node and waits for the response headers. The
// returned exchange must be closed. ctx cancels the exchange at any point
// by expiring the connection's deadlines.
func (u *upstream) send(ctx context.Context, req *fasthttp.Request, t timeouts) (*exchange, error) {
	ex, err := u.try(ctx, req, t)
	if err != nil && ex == nil && errors.Is(err, errStaleConn) && ctx.Err() == nil {
		// The node closed the pooled connection before it read the request,
		// so the node never saw it and sending again is safe. A node that
		// closed one idle connection has usually restarted and closed them
		// all, so the pool is emptied and the second try dials anew.
		// NOTE: a node that read the request and then closed the connection
		// without a response looks the same, so it gets the request twice.
		u.hc.CloseIdleConnections()
		ex, err = u.try(ctx, req, t)
	}
	return ex, err
}

var errStaleConn = errors.New("pooled connection closed by node")

// NOTE: the check runs when a pooled connection is taken, so bytes that a
// node sends after it, before the response to the new request, are still
// read as that response. The real response then waits in the socket, and
// the next check drops the connection. But while each next request takes
// the connection before the node has sent the previous response, every
// request gets the response of the one before it. Only a node that sends
// a response no request asked for, which breaks HTTP/1.1, starts that.
// The check costs one recv(2) per reused connection.

// maxStaleConns bounds the pooled connections that one request drops as
// unfit before it takes the next one as it is.
const maxStaleConns = 16

// idleChecker is a connection that can tell whether it is still fit for
// a request after waiting in a pool (rawconn.Conn on Linux).
type idleChecker interface{ Idle() bool }

// idleFit reports whether a pooled connection may carry a request.
// NOTE: only rawconn.Conn is checked. A TLS connection to a node, and
// any connection on systems other than Linux, is taken as it is.
func idleFit(c net.Conn) bool {
	ic, ok := c.(idleChecker)
	return !ok || ic.Idle()
}

// unblockedWrite is the largest request body that is written without a
// deadline. It is Linux's initial TCP send buffer (the middle value of
// net.ipv4.tcp_wmem, 16 KiB by default), which a pooled or new connection
// has free, so such a write does not wait for the node.
const unblockedWrite = 16 << 10

func (u *upstream) try(ctx context.Context, req *fasthttp.Request, t timeouts) (*exchange, error) {
	cc, err := u.hc.AcquireConn(t.connect, false)
	// A pooled connection on which the node sent something unasked, or
	// which it closed, is dropped for the next one: those bytes would be
	// read as this request's response.
	for stale := 0; err == nil && !cc.LastUseTime().IsZero() && !idleFit(cc.Conn()) &&
		stale < maxStaleConns; stale++ {
		u.hc.CloseConn(cc)
		cc, err = u.hc.AcquireConn(t.connect, false)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w: %w", u.node.Name, errConnect, err)
	}
	conn := cc.Conn()
	ex := exchangePool.Get().(*exchange)
	ex.u, ex.conn, ex.idle = u, conn, t.idle
	ex.done = func(reuse bool) {
		if reuse {
			u.hc.ReleaseConn(cc)
		} else {
			u.hc.CloseConn(cc)
		}
	}
	if w, ok := ctx.(*clientWatch); ok && w.attach(ex) {
		ex.watch = w
	} else {
		ex.stop = context.AfterFunc(ctx, ex.abort)
	}
	reused := !cc.LastUseTime().IsZero()
	if !u.node.WatchDown(&ex.downLink, ex) {
		// The node went down after the balancer placed the request on it.
		ex.close()
		return nil, u.nodeDownError()
	}
	ex.waitingHead = true

	// Ollama bound to loopback rejects a Host that is not its own with 403.
	req.Header.SetHost(u.host)
	// The first-byte timeout counts from the start of sending, so a node
	// that stops reading a large body fails the same way as one that sends
	// no response. A body up to unblockedWrite fits in the socket's buffer
	// and does not wait, so it skips the two deadline changes.
	ex.deadline = time.Now().Add(t.firstByte)
	// The read deadline is in place before the write, since a small
	// request waits for the response head within the write.
	_ = conn.SetReadDeadline(ex.deadline)
	if ex.cancelled.Load() || ex.nodeDown.Load() {
		// A cancellation, or the node going down, before the read deadline
		// was set would otherwise be undone by it.
		_ = conn.SetDeadline(time.Unix(1, 0))
	}
	bounded := len(req.Body()) > unblockedWrite
	if bounded {
		_ = conn.SetWriteDeadline(ex.deadline)
	}
	if err := ex.writeRequest(req, bounded); err != nil {
		down := ex.endHeadWait()
		ex.close()
		if down && ctx.Err() == nil {
			return nil, u.nodeDownError()
		}
		// A request larger than the write buffer takes several writes, and
		// one after the first fails on a connection the node has closed.
		// The node cannot have served a request it did not receive whole.
		if reused && isConnClosed(err) && ctx.Err() == nil {
			return nil, errStaleConn
		}
		if isTimeout(err) && ctx.Err() == nil {
			return nil, fmt.Errorf("node %s: %w", u.node.Name, errBodyNotTaken)
		}
		return nil, u.wrap(ctx, "send request", err)
	}
	if bounded {
		_ = conn.SetWriteDeadline(time.Time{})
	}
	if ex.cancelled.Load() || ex.nodeDown.Load() {
		// A cancellation, or the node going down, while the request was
		// written would otherwise be undone by the cleared write deadline.
		_ = conn.SetDeadline(time.Unix(1, 0))
	}
	ex.reader = idleReader{Conn: conn, ex: ex}
	ex.br = u.hc.AcquireReader(&ex.reader)
	interim, err := readFinalHead(&ex.resp, ex.br)
	down := ex.endHeadWait()
	if err != nil {
		// fasthttp leaves what it read of a head it failed on in br.
		received := ex.br.Buffered() > 0
		ex.close()
		if down && ctx.Err() == nil {
			return nil, u.nodeDownError()
		}
		// A node that sent an informational response has read the request.
		if reused && interim == 0 && isConnClosed(err) && ctx.Err() == nil {
			return nil, errStaleConn
		}
		if isTimeout(err) && ctx.Err() == nil {
			return nil, fmt.Errorf("node %s: %w", u.node.Name, errFirstByteTimeout)
		}
		var head *headReadError
		switch {
		case errors.As(err, &head):
		case received:
			err = newHeadReadError(err)
		case isConnClosed(err):
			err = fmt.Errorf("connection closed before the response head: %w", err)
		}
		return nil, u.wrap(ctx, "read response", err)
	}
	if down {
		// The head arrived as the node went down, and the deadline that
		// ended the wait would fail the first read of the body. Nothing
		// has reached the client, so the request can go to another node.
		ex.close()
		if ctx.Err() == nil {
			return nil, u.nodeDownError()
		}
		return nil, context.Cause(ctx)
	}
	if reused && ex.resp.StatusCode() == fasthttp.StatusRequestTimeout && ctx.Err() == nil {
		// Some servers send 408 on a keep-alive connection that they close
		// for being idle. On a pooled connection it responds to no request.
		ex.close()
		return nil, errStaleConn
	}
	ex.setBody(req.Header.IsHead())
	return ex, nil
}

// writeRequest sends req to the node. A request that fits in the
// socket's send buffer (bounded is false) goes out in one write that also
// waits for the response (rawconn.Conn.WriteAwaitRead), which saves one
// read(2) call per request.
func (ex *exchange) writeRequest(req *fasthttp.Request, bounded bool) error {
	aw, ok := ex.conn.(awaitWriter)
	if !ok || bounded || req.IsBodyStream() {
		bw := ex.u.hc.AcquireWriter(ex.conn)
		defer ex.u.hc.ReleaseWriter(bw)
		if err := req.Write(bw); err != nil {
			return err
		}
		return bw.Flush()
	}
	ra := requestBufPool.Get().(*requestBuf)
	defer ra.release()
	ra.bw.Reset(ra)
	if err := req.Write(ra.bw); err != nil {
		return err
	}
	if err := ra.bw.Flush(); err != nil {
		return err
	}
	_, err := aw.WriteAwaitRead(ra.b)
	return err
}

// awaitWriter is a connection that can write a request and wait for the
// response in one step (rawconn.Conn on Linux).
type awaitWriter interface {
	WriteAwaitRead(b []byte) (int, error)
}

// requestBuf collects a serialized request for one write.
type requestBuf struct {
	b  []byte
	bw *bufio.Writer
}

// Write appends p to the buffer.
func (ra *requestBuf) Write(p []byte) (int, error) {
	ra.b = append(ra.b, p...)
	return len(p), nil
}

// maxPooledRequestBuf bounds the buffer that goes back to the pool, so that
// one large request does not stay in memory.
const maxPooledRequestBuf = 64 << 10

var requestBufPool = sync.Pool{New: func() any {
	ra := &requestBuf{}
	ra.bw = bufio.NewWriterSize(ra, 4096)
	return ra
}}

func (ra *requestBuf) release() {
	if cap(ra.b) > maxPooledRequestBuf {
		return
	}
	ra.b = ra.b[:0]
	requestBufPool.Put(ra)
}

// setBody prepares the body reader from the framing of the response. A
// response to HEAD, and a 1xx, 204 or 304, has no body, whatever its
// Content-Length header states.
func (ex *exchange) setBody(head bool) {
	ex.reuse = !ex.resp.ConnectionClose()
	ex.chunked = false
	st := ex.resp.StatusCode()
	if head || st < 200 || st == 204 || st == 304 {
		ex.body = http.NoBody
		return
	}
	switch n := ex.resp.ContentLength(); {
	case n >= 0:
		ex.limited = io.LimitedReader{R: ex.br, N: int64(n)}
		ex.body = &ex.limited
	case n == -1:
		ex.body = httputil.NewChunkedReader(ex.br)
		ex.chunked = true
	default:
		// Identity body until the node closes the connection.
		ex.body = ex.br
		ex.reuse = false
	}
}

// Read reads the response body. From the first call on, each read from
// the node's socket may wait at most the idle timeout (see idleReader).
func (ex *exchange) Read(p []byte) (int, error) {
	ex.idling = true
	n, err := ex.body.Read(p)
	if err != nil && err != io.EOF && isTimeout(err) {
		if ex.cancelled.Load() {
			// The deadline in the past was the cancellation's.
			return n, errCancelled
		}
		return n, errIdleTimeout
	}
	if err == io.EOF && ex.body == &ex.limited && ex.limited.N > 0 {
		// The node closed the connection short of its Content-Length.
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF && ex.chunked {
		// The chunked reader stops after the last chunk's size line. The
		// trailer section up to its empty line belongs to this response,
		// and left unread it would end the connection's reuse.
		ex.chunked = false
		if terr := skipTrailer(ex.br); terr != nil {
			ex.reuse = false
		}
	}
	if err == io.ErrUnexpectedEOF {
		ex.reuse = false
	}
	return n, err
}

// maxTrailerBytes bounds the trailer section of a chunked response.
const maxTrailerBytes = 64 << 10

// skipTrailer reads the trailer section of a chunked body, the lines up
// to and including the first empty one, and discards it.
func skipTrailer(br *bufio.Reader) error {
	read := 0
	for {
		line, err := br.ReadSlice('\n')
		read += len(line)
		if err != nil {
			return err
		}
		if read > maxTrailerBytes {
			return errors.New("trailer section too large")
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}

// idleReader is the node's connection as read by the exchange's
// bufio.Reader. Once the body is being read, it bounds the wait of every read from
// the socket by the idle timeout, so a chunk that arrives in parts gets
// the whole timeout for each part. A response read whole with its head
// changes no deadline. A later deadline reaches the poller only when the
// earlier one passes (internal/rawconn), so this costs little per read.
type idleReader struct {
	net.Conn
	ex *exchange
}

func (r *idleReader) Read(p []byte) (int, error) {
	ex := r.ex
	if ex.idling && (ex.idle > 0 || !ex.deadline.IsZero()) {
		ex.deadline = time.Time{}
		if ex.idle > 0 {
			ex.deadline = time.Now().Add(ex.idle)
		}
		_ = r.Conn.SetReadDeadline(ex.deadline)
		// A cancellation between the check and the new deadline would
		// otherwise be undone.
		if ex.cancelled.Load() {
			return 0, errCancelled
		}
	}
	return r.Conn.Read(p)
}

// readAll reads the whole body and fails when it exceeds limit bytes.
func (ex *exchange) readAll(limit int64) ([]byte, error) {
	var buf []byte
	if n := ex.resp.ContentLength(); n > 0 && int64(n) <= limit {
		buf = make([]byte, 0, n)
	}
	r := io.LimitReader(ex, limit+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			ex.reuse = false
			return buf, err
		}
	}
	if int64(len(buf)) > limit {
		ex.reuse = false
		return buf, fmt.Errorf("%w: over %d bytes", errBodyTooLarge, limit)
	}
	return buf, nil
}

// copyBuffers holds the buffers of readInto, which io.Copy would
// otherwise allocate for every response.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 16<<10)
	return &b
}}

// readInto copies the whole body to w, failing past limit bytes.
func (ex *exchange) readInto(w io.Writer, limit int64) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := ex.Read(buf)
		if n > 0 {
			total += int64(n)
			if total > limit {
				ex.reuse = false
				return fmt.Errorf("%w: over %d bytes", errBodyTooLarge, limit)
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				ex.reuse = false
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			ex.reuse = false
			if isConnClosed(err) {
				return bodyCut(err)
			}
			return err
		}
	}
}

// abort ends the exchange from another goroutine when its context ends:
// the pending read or write fails at once.
func (ex *exchange) abort() {
	ex.cancelled.Store(true)
	if h := ex.handle.Load(); h != nil {
		h.Cancel()
		return
	}
	_ = ex.conn.SetDeadline(time.Unix(1, 0))
}

// NodeDown ends the wait for the response head when health checks mark
// the node down (balancer.DownListener): the pending write or read fails
// at once. The node's lock is held, so it only sets the flag and the
// deadline.
func (ex *exchange) NodeDown() {
	ex.nodeDown.Store(true)
	_ = ex.conn.SetDeadline(time.Unix(1, 0))
}

// endHeadWait takes the exchange out of its node's DownListeners and
// reports whether the node went down while the exchange waited.
func (ex *exchange) endHeadWait() bool {
	if ex.waitingHead {
		ex.waitingHead = false
		if !ex.u.node.UnwatchDown(&ex.downLink) {
			return true
		}
	}
	return ex.nodeDown.Load()
}

func (u *upstream) nodeDownError() error {
	return fmt.Errorf("node %s: %w", u.node.Name, errNodeMarkedDown)
}

// finish ends an exchange whose body was read in full, and returns the
// connection to the pool when it can be reused.
func (ex *exchange) finish() { ex.closeWith(true) }

// close ends the exchange and closes its connection.
func (ex *exchange) close() { ex.closeWith(false) }

func (ex *exchange) closeWith(complete bool) {
	if ex.closed {
		return
	}
	ex.closed = true
	ex.endHeadWait()
	var cancelled bool
	if ex.watch != nil {
		cancelled = !ex.watch.detach(ex)
	} else if ex.stop != nil {
		cancelled = !ex.stop()
	}
	if ex.br != nil {
		if ex.br.Buffered() > 0 {
			// The node sent more than the response: the connection's
			// next reads would start with it.
			ex.reuse = false
		}
		ex.u.hc.ReleaseReader(ex.br)
		ex.br = nil
	}
	// A pooled connection keeps its read deadline, because the next
	// exchange on it sets its own before it reads.
	ex.done(complete && ex.reuse && !cancelled)
	if cancelled {
		// The cancellation callback may still be running and holds ex.
		return
	}
	ex.recycle()
}

// recycle clears the exchange and puts it back in the pool, keeping the
// buffers of its response header.
func (ex *exchange) recycle() {
	ex.u, ex.conn, ex.done, ex.body, ex.stop, ex.watch = nil, nil, nil, nil, nil, nil
	ex.limited = io.LimitedReader{}
	ex.idle, ex.deadline, ex.idling = 0, time.Time{}, false
	ex.reader = idleReader{}
	ex.reuse, ex.closed, ex.chunked = false, false, false
	ex.cancelled.Store(false)
	ex.waitingHead = false
	ex.nodeDown.Store(false)
	ex.handle.Store(nil)
	ex.resp.Reset()
	exchangePool.Put(ex)
}

// maxInterimHeads bounds the informational (1xx) responses that a node may
// send before its final response.
const maxInterimHeads = 16

// readFinalHead reads response heads from br into h until one is final.
// It skips informational (1xx) responses such as 100 Continue and 103
// Early Hints, which may come before the final response (RFC 9110,
// section 15.2): passed on as the response, they would leave the client
// waiting for one that never comes. 101 Switching Protocols is final, and
// fails as a switch that the proxy does not relay. readFinalHead returns
// the number of informational responses it skipped.
// NOTE: RFC 9110 requires a proxy to forward 1xx responses. They are dropped
// here, since fasthttp's server writes no interim responses but its own
// 100 Continue, and Ollama sends none to a request without Expect, which
// the proxy does not forward.
func readFinalHead(h *fasthttp.ResponseHeader, br *bufio.Reader) (int, error) {
	for interim := 0; ; interim++ {
		if err := h.Read(br); err != nil {
			return interim, err
		}
		switch st := h.StatusCode(); {
		case st == fasthttp.StatusSwitchingProtocols:
			return interim, &headReadError{kind: "node switched protocols (101), which the proxy does not relay",
				err: errors.New("unrequested 101 Switching Protocols")}
		case st >= 200:
			return interim, nil
		case interim == maxInterimHeads:
			return interim, &headReadError{kind: "more than " + itoa(maxInterimHeads) +
				" informational (1xx) responses before the final response",
				err: fmt.Errorf("status %d", st)}
		}
	}
}

// headReadError is the failure to read a response head of which the node
// sent some bytes. fasthttp's message then quotes those bytes, which may
// come from any program that listens at the node's address. Error returns
// the whole message for the log, and clientText sends the client only
// kind.
type headReadError struct {
	kind string
	err  error
}

func (e *headReadError) Error() string { return e.kind + ": " + e.err.Error() }

func (e *headReadError) Unwrap() error { return e.err }

// newHeadReadError names the kind of err, an error of
// fasthttp.ResponseHeader.Read after the node sent part of a head.
func newHeadReadError(err error) *headReadError {
	var small *fasthttp.ErrSmallBuffer
	kind := "invalid response head"
	switch {
	case errors.As(err, &small):
		kind = "response head exceeds " + itoa(upstreamReadBuffer) + " bytes"
	case isConnClosed(err):
		kind = "connection closed before the end of the response head"
	}
	return &headReadError{kind: kind, err: err}
}

// wrap names the step that failed, and reports a cancelled context as
// such rather than as the I/O error it caused.
func (u *upstream) wrap(ctx context.Context, step string, err error) error {
	if cerr := context.Cause(ctx); cerr != nil {
		return cerr
	}
	return fmt.Errorf("%s to node %s: %w", step, u.node.Name, err)
}

// isTimeout reports whether err is a deadline's timeout: a net.Error, or
// fasthttp.ErrTimeout, which fasthttp returns when a deadline ends a read
// of a response head and which is not a net.Error.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isConnClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || isReset(err)
}
