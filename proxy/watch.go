package proxy

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// errClientGone is the cancellation cause when the client closed its
// connection before the answer was complete.
var errClientGone = errors.New("client closed the connection")

// clientWatch notices a client that closes its connection while the proxy
// waits on a node. fasthttp reports no such event, and a request waiting
// for a cold model load writes nothing for minutes, so the watch blocks in
// a read on the client connection: a keep-alive client sends nothing
// while it waits for an answer, so the read returns only when the client
// closes the connection (EOF or reset).
//
// NOTE: a client that pipelines its next request before this answer is
// complete loses the first byte of it to the watch, which then lets the
// connection close after the answer. Ollama and OpenAI clients do not
// pipeline.
type clientWatch struct {
	conn    net.Conn
	cancel  context.CancelCauseFunc
	done    chan struct{}
	stopped atomic.Bool
	// pipelined is set when the client sent bytes during the answer.
	pipelined atomic.Bool
}

// watchClient starts a watch on conn and returns a context cancelled with
// errClientGone when the client goes away. Stop the watch before the
// server reads from conn again.
func watchClient(parent context.Context, conn net.Conn) (context.Context, *clientWatch) {
	ctx, cancel := context.WithCancelCause(parent)
	w := &clientWatch{conn: conn, cancel: cancel, done: make(chan struct{})}
	if conn == nil {
		close(w.done)
		return ctx, w
	}
	go w.run()
	return ctx, w
}

func (w *clientWatch) run() {
	defer close(w.done)
	var b [1]byte
	for {
		n, err := w.conn.Read(b[:])
		if n > 0 {
			w.pipelined.Store(true)
			return
		}
		if err == nil {
			continue
		}
		if w.stopped.Load() {
			return
		}
		if isTimeout(err) {
			// A read deadline left by the server's read timeout.
			_ = w.conn.SetReadDeadline(time.Time{})
			continue
		}
		w.cancel(errClientGone)
		return
	}
}

// stop ends the watch and waits for its goroutine, leaving the connection
// without a read deadline. It is safe to call more than once.
func (w *clientWatch) stop() {
	if w.stopped.Swap(true) {
		return
	}
	if w.conn == nil {
		return
	}
	_ = w.conn.SetReadDeadline(time.Unix(1, 0))
	<-w.done
	_ = w.conn.SetReadDeadline(time.Time{})
}

// finish stops the watch and releases its context.
func (w *clientWatch) finish() {
	w.stop()
	w.cancel(context.Canceled)
}
