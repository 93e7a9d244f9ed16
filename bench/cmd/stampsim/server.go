package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// readHeaderTimeout bounds the time from the first byte of a request to the
// end of its header, as http.Server.ReadHeaderTimeout does.
const readHeaderTimeout = 10 * time.Second

// server serves the data port: lean streams, and every other request
// through the ollamasim handler.
type server struct {
	node    *ollamasim.Server
	handler http.Handler // the node's routes, with lean streams in /_sim/stats
	log     *slog.Logger
	pacer   *pacer
	slots   *slots
	stats   *leanStats

	interval   time.Duration // one token time; zero means unpaced
	promptRate float64       // prompt tokens per second; zero means unpaced

	baseCtx context.Context // cancelled by close; parent of fallback requests
	cancel  context.CancelFunc
	done    chan struct{} // closed by close
	wg      sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	ln     net.Listener
	conns  map[*conn]struct{}
	closed bool
}

// newServer returns a server for node, whose configuration is cfg before
// defaults. It starts the pacer.
func newServer(node *ollamasim.Server, cfg ollamasim.Config, logger *slog.Logger) *server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{
		node:       node,
		log:        logger,
		slots:      newSlots(cfg),
		stats:      newLeanStats(),
		interval:   tokenTime(cfg.TokensPerSec, 1),
		promptRate: cfg.PromptTokensPerSec,
		baseCtx:    ctx,
		cancel:     cancel,
		done:       make(chan struct{}),
		conns:      make(map[*conn]struct{}),
	}
	s.handler = s.withLeanStats(node)
	s.pacer = newPacer(s)
	s.wg.Go(func() { s.pacer.run(s.done) })
	return s
}

// tokenTime returns the time n tokens take at rate tokens per second, and
// zero when rate is zero (no pacing), as ollamasim paces.
func tokenTime(rate float64, n int) time.Duration {
	if rate <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(float64(n) / rate * float64(time.Second))
}

// serve accepts connections on ln until close. It returns nil after close,
// and the error of Accept otherwise.
func (s *server) serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()

	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			if isTemporaryAcceptError(err) {
				s.log.Warn("accept failed, retrying in 10ms", "error", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		c, err := newConn(nc)
		if err != nil {
			s.log.Error("closing accepted connection without a usable socket", "error", err)
			nc.Close()
			continue
		}
		if !s.track(c) {
			nc.Close()
			return nil
		}
		s.wg.Go(func() { s.serveConn(c) })
	}
}

// isTemporaryAcceptError reports whether Accept failed for a reason that
// passes, such as too many open files, or a connection reset before it was
// accepted.
func isTemporaryAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

func (s *server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// close stops the listener, closes every connection, ends the requests in
// progress and waits for the server's goroutines. It does not close the
// node.
func (s *server) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.cancel()
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()

	// The pacer writes to sockets by number, so it must have stopped
	// before the connections close.
	<-s.pacer.stopped
	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveConn serves the requests of one connection, one after another,
// until the client or a response closes it.
//
// While the pacer writes a stream, the connection's goroutine already
// waits for the next request, as net/http's server reads in the
// background. So a client that closes its connection mid-stream cancels
// the stream, which ends before its next chunk. The connection closes
// only after the pacer has let go of its stream, because the pacer
// writes to the socket by number (see rawSocket).
func (s *server) serveConn(c *conn) {
	defer s.untrack(c)
	defer c.nc.Close()
	for {
		req, body, err := c.readRequest()
		if err != nil {
			if c.streaming {
				s.cancelStream(c)
			} else {
				s.rejectRequest(c, err)
			}
			return
		}
		if !s.awaitStream(c) || !s.serveRequest(c, req, body) {
			return
		}
	}
}

// awaitStream waits until the pacer has written the end of the
// connection's stream, if one is in progress, and reports whether the
// stream ended normally.
func (s *server) awaitStream(c *conn) bool {
	if !c.streaming {
		return true
	}
	select {
	case err := <-c.ended:
		c.streaming = false
		return err == nil
	case <-s.pacer.stopped:
		return false
	}
}

// cancelStream ends the stream of a connection whose client went away: it
// leaves the queue at once, and a started stream ends at its next chunk.
func (s *server) cancelStream(c *conn) {
	if s.slots.withdraw(c.stream) {
		s.stats.cancelled.Add(1)
		return
	}
	c.cancelled.Store(true)
	s.awaitStream(c)
}

// rejectRequest responds to a request that could not be read the way
// net/http does: nothing for a connection that closed or timed out, 417
// for an unknown Expect, and 400 for anything malformed.
func (s *server) rejectRequest(c *conn, err error) {
	var expect *expectError
	switch {
	case isConnReadError(err):
	case errors.As(err, &expect):
		w := newResponseWriter(c, expect.req)
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusExpectationFailed)
		w.finish()
	default:
		s.log.Debug("malformed request", "remote_addr", c.nc.RemoteAddr(), "error", err)
		c.writeBadRequest()
	}
}

// serveRequest serves one request and reports whether the connection may
// serve another.
func (s *server) serveRequest(c *conn, req *http.Request, body []byte) bool {
	if lr, ok := s.leanRequestOf(c, req, body); ok {
		return s.serveStream(c, req, lr)
	}
	return s.serveFallback(c, req, body)
}

