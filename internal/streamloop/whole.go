package streamloop

import "bytes"

// Unit is the piece of a stream that a relay passes on only whole. A
// client that reads a stream line by line cannot parse part of a line,
// and a node that fails mid-line would leave it one, in front of the
// error that the relay appends.
type Unit uint8

const (
	// AnyBytes passes bytes on as they arrive.
	AnyBytes Unit = iota
	// Lines ends at each '\n', as NDJSON lines do.
	Lines
	// Events ends at each blank line, as SSE events do. Lines may end in
	// LF, CRLF or CR.
	Events
)

// WholeLen returns the length of the longest prefix of b that ends where
// a unit ends. b must start where a unit starts, so a blank line at its
// start ends an event. A CR at the end of b counts as a line end,
// although an LF may follow it in the next read. That LF then counts as
// a blank line, which dispatches no SSE event.
func (u Unit) WholeLen(b []byte) int {
	n := len(b)
	if n == 0 || u == AnyBytes {
		return n
	}
	if u == Lines {
		if b[n-1] == '\n' {
			return n
		}
		return bytes.LastIndexByte(b, '\n') + 1
	}
	// Each candidate end follows a CR or LF, and the first one checked is
	// the end of b, where a whole event from the node ends.
	for e := n; e > 0; e = bytes.LastIndexAny(b[:e-1], "\r\n") + 1 {
		if endsEvent(b, e) {
			return e
		}
	}
	return 0
}

// endsEvent reports whether b[:e] ends with a blank line, which ends an
// SSE event: a line end that follows another line end or the start of b.
func endsEvent(b []byte, e int) bool {
	var start int // of the line end before e
	switch {
	case b[e-1] == '\n' && e >= 2 && b[e-2] == '\r':
		start = e - 2
	case b[e-1] == '\n':
		start = e - 1
	case b[e-1] == '\r' && (e == len(b) || b[e] != '\n'):
		start = e - 1
	default:
		return false
	}
	return start == 0 || b[start-1] == '\n' || b[start-1] == '\r'
}
