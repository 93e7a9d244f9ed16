package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// errClientGone is the cancellation cause when the client closed its
// connection before the response was complete. It matches
// context.Canceled, as the error of a cancelled context should.
var errClientGone error = clientGoneError{}

type clientGoneError struct{}

func (clientGoneError) Error() string        { return "client closed the connection" }
func (clientGoneError) Is(target error) bool { return target == context.Canceled }

// watchDelay is the time a request runs before its client connection is
// watched. Most responses complete sooner and then cost no goroutine and no
// deadline changes. A client that leaves a longer request is noticed at
// most this much later, plus watchTick.
const watchDelay = 20 * time.Millisecond

// clientWatch notices a client that closes its connection while the proxy
// waits on a node, and is the context of the work done for the client.
// fasthttp reports no such event, and a request waiting for a cold model
// load writes nothing for minutes. So the watch waits for the client
// connection to become readable. A keep-alive client sends nothing while
// it waits for a response, so that happens when the client closes the
// connection (EOF or reset) or pipelines its next request.
//
// The watch implements context.Context itself, and aborts the one
// exchange attached to it directly, so that a request costs no context
// allocations. Watches are pooled: release hands one back once nothing
// uses it as a context any more.
//
// The watch peeks at the connection instead of reading it, so a request
// that the client pipelines behind this one stays whole.
// NOTE: where peeking is not supported (systems other than Unix), the
// watch reads one byte, and a pipelined request loses it. Ollama and
// OpenAI clients do not pipeline.
type clientWatch struct {
	parent context.Context
	// stopParent ends the propagation of the parent's cancellation.
	stopParent func() bool
	conn       net.Conn

	// armedAt, armedUse and the links below belong to the watch clock,
	// which starts the read after watchDelay. queued is set while the
	// watch waits in the clock's queue.
	armedAt      time.Time
	armedUse     uint64
	queued       bool
	qprev, qnext *clientWatch

	// mu guards the fields below and orders starting the read against
	// stopping the watch.
	mu sync.Mutex
	// armed is set while the watch may start its read; a clock tick after
	// stop finds it clear.
	armed   bool
	started bool
	// readDone is closed when the read goroutine ends.
	readDone chan struct{}
	// done is the context's Done channel, made when first asked for.
	done chan struct{}
	err  error
	// ex is the exchange that a cancellation aborts.
	ex *exchange
	// deadline, when set, ends the context with DeadlineExceeded through
	// limitTimer.
	deadline   time.Time
	limitTimer *time.Timer
	// uses counts the uses of the pooled watch, so that a limit timer
	// that fires late cannot end a later use.
	uses uint64

	stopped atomic.Bool
	// pipelined is set when the client sent bytes during the response.
	pipelined atomic.Bool

	// list is the server's list of requests in flight that holds the
	// watch between track and finish; prev and next link it there.
	list       *watchList
	prev, next *clientWatch
}

// watchList links the watches of the requests in flight to nodes, so that
// a shutdown can end them with an error that their clients can read. It
// allocates nothing per request.
type watchList struct {
	mu   sync.Mutex
	head *clientWatch
}

// track adds w to the list until w finishes.
func (l *watchList) track(w *clientWatch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w.list, w.prev, w.next = l, nil, l.head
	if l.head != nil {
		l.head.prev = w
	}
	l.head = w
}

func (l *watchList) remove(w *clientWatch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.list != l {
		return
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	}
	w.list, w.prev, w.next = nil, nil, nil
}

// cancelAll ends the context of every listed watch with cause and returns
// how many it ended.
func (l *watchList) cancelAll(cause error) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for w := l.head; w != nil; w = w.next {
		w.cancel(cause)
		n++
	}
	return n
}

// errShuttingDown ends the requests still in flight when the proxy's
// shutdown_timeout is about to run out.
var errShuttingDown = errors.New("llmproxy is shutting down, retry the request")

// shutdownRetryAfter is the Retry-After, in seconds, of a 503 for
// errShuttingDown. It is short because another instance, or this one
// once restarted, can take the retry.
const shutdownRetryAfter = "1"

var watchPool = sync.Pool{New: func() any { return new(clientWatch) }}

// closedChan is the Done channel of a watch cancelled before anyone asked
// for its channel.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// watchClient returns a watch, which is also a context cancelled with
// errClientGone when the client goes away, watching conn from watchDelay
// on. Stop the watch before the server reads from conn again.
func watchClient(parent context.Context, conn net.Conn) (context.Context, *clientWatch) {
	w := watchPool.Get().(*clientWatch)
	w.parent, w.conn = parent, conn
	w.stopped.Store(false)
	w.pipelined.Store(false)
	if parent.Done() != nil {
		use := w.uses
		w.stopParent = context.AfterFunc(parent, func() { w.cancelUse(use, context.Cause(parent)) })
	}
	if conn == nil {
		w.stopped.Store(true)
		return w, w
	}
	w.mu.Lock()
	w.armed = true
	use := w.uses
	w.mu.Unlock()
	watches.add(w, use)
	return w, w
}

// startUse starts the read if the watch is still armed in the given use.
func (w *clientWatch) startUse(use uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.uses != use || !w.armed || w.started || w.stopped.Load() {
		return
	}
	w.started = true
	w.readDone = make(chan struct{})
	go w.run(w.conn, w.readDone)
}

