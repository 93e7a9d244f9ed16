// Package streamloop relays streamed HTTP response bodies from nodes to
// clients on a few epoll event loops. A goroutine per stream parks and
// wakes on every chunk, and Go tries each read before it waits for data.
// A loop reads a node's socket only when epoll reports data and sends
// what it read to the client as one chunk in the same pass. Each chunk
// then costs one read and one write. It runs on Linux only, and elsewhere
// Available returns false.
package streamloop

import (
	"errors"
	"sync/atomic"
	"time"
)

// Stream is one response body to relay.
type Stream struct {
	// Src is the node's socket, non-blocking. The loop only reads it.
	Src int
	// Dst is the client's socket, non-blocking. The loop writes the body
	// to it in HTTP/1.1 chunks, without the last chunk, and never closes
	// it.
	Dst int
	// Buffered holds body bytes read from Src before the handover.
	Buffered []byte
	Framing  Framing
	// Length is the body's size when Framing is Length.
	Length int64
	// Idle ends the stream when the node sends nothing, or the client
	// takes nothing, for this long. Zero turns it off.
	Idle time.Duration
	// Data receives each piece of payload before it is sent, on the loop's
	// goroutine, so it must not block. The slice is valid only during the
	// call.
	Data func([]byte)
	// Whole is the unit that the loop sends only whole. The payload after
	// the last end of a unit waits for the rest of the unit, and the
	// stream's failure drops it. At the end of the body it goes as it is.
	// AnyBytes, the zero value, holds nothing back.
	Whole Unit
	// MaxHeld bounds the payload held back for Whole: a part of a unit
	// that reaches MaxHeld bytes goes out as it is. Zero holds nothing
	// back.
	MaxHeld int
}

// Result is the outcome of a stream.
type Result struct {
	// Err is nil when the body was relayed in full.
	Err error
	// Reusable is set when the body ended cleanly with no bytes after
	// it, so the node's connection can carry another request.
	Reusable bool
	// Unsent holds framed bytes that the client's socket had not taken
	// when the stream failed, for the caller to write before any error
	// it sends.
	Unsent []byte
}

var (
	// ErrClientGone means the client closed or reset its connection.
	ErrClientGone = errors.New("client closed the connection")
	// ErrClientStalled means the client took no bytes for the idle timeout.
	ErrClientStalled = errors.New("client read nothing within the idle timeout")
	// ErrIdle means the node sent nothing for the idle timeout.
	ErrIdle = errors.New("no data from node within the idle timeout")
	// ErrCancelled means Cancel ended the stream.
	ErrCancelled = errors.New("stream cancelled")
	// ErrDataPanic means the stream's Data function panicked.
	ErrDataPanic = errors.New("stream data handler panicked")
	// ErrNodeClosed means the node closed its connection before the end
	// of a body framed by chunks or by a length. A NodeError carries it.
	ErrNodeClosed = errors.New("node closed the connection before the response body was complete")
)

// NodeError is a failure of the node's side: a read error, a body cut
// short, or broken framing.
type NodeError struct{ Err error }

func (e *NodeError) Error() string { return e.Err.Error() }
func (e *NodeError) Unwrap() error { return e.Err }

// Handle is a stream owned by a loop.
type Handle struct {
	l         *loop
	s         Stream
	dec       Decoder
	done      chan Result
	cancelled atomic.Bool

	// The fields below belong to the loop's goroutine.
	last         time.Time // last byte from the node
	stalledSince time.Time // last progress of the client while unsent is not empty
	queued       int       // the client socket's send queue at stalledSince
	unsent       []byte
	held         []byte // the start of a unit that the next read continues
	ended        bool   // the body is complete, possibly with bytes unsent
	finished     bool
	registered   bool
	reusable     bool
}
