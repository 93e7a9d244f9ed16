package proxy

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// deniedByHead reports whether handle would reject the request of h at its
// Host, CORS or API key check (checkHost, applyCORS, identify). receiveHeader
// calls it before fasthttp reads the body, and it makes the same decisions
// with the same functions on the same parts of the head. It has no side
// effects: rate limits, quotas and anything that counts stay in handle.
func (s *Server) deniedByHead(h *fasthttp.RequestHeader) bool {
	return withHeadURI(h, func(u *fasthttp.URI) bool {
		host := u.Host()
		if !hostAllowed(host, s.listener.get(), s.config().Listen) ||
			s.originRejected(h.Peek("Origin"), host) {
			return true
		}

		key, err := s.authenticate(h)
		priority := h.Peek("X-Priority")
		if err == nil && len(priority) == 0 {
			return false
		}
		if !s.routeOf(h.Method(), u.Path()).api() {
			return false
		}
		if err != nil {
			return true
		}
		_, reject := s.priorityClass(priority, key)
		return reject != ""
	})
}

// bodyUnused reports whether handle responds to the request of h without
// reading its body: the redirect of an unclean path (cleanPathTarget) or
// a route that it serves without one (servedWithoutBody).
func (s *Server) bodyUnused(h *fasthttp.RequestHeader) bool {
	return withHeadURI(h, func(u *fasthttp.URI) bool {
		if !h.IsConnect() && mayBeUnclean(u.PathOriginal()) {
			if _, ok := cleanTarget(u); ok {
				return true
			}
		}
		return servedWithoutBody(s.routeOf(h.Method(), u.Path()))
	})
}

// withHeadURI parses the target of h into the URI whose Host and Path
// ctx.Host and ctx.Path return in handle, and returns check's result on
// it. It returns false for a target that fasthttp rejects before handle.
func withHeadURI(h *fasthttp.RequestHeader, check func(u *fasthttp.URI) bool) bool {
	u := fasthttp.AcquireURI()
	defer fasthttp.ReleaseURI(u)
	if u.Parse(h.Host(), h.RequestURI()) != nil {
		return false
	}
	return check(u)
}

// listenerAddr is the address of the listener that Serve accepts on. A
// listener bound to one address accepts connections only on it, so its
// address is the local address of each connection unless it is a wildcard
// address, and then checkHost lets every Host through.
type listenerAddr struct {
	mu    sync.Mutex
	count int // guarded by mu
	addr  atomic.Pointer[net.TCPAddr]
}

// add records the address of a listener that Serve accepts on. With a
// second listener the address of a connection is unknown.
func (l *listenerAddr) add(addr net.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count++
	tcp, _ := addr.(*net.TCPAddr)
	if l.count > 1 {
		tcp = nil
	}
	l.addr.Store(tcp)
}

// get returns the local address of every connection, or nil when it is
// unknown. hostcheck.Applies(nil) is false, so the Host check of
// deniedByHead then lets the request through, to handle's own check.
func (l *listenerAddr) get() net.Addr {
	if a := l.addr.Load(); a != nil {
		return a
	}
	return nil
}

// protocolError is an HTTP/1.x request head that fasthttp accepts and Go's
// net/http, which Ollama serves with, rejects with status. msg names the
// problem in logs. net/http writes these responses itself, before any
// handler, as plain text (conn.serve in Go 1.26's server.go), so they do
// not have the route's error shape.
type protocolError struct {
	status int
	msg    string
	// detailed is set for net/http's statusError, whose status line and
	// body carry msg after the status text. Otherwise body is the body.
	detailed bool
	body     string
}

func (e *protocolError) Error() string { return e.msg }

// write sets the response that net/http sends for e, with
// "Connection: close".
func (e *protocolError) write(ctx *fasthttp.RequestCtx) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(e.status)
	text, body := fasthttp.StatusMessage(e.status), e.body
	if e.detailed {
		text += ": " + e.msg
		body = strconv.Itoa(e.status) + " " + text
		ctx.Response.Header.SetStatusMessage([]byte(text))
	}
	if e.status == fasthttp.StatusExpectationFailed {
		// net/http responds to an unknown expectation with headers only.
		ctx.Response.Header.SetNoDefaultContentType(true)
	} else {
		ctx.SetContentType("text/plain; charset=utf-8")
	}
	ctx.SetBodyString(body)
	ctx.SetConnectionClose()
}