func (w *clientWatch) run(conn net.Conn, done chan struct{}) {
	defer close(done)
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil && w.peek(conn, raw) {
			return
		}
	}
	var b [1]byte
	for {
		n, err := conn.Read(b[:])
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
			if w.clearDeadline(conn) {
				continue
			}
			return // stop has begun
		}
		w.cancel(errClientGone)
		return
	}
}

// clearDeadline removes a read deadline that the server's read timeout
// left on conn and reports whether it did. Once stop has begun, the
// deadline in the past that stop sets must stay, so it does nothing.
func (w *clientWatch) clearDeadline(conn net.Conn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped.Load() {
		return false
	}
	_ = conn.SetReadDeadline(time.Time{})
	return true
}

// errNoPeek is peekByte's error on systems where the watch reads a byte
// instead.
var errNoPeek = errors.New("peeking at a socket needs a Unix system")

// peek watches conn by looking at the next byte without reading it, so a
// request that the client sends before this response ends stays whole for
// the server. It returns false when peeking is not supported.
func (w *clientWatch) peek(conn net.Conn, raw syscall.RawConn) bool {
	for {
		var n int
		var peekErr error
		err := raw.Read(func(fd uintptr) bool {
			n, peekErr = peekByte(int(fd))
			return peekErr != errWouldBlock
		})
		switch {
		case err == nil && peekErr == nil && n > 0:
			w.pipelined.Store(true)
			return true
		case err == nil && peekErr == nil:
			// The end of the stream: the client closed its side.
			w.cancel(errClientGone)
			return true
		case err == nil && errors.Is(peekErr, errNoPeek):
			return false
		case w.stopped.Load():
			return true
		case err != nil && isTimeout(err):
			if w.clearDeadline(conn) {
				continue
			}
			return true // stop has begun
		}
		w.cancel(errClientGone)
		return true
	}
}

// limit ends the context with context.DeadlineExceeded after d, unless d
// is 0.
func (w *clientWatch) limit(d time.Duration) {
	if d <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deadline = time.Now().Add(d)
	use := w.uses
	w.limitTimer = time.AfterFunc(d, func() { w.cancelUse(use, context.DeadlineExceeded) })
}

// cancelUse cancels the watch only while it is still in the given use,
// for callbacks that may run after the watch went back to the pool.
func (w *clientWatch) cancelUse(use uint64, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.uses == use {
		w.cancelLocked(cause)
	}
}

// Deadline, Done, Err and Value make the watch a context.Context.

func (w *clientWatch) Deadline() (time.Time, bool) {
	w.mu.Lock()
	d := w.deadline
	w.mu.Unlock()
	if !d.IsZero() {
		return d, true
	}
	return w.parent.Deadline()
}

func (w *clientWatch) Done() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done == nil {
		if w.err != nil {
			w.done = closedChan
		} else {
			w.done = make(chan struct{})
		}
	}
	return w.done
}

// Err returns the cause of the cancellation, such as errClientGone, which
// is also what context.Cause returns for the watch.
func (w *clientWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Value returns nil: the watch carries no values, not even its parent's,
// so that context.Cause finds no cancelCtx above it and returns Err.
func (w *clientWatch) Value(any) any { return nil }

// cancel ends the context with cause, aborting the attached exchange.
func (w *clientWatch) cancel(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cancelLocked(cause)
}

func (w *clientWatch) cancelLocked(cause error) {
	if w.err != nil {
		return
	}
	w.err = cause
	if w.done != nil {
		close(w.done)
	}
	if w.ex != nil {
		w.ex.abort()
		w.ex = nil
	}
}

// attach makes a cancellation abort ex, and reports whether it could:
// a watch holds one exchange at a time. An exchange attached to a
// cancelled watch is aborted at once.
func (w *clientWatch) attach(ex *exchange) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ex != nil {
		return false
	}
	if w.err != nil {
		ex.abort()
		return true
	}
	w.ex = ex
	return true
}

// detach undoes attach, and reports false when a cancellation aborted ex
// first.
func (w *clientWatch) detach(ex *exchange) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ex != ex {
		return false
	}
	w.ex = nil
	return true
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
	w.armed = false
	w.mu.Unlock()
	if !first {
		return
	}
	watches.remove(w)
	if !started {
		return
	}
	_ = w.conn.SetReadDeadline(time.Unix(1, 0))
	<-w.readDone
	_ = w.conn.SetReadDeadline(time.Time{})
}

// finish stops the watch and ends its context.
func (w *clientWatch) finish() {
	if l := w.list; l != nil {
		l.remove(w)
	}
	w.stop()
	w.mu.Lock()
	if w.limitTimer != nil {
		w.limitTimer.Stop()
		w.limitTimer = nil
	}
	w.mu.Unlock()
	w.cancel(context.Canceled)
	if w.stopParent != nil {
		w.stopParent()
		w.stopParent = nil
	}
}

// release finishes the watch and puts it back in the pool. Call it only
// when no goroutine holds the watch as a context any more.
func (w *clientWatch) release() {
	w.finish()
	w.mu.Lock()
	w.parent, w.conn, w.ex, w.err, w.done, w.readDone = nil, nil, nil, nil, nil, nil
	w.started, w.armed, w.deadline = false, false, time.Time{}
	w.uses++
	w.mu.Unlock()
	watchPool.Put(w)
}

// gone reports whether the watch saw the client close its connection.
func (w *clientWatch) gone() bool {
	w.mu.Lock()
	started, done := w.started, w.readDone
	w.mu.Unlock()
	if !started {
		return false
	}
	select {
	case <-done:
		return !w.stopped.Load() && !w.pipelined.Load()
	default:
		return false
	}
}