// serveStream serves a lean stream: it takes a slot and hands the stream
// to the pacer. A response that closes the connection is waited for.
func (s *server) serveStream(c *conn, req *http.Request, lr leanRequest) bool {
	s.stats.received(lr.route, lr.modelKey)
	st := newStream(c, req, lr, time.Now(), s.node.NewTokenStream())
	st.promptTime = tokenTime(s.promptRate, lr.promptTokens)
	switch s.slots.admit(st) {
	case rejected:
		s.stats.rejected.Add(1)
		return s.writeBusy(c, req, lr.openAI)
	case admitted:
		st.start(time.Now(), s.interval)
		s.pacer.add(st)
	case queued:
		// The pacer starts it when a slot of its model frees.
	}
	c.streaming, c.stream = true, st
	if st.closeAfter {
		s.awaitStream(c)
		return false
	}
	return true
}

// serveFallback serves a request with the ollamasim handler.
func (s *server) serveFallback(c *conn, req *http.Request, body []byte) bool {
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.RemoteAddr = c.nc.RemoteAddr().String()
	// ollamasim reads the local address for Ollama's Host check.
	req = req.WithContext(context.WithValue(s.baseCtx, http.LocalAddrContextKey, c.local))
	w := newResponseWriter(c, req)
	if !s.runHandler(w, req) {
		return false
	}
	if err := w.finish(); err != nil {
		return false
	}
	return !w.closeAfter
}

// runHandler runs the ollamasim handler and reports whether it returned.
// A handler that panics, as ollamasim does with http.ErrAbortHandler to
// drop a connection, leaves a response that must not be finished.
//
// NOTE: unlike net/http, the server does not read the connection while the
// handler runs, so a request whose client went away is noticed only when a
// write fails, and its context ends only when the server closes.
func (s *server) runHandler(w http.ResponseWriter, req *http.Request) (returned bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				s.log.Error("handler panicked", "path", req.URL.Path, "panic", v)
			}
			returned = false
		}
	}()
	s.handler.ServeHTTP(w, req)
	return true
}

// busyMessage is Ollama's ErrMaxQueue text, with its double space, as
// ollamasim sends it with 503.
const busyMessage = "server busy, please try again.  maximum pending requests exceeded"

var (
	busyAPIBody = []byte(`{"error":"` + busyMessage + `"}`)
	// Ollama's /v1 middleware writes a handler's error with json.Encoder,
	// which ends it with a newline.
	busyOpenAIBody = []byte(`{"error":{"message":"` + busyMessage +
		`","type":"api_error","param":null,"code":null}}` + "\n")
)

// writeBusy sends 503 "server busy" in the error shape of the route, and
// reports whether the connection may serve another request.
func (s *server) writeBusy(c *conn, req *http.Request, openAI bool) bool {
	w := newResponseWriter(c, req)
	body, contentType := busyAPIBody, "application/json; charset=utf-8"
	if openAI {
		body, contentType = busyOpenAIBody, "application/json"
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusServiceUnavailable)
	w.Write(body)
	if err := w.finish(); err != nil {
		return false
	}
	return !w.closeAfter
}

// conn is one client connection of the data port.
type conn struct {
	nc    net.Conn
	local net.Addr
	br    *bufio.Reader
	sock  rawSocket // read by the connection's goroutine, written by the pacer
	// ended receives the end of each lean stream from the pacer: nil, or
	// the error that ended it early.
	ended     chan error
	streaming bool        // a stream was handed to the pacer and has not been awaited
	stream    *stream     // the last stream, which is in progress while streaming is set
	cancelled atomic.Bool // the client went away; the pacer ends the stream
}

func newConn(nc net.Conn) (*conn, error) {
	c := &conn{
		nc:    nc,
		local: nc.LocalAddr(),
		ended: make(chan error, 1),
	}
	if err := c.sock.init(nc); err != nil {
		return nil, err
	}
	c.br = bufio.NewReader(&c.sock)
	return c, nil
}

// expectError is a request with an Expect header other than 100-continue.
type expectError struct {
	req *http.Request
}

func (e *expectError) Error() string {
	return "unsupported Expect header " + e.req.Header.Get("Expect")
}

// readRequest reads the next request and its whole body.
func (c *conn) readRequest() (*http.Request, []byte, error) {
	// Wait for the next request without a deadline, as net/http does
	// without IdleTimeout, then bound the time its header takes.
	if _, err := c.br.Peek(1); err != nil {
		return nil, nil, err
	}
	c.nc.SetReadDeadline(time.Now().Add(readHeaderTimeout))
	req, err := http.ReadRequest(c.br)
	c.nc.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, nil, err
	}
	if expect := req.Header.Get("Expect"); expect != "" {
		if !strings.EqualFold(expect, "100-continue") || !req.ProtoAtLeast(1, 1) {
			return nil, nil, &expectError{req: req}
		}
		if req.ContentLength != 0 {
			if _, err := io.WriteString(c.nc, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
				return nil, nil, err
			}
		}
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, nil, err
	}
	return req, body, nil
}

// isConnReadError reports whether err means that the connection closed,
// broke or timed out, to which net/http sends no response.
func isConnReadError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// writeBadRequest responds to a malformed request as net/http does, and
// the connection then closes.
//
// NOTE: http.ReadRequest drops the Host header, so unlike net/http the
// server cannot tell an HTTP/1.1 request without one and accepts it.
func (c *conn) writeBadRequest() {
	const text = "400 Bad Request"
	io.WriteString(c.nc, "HTTP/1.1 "+text+
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+text)
}