// asProtocolError returns err as a *protocolError: one of malformedHead,
// or fasthttp's rejection of a transfer coding (isTransferCodingError).
// It returns nil for any other error.
func asProtocolError(err error) *protocolError {
	var e *protocolError
	switch {
	case errors.As(err, &e):
		return e
	case isTransferCodingError(err):
		return transferCodingError()
	}
	return headParseError(err)
}

// headParseError returns net/http's response to a request head that
// fasthttp failed to parse, or nil when err is not such a failure. A head
// over the read buffer keeps its 431 in the route's shape, and a head cut
// by a timeout or a closed connection gets no such response.
//
// NOTE: this reads fasthttp v1.79.0's messages. net/http accepts an empty
// Host, which fasthttp rejects as missing, so that request gets net/http's
// error for a missing one.
func headParseError(err error) *protocolError {
	var small *fasthttp.ErrSmallBuffer
	var nothing fasthttp.ErrNothingRead
	if !isHeaderError(err) || errors.As(err, &small) || errors.As(err, &nothing) ||
		isTimeout(err) || isConnClosed(err) {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "missing required host header"):
		return &protocolError{status: fasthttp.StatusBadRequest, msg: "missing required Host header",
			detailed: true}
	case keyWithSpace(msg):
		return invalidHeaderName()
	}
	// net/http responds to any other head it cannot parse with a bare 400.
	return &protocolError{status: fasthttp.StatusBadRequest, msg: "invalid HTTP request",
		body: "400 Bad Request"}
}

// keyWithSpace reports whether msg is fasthttp's error for a header name
// that contains a space, such as "X-A " of "X-A : 1".
func keyWithSpace(msg string) bool {
	_, key, found := strings.Cut(msg, `invalid header key "`)
	if !found {
		return false
	}
	key, _, _ = strings.Cut(key, `"`)
	return strings.Contains(key, " ")
}

// invalidHeaderName is net/http's 400 for a header name with a space,
// which its textproto reader accepts and its server then rejects.
func invalidHeaderName() *protocolError {
	return &protocolError{status: fasthttp.StatusBadRequest, msg: "invalid header name", detailed: true}
}

// transferCodingError is net/http's 501 for a transfer coding other than
// chunked. Its body does not repeat the coding.
func transferCodingError() *protocolError {
	return &protocolError{status: fasthttp.StatusNotImplemented, msg: unsupportedTransferCoding,
		body: "Unsupported transfer encoding"}
}

// unsupportedTransferCoding is the message of the 501 for a transfer
// coding other than chunked.
const unsupportedTransferCoding = "unsupported transfer encoding"

// malformedHead returns the error that Go's net/http (Go 1.26, server.go
// and transfer.go) responds with to the head h, or nil when it accepts the
// head. It checks, in net/http's order, what fasthttp v1.79.0 lets through:
//
//   - A Transfer-Encoding that fasthttp ignores: "identity". net/http
//     accepts only one field whose value is "chunked", and responds 501.
//   - A protocol version other than HTTP/1.x: 505.
//   - A Host with a byte that a host, a port or an IPv6 literal cannot
//     contain, such as '"' or '<': 400.
//   - A field name with a space in it: 400. fasthttp rejects every other
//     byte that is not a token character.
//   - An Expect without the 100-continue token: 417.
//
// NOTE: fasthttp decides some heads otherwise than net/http, before
// receiveHeader runs. It rejects an empty Host on HTTP/1.1 with 400, which
// net/http accepts. It rejects any Transfer-Encoding on HTTP/1.0, which
// net/http ignores, and treats HTTP/1.2 to HTTP/1.9 as HTTP/1.0, which
// net/http serves as HTTP/1.1. It ends a head only at CRLF CRLF, in
// headerScanner.next and RequestHeader.tryRead, and no Server option
// changes that. So a head whose lines end in a bare LF, which net/http
// accepts, waits for more until read_timeout and gets 408.
func malformedHead(h *fasthttp.RequestHeader) *protocolError {
	spaceInName, transferEncoding := scanFieldNames(h.RawHeaders())
	if transferEncoding && h.ContentLength() != -1 {
		return transferCodingError()
	}
	// fasthttp accepts only "HTTP/d.d".
	if proto := h.Protocol(); len(proto) != len("HTTP/1.1") || proto[5] != '1' {
		return &protocolError{status: fasthttp.StatusHTTPVersionNotSupported,
			msg: "unsupported protocol version", detailed: true}
	}
	if !validHost(h.Host()) {
		return &protocolError{status: fasthttp.StatusBadRequest, msg: "malformed Host header", detailed: true}
	}
	if spaceInName {
		return invalidHeaderName()
	}
	if expect := h.Peek("Expect"); len(expect) != 0 && !hasToken(expect, "100-continue") {
		return &protocolError{status: fasthttp.StatusExpectationFailed,
			msg: "unsupported expectation " + quote(string(expect)) + " in Expect, want 100-continue"}
	}
	return nil
}

