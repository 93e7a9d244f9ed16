package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// errClientGone is the cancellation cause when the client closed its
// connection before the response was complete.
var errClientGone = errors.New("client closed the connection")

// watchDelay is the time a request runs before its client connection is
// watched. Most responses complete sooner and then cost no goroutine and no
// deadline changes. A client that leaves a longer request is noticed at
// most this much later.
const watchDelay = 20 * time.Millisecond

// clientWatch notices a client that closes its connection while the proxy
// waits on a node. fasthttp reports no such event, and a request waiting
// for a cold model load writes nothing for minutes. So the watch blocks in
// a read on the client connection. A keep-alive client sends nothing while
// it waits for a response, so the read returns only when the client closes
// the connection (EOF or reset).
//
// NOTE: a client that pipelines its next request before this response is
// complete loses the first byte of it to the watch. Ollama and OpenAI
// clients do not pipeline.
type clientWatch struct {
	conn   net.Conn
	cancel context.CancelCauseFunc
	done   chan struct{}
	timer  *time.Timer

	// mu orders starting the read against stopping the watch.
	mu      sync.Mutex
	started bool
	stopped atomic.Bool
	// pipelined is set when the client sent bytes during the response.
	pipelined atomic.Bool
}

// watchClient returns a context cancelled with errClientGone when the
// client goes away, watching conn from watchDelay on. Stop the watch
// before the server reads from conn again.
func watchClient(parent context.Context, conn net.Conn) (context.Context, *clientWatch) {
	ctx, cancel := context.WithCancelCause(parent)
	w := &clientWatch{conn: conn, cancel: cancel, done: make(chan struct{})}
	if conn == nil {
		close(w.done)
		return ctx, w
	}
	w.timer = time.AfterFunc(watchDelay, w.start)
	return ctx, w
}

func (w *clientWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped.Load() {
		return
	}
	w.started = true
	go w.run()
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
	if w.conn == nil {
		w.stopped.Store(true)
		return
	}
	w.mu.Lock()
	first := !w.stopped.Swap(true)
	started := w.started
	w.mu.Unlock()
	if !first {
		return
	}
	w.timer.Stop()
	if !started {
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

// gone reports whether the watch saw the client close its connection.
func (w *clientWatch) gone() bool {
	w.mu.Lock()
	started := w.started
	w.mu.Unlock()
	if !started {
		return false
	}
	select {
	case <-w.done:
		return !w.stopped.Load() && !w.pipelined.Load()
	default:
		return false
	}
}
