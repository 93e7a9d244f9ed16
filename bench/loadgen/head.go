package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/llmproxy/llmproxy/internal/streamloop"
)

// maxHeadBytes bounds the head of a response: status line and headers.
const maxHeadBytes = 16 << 10

// errorBodyBytes is how much of the body of a response whose status is
// not 200 goes into its StatusError.
const errorBodyBytes = 200

// errBadHead means a response head breaks HTTP/1.1's grammar.
var errBadHead = errors.New("malformed response head")

// responseHead is the part of a response head that a stream reader
// uses.
type responseHead struct {
	status  int
	framing streamloop.Framing
	// length is the body's size when framing is streamloop.Length.
	length int64
	// keepAlive is set when the connection may carry the next request
	// after the body.
	keepAlive bool
}

// headLength returns the length of the head at the start of b, through
// the empty line that ends it, or -1 when b does not hold all of it.
func headLength(b []byte) int {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return -1
	}
	return i + 4
}

// parseHead parses a response head that headLength delimited, as the
// response to a POST request.
func parseHead(b []byte) (responseHead, error) {
	lines := bytes.Split(b[:len(b)-4], []byte("\r\n"))
	h, err := parseStatusLine(lines[0])
	if err != nil {
		return h, err
	}
	var codings, length []byte
	for _, line := range lines[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return h, fmt.Errorf("%w: header line %q", errBadHead, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			codings = value
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length != nil && !bytes.Equal(length, value) {
				return h, fmt.Errorf("%w: Content-Length %q and %q", errBadHead, length, value)
			}
			length = value
		case bytes.EqualFold(name, []byte("Connection")):
			h.keepAlive = connectionKeepAlive(value, h.keepAlive)
		}
	}
	return h, h.setFraming(codings, length)
}

// setFraming sets how the body ends from the Transfer-Encoding and
// Content-Length values, either of which may be nil, as RFC 9112
// section 6.3 orders them for a response.
func (h *responseHead) setFraming(codings, length []byte) error {
	switch {
	case h.status < 200 || h.status == 204 || h.status == 304:
		h.framing, h.length = streamloop.Length, 0
	case codings != nil:
		// The body is chunked when chunked is the last coding, and with
		// another last coding it runs until the connection closes.
		last := codings[bytes.LastIndexByte(codings, ',')+1:]
		if bytes.EqualFold(bytes.TrimSpace(last), []byte("chunked")) {
			h.framing = streamloop.Chunked
			return nil
		}
		h.framing, h.keepAlive = streamloop.UntilClose, false
	case length != nil:
		n, err := strconv.ParseInt(string(length), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: Content-Length %q", errBadHead, length)
		}
		h.framing, h.length = streamloop.Length, n
	default:
		h.framing, h.keepAlive = streamloop.UntilClose, false
	}
	return nil
}

// parseStatusLine parses a line such as "HTTP/1.1 200 OK". The
// connection stays open by default for HTTP/1.1 and closes for HTTP/1.0.
func parseStatusLine(line []byte) (responseHead, error) {
	var h responseHead
	version, rest, ok := bytes.Cut(line, []byte(" "))
	switch {
	case !ok:
		return h, fmt.Errorf("%w: status line %q", errBadHead, line)
	case bytes.Equal(version, []byte("HTTP/1.1")):
		h.keepAlive = true
	case !bytes.Equal(version, []byte("HTTP/1.0")):
		return h, fmt.Errorf("%w: version %q", errBadHead, version)
	}
	code, _, _ := bytes.Cut(rest, []byte(" "))
	status, err := strconv.Atoi(string(code))
	if err != nil || len(code) != 3 || status < 100 {
		return h, fmt.Errorf("%w: status line %q", errBadHead, line)
	}
	h.status = status
	return h, nil
}

// connectionKeepAlive applies the options of a Connection header to
// keepAlive.
func connectionKeepAlive(value []byte, keepAlive bool) bool {
	for option := range bytes.SplitSeq(value, []byte(",")) {
		option = bytes.TrimSpace(option)
		switch {
		case bytes.EqualFold(option, []byte("close")):
			return false
		case bytes.EqualFold(option, []byte("keep-alive")):
			keepAlive = true
		}
	}
	return keepAlive
}
