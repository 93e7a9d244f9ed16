package main

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// bufferBeforeChunking is the body size that net/http buffers before it
// sends a header without Content-Length and chunks the body.
const bufferBeforeChunking = 2048

// responseWriter is the http.ResponseWriter of a request served by the
// ollamasim handler. It writes the header the way net/http's server does
// for the responses ollamasim makes: a body that the handler wrote in full
// without flushing, and is at most bufferBeforeChunking bytes, gets
// Content-Length. Otherwise the body is chunked, or for HTTP/1.0 ends with
// the connection. Writes block, on the connection's own goroutine.
type responseWriter struct {
	c          *conn
	req        *http.Request
	header     http.Header
	status     int // zero until WriteHeader
	sentHeader bool
	chunked    bool
	body       []byte // written and not yet sent
	err        error  // the first failed write to the connection
	out        []byte // the bytes of one write

	// closeAfter reports whether the connection must close after the
	// response. It is final once the header is sent.
	closeAfter bool
}

func newResponseWriter(c *conn, req *http.Request) *responseWriter {
	return &responseWriter{c: c, req: req, header: make(http.Header)}
}

func (w *responseWriter) Header() http.Header { return w.header }

// WriteHeader records the status; the header goes out with the first
// flush or at the end. Informational statuses are dropped.
func (w *responseWriter) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	w.body = append(w.body, p...)
	if len(w.body) > bufferBeforeChunking {
		w.send(false)
	}
	return len(p), w.err
}

// Flush sends the header and the buffered body.
func (w *responseWriter) Flush() { w.FlushError() }

// FlushError sends the header and the buffered body, and returns the
// error of the write. http.ResponseController prefers it to Flush.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.send(false)
	return w.err
}

// finish sends what remains after the handler returned, and the end of a
// chunked body.
func (w *responseWriter) finish() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.send(true)
	return w.err
}

// send writes the header if it is not sent yet, and the buffered body.
// done means the handler has returned.
func (w *responseWriter) send(done bool) {
	if w.err != nil {
		return
	}
	out := w.out[:0]
	if !w.sentHeader {
		out = w.appendHeader(out, done)
		w.sentHeader = true
	}
	switch {
	case w.req.Method == http.MethodHead || !bodyAllowed(w.status):
	case w.chunked:
		if len(w.body) > 0 {
			out = strconv.AppendInt(out, int64(len(w.body)), 16)
			out = append(out, "\r\n"...)
			out = append(out, w.body...)
			out = append(out, "\r\n"...)
		}
		if done {
			out = append(out, "0\r\n\r\n"...)
		}
	default:
		out = append(out, w.body...)
	}
	w.body = w.body[:0]
	if len(out) > 0 {
		_, w.err = w.c.nc.Write(out)
	}
	w.out = out
	if w.err != nil {
		w.closeAfter = true
	}
}

// appendHeader appends the status line and the header, following the
// rules of net/http's chunkWriter.writeHeader for the cases ollamasim
// meets: no trailers, and no Transfer-Encoding set by the handler.
func (w *responseWriter) appendHeader(b []byte, done bool) []byte {
	h := w.header
	isHEAD := w.req.Method == http.MethodHead
	is11 := w.req.ProtoAtLeast(1, 1)
	hasBody := bodyAllowed(w.status)
	var contentLength, contentType, connection, transferEncoding string

	if done && hasBody && h.Get("Content-Length") == "" && (!isHEAD || len(w.body) > 0) {
		contentLength = strconv.Itoa(len(w.body))
	}
	hasLength := contentLength != "" || h.Get("Content-Length") != ""

	// ReadRequest sets Close for HTTP/1.1 with Connection: close, and for
	// HTTP/1.0 without Connection: keep-alive.
	wants10KeepAlive := !is11 && !w.req.Close
	if wants10KeepAlive && (isHEAD || hasLength || !hasBody) {
		if _, set := h["Connection"]; !set {
			connection = "keep-alive"
		}
	} else if !is11 || w.req.Close {
		w.closeAfter = true
	}
	if h.Get("Connection") == "close" {
		w.closeAfter = true
	}

	if hasBody {
		if _, set := h["Content-Type"]; !set && len(w.body) > 0 {
			contentType = http.DetectContentType(w.body)
		}
	} else {
		h.Del("Content-Length")
		h.Del("Transfer-Encoding")
		if w.status == http.StatusNotModified {
			h.Del("Content-Type")
		}
	}

	switch {
	case isHEAD || !hasBody:
	case hasLength:
	case is11:
		w.chunked = true
		transferEncoding = "chunked"
		h.Del("Content-Length")
	default:
		w.closeAfter = true
	}
	if w.closeAfter && !hasToken(h.Get("Connection"), "close") {
		h.Del("Connection")
		if is11 {
			connection = "close"
		}
	}

	if is11 {
		b = append(b, "HTTP/1.1 "...)
	} else {
		b = append(b, "HTTP/1.0 "...)
	}
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	b = appendHeaderFields(b, h)
	if _, set := h["Date"]; !set {
		b = appendField(b, "Date", time.Now().UTC().Format(http.TimeFormat))
	}
	b = appendField(b, "Content-Length", contentLength)
	b = appendField(b, "Content-Type", contentType)
	b = appendField(b, "Connection", connection)
	b = appendField(b, "Transfer-Encoding", transferEncoding)
	return append(b, "\r\n"...)
}

// appendHeaderFields appends the fields of h sorted by name, as
// http.Header.Write writes them.
func appendHeaderFields(b []byte, h http.Header) []byte {
	var sb strings.Builder
	h.Write(&sb)
	return append(b, sb.String()...)
}

// appendField appends "name: value", or nothing when value is empty.
func appendField(b []byte, name, value string) []byte {
	if value == "" {
		return b
	}
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

// bodyAllowed reports whether a response with status may have a body: not
// 1xx, 204 or 304, the rule of net/http's bodyAllowedForStatus.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// hasToken reports whether the comma-separated header value v contains
// token, ignoring case.
func hasToken(v, token string) bool {
	for part := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(part), token) {
			return true
		}
	}
	return false
}