// scanFieldNames reads the field lines of a request head as received and
// reports whether a field name contains a space and whether there is a
// Transfer-Encoding field. fasthttp has validated the lines already, and
// it drops a Transfer-Encoding of "identity" from the parsed header.
func scanFieldNames(raw []byte) (spaceInName, transferEncoding bool) {
	for len(raw) > 0 {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte{'\n'})
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			// The end of the head, or a continuation line.
			continue
		}
		name, _, found := bytes.Cut(line, []byte{':'})
		if !found {
			continue
		}
		if bytes.IndexByte(name, ' ') >= 0 {
			spaceInName = true
		}
		if bytes.EqualFold(name, []byte(fasthttp.HeaderTransferEncoding)) {
			transferEncoding = true
		}
	}
	return spaceInName, transferEncoding
}

// validHost reports whether every byte of host may appear in a Host
// header: a letter, a digit, or one of the other characters of RFC 3986's
// host, port and IP literal syntax, with '%' for escapes and IPv6 zones.
func validHost(host []byte) bool {
	for _, c := range host {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v contains token,
// compared without regard to case.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var item []byte
		item, v, _ = bytes.Cut(v, []byte{','})
		if bytes.EqualFold(bytes.Trim(item, " \t"), []byte(token)) {
			return true
		}
	}
	return false
}

// isTransferCodingError reports whether err is fasthttp's rejection of a
// Transfer-Encoding on HTTP/1.1 that is not one field with the value
// "chunked", which net/http rejects with 501.
//
// NOTE: this matches the text of two messages of fasthttp v1.79.0, and
// such an error with other text gets 400. TestMalformedHeadAsGo fails if
// an upgrade changes the text.
func isTransferCodingError(err error) bool {
	const prefix = "error when reading request headers: "
	msg := err.Error()
	return strings.HasPrefix(msg, prefix+"unsupported transfer-encoding: ") ||
		strings.HasPrefix(msg, prefix+"too many transfer-encoding headers")
}

// closeUnread sends the response that the handler set and closes the
// connection, for a request whose body receiveHeader kept fasthttp from
// reading: the rest of the connection's data would otherwise be read as
// the next request. Closing a socket with unread data makes the kernel
// send a reset, which can destroy the response before the client reads
// it. So the proxy takes over the connection, writes the response,
// half-closes it and drops what the client still sends, for at most
// drainTimeout (see discard). fasthttp skips the hijack handler after it
// writes a response with "Connection: close", so closeUnread writes the
// response itself. fasthttp's shutdown does not wait for a connection
// taken over, so Server.Shutdown waits for it in handedOver; each ends
// within write_timeout and drainTimeout.
func (s *Server) closeUnread(ctx *fasthttp.RequestCtx) {
	ctx.SetConnectionClose()
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
	}
	var resp bytes.Buffer
	if _, err := ctx.Response.WriteTo(&resp); err != nil {
		// fasthttp writes the response and closes the connection.
		return
	}
	conn := ctx.Conn()
	writeTimeout := s.config().WriteTimeout
	s.handedOver.add()
	takeOver(ctx, func(c net.Conn) {
		defer s.handedOver.done()
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(resp.Bytes()); err != nil {
			return
		}
		if hc, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = hc.CloseWrite()
		}
		discard(c, -1)
	}, s.handedOver.done)
}
