//go:build linux

package streamloop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/llmproxy/llmproxy/internal/rawconn"
)

// scanInterval is how often a loop checks its streams for the idle
// timeout, so a timeout fires up to this much late.
const scanInterval = 100 * time.Millisecond

// maxKeptHeld is the largest buffer of held bytes that a stream keeps
// for its next part of a unit. A larger one, grown for a long line, is
// dropped once the line has gone.
const maxKeptHeld = 64 << 10

// readBufferSize is the most a loop reads from a node at once. A stream
// line of Ollama is a few hundred bytes.
const readBufferSize = 32 << 10

// frameHeadroom is the room kept in front of the payload for the chunk
// size line: up to 16 hex digits and CRLF.
const frameHeadroom = 18

var (
	loopsOnce sync.Once
	loops     []*loop
	loopsErr  error
	nextLoop  atomic.Uint32
)

// Available reports whether Start can be used: the loops start on first
// use, one per GOMAXPROCS up to 8.
// NOTE: the loops run for the life of the process and have no Stop. An
// idle loop holds only its epoll and eventfd descriptors and waits in Go's
// poller without a thread.
func Available() bool {
	loopsOnce.Do(startLoops)
	return loopsErr == nil
}

func startLoops() {
	n := min(runtime.GOMAXPROCS(0), 8)
	for range n {
		l, err := newLoop()
		if err != nil {
			loopsErr = err
			for _, l := range loops {
				l.set.Close()
			}
			loops = nil
			return
		}
		loops = append(loops, l)
		go l.run()
	}
}

// Start hands s to a loop. The caller must keep both sockets open and
// must not use them until Wait returns.
func Start(s Stream) (*Handle, error) {
	if !Available() {
		return nil, loopsErr
	}
	l := loops[int(nextLoop.Add(1))%len(loops)]
	h := &Handle{
		l: l, s: s, dec: NewDecoder(s.Framing, s.Length), done: make(chan Result, 1),
		reusable: s.Framing != UntilClose,
	}
	l.mu.Lock()
	l.incoming = append(l.incoming, h)
	l.mu.Unlock()
	l.wake()
	return h, nil
}

// Cancel ends the stream with ErrCancelled unless it ended already. It
// does not wait.
func (h *Handle) Cancel() {
	if h.cancelled.Swap(true) {
		return
	}
	l := h.l
	l.mu.Lock()
	l.cancels = append(l.cancels, h)
	l.mu.Unlock()
	l.wake()
}

// Wait blocks until the stream ends and returns how it ended.
func (h *Handle) Wait() Result { return <-h.done }

// loop is one epoll instance and the goroutine that serves its streams.
type loop struct {
	// set is the loop's epoll set, in which it waits through Go's poller
	// instead of blocking a thread in epoll_wait.
	set    *rawconn.EpollSet
	armed  bool // a read deadline on file is set for the next scan
	events []unix.EpollEvent
	// woken is set while a wake-up is pending, so that a burst of Start
	// and Cancel calls writes the eventfd once.
	woken atomic.Bool

	mu       sync.Mutex
	incoming []*Handle
	cancels  []*Handle

	// The fields below belong to the loop's goroutine.
	byFd     map[int32]*Handle
	live     int
	fullRead bool // a read in this pass filled readBuf
	lastScan time.Time
	now      time.Time
	readBuf  []byte
	frameBuf []byte
	batch    []*Handle // swapped with incoming or cancels under mu
}

func newLoop() (*loop, error) {
	set, err := rawconn.NewEpollSet("streamloop")
	if err != nil {
		return nil, err
	}
	return &loop{
		set:      set,
		events:   make([]unix.EpollEvent, 256),
		byFd:     map[int32]*Handle{},
		readBuf:  make([]byte, readBufferSize),
		frameBuf: make([]byte, 0, frameHeadroom+readBufferSize+2),
	}, nil
}

func (l *loop) ctl(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := rawconn.EpollCtl(l.set.Fd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl on fd %d: %w", fd, err)
	}
	return nil
}

func (l *loop) wake() {
	if l.woken.Swap(true) {
		return
	}
	l.set.Wake()
}

// run waits in Go's poller until the loop's epoll set has events. The
// read deadline on the epoll descriptor wakes it for the idle scan.
func (l *loop) run() {
	for {
		err := l.set.Raw.Read(l.poll)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Only a closed epoll descriptor fails here, which is a bug.
			panic(fmt.Sprintf("streamloop: wait for events: %v", err))
		}
		l.now = time.Now()
		l.armed = false
		if l.live == 0 {
			// A deadline in the past would fail every wait at once.
			_ = l.set.File.SetReadDeadline(time.Time{})
			continue
		}
		l.scan()
		l.arm()
	}
}

// arm sets the read deadline that wakes the loop for its next scan.
func (l *loop) arm() {
	if l.armed {
		return
	}
	l.armed = true
	_ = l.set.File.SetReadDeadline(l.lastScan.Add(scanInterval))
}

// poll handles the events ready in the epoll set and returns false, so
// that the caller waits for more. The epoll set is level-triggered, and
// Go's poller is woken by every new event, so a pass that read less than
// a full buffer from every socket has left nothing behind.
func (l *loop) poll(uintptr) bool {
	for {
		n, err := rawconn.EpollWait(l.set.Fd, l.events)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			panic(fmt.Sprintf("streamloop: epoll_wait: %v", err))
		}
		if n == 0 {
			break
		}
		l.now = time.Now()
		l.fullRead = false
		for i := 0; i < n; i++ {
			l.handle(l.events[i])
		}
		if n < len(l.events) && !l.fullRead {
			break
		}
	}
	if l.live > 0 {
		if l.now.Sub(l.lastScan) >= scanInterval {
			l.scan()
		}
		l.arm()
	}
	return false
}

func (l *loop) handle(ev unix.EpollEvent) {
	if int(ev.Fd) == l.set.EventFd {
		l.takeRequests()
		return
	}
	h := l.byFd[ev.Fd]
	if h == nil {
		return
	}
	if int(ev.Fd) == h.s.Dst {
		l.clientEvent(h, ev.Events)
		return
	}
	l.nodeEvent(h)
}

// takeRequests starts the streams handed over and ends the cancelled
// ones.
func (l *loop) takeRequests() {
	l.set.Drain()
	l.woken.Store(false)

	l.mu.Lock()
	l.batch, l.incoming = l.incoming, l.batch[:0]
	l.mu.Unlock()
	for i, h := range l.batch {
		l.add(h)
		l.batch[i] = nil
	}

	l.mu.Lock()
	l.batch, l.cancels = l.cancels, l.batch[:0]
	l.mu.Unlock()
	for i, h := range l.batch {
		l.finish(h, ErrCancelled)
		l.batch[i] = nil
	}
	l.batch = l.batch[:0]
}

func (l *loop) add(h *Handle) {
	if h.finished {
		// A Cancel taken in an earlier batch than its Start ended it.
		return
	}
	h.last = l.now
	h.registered = true
	if err := l.ctl(unix.EPOLL_CTL_ADD, h.s.Dst, unix.EPOLLRDHUP); err != nil {
		h.registered = false
		l.finish(h, err)
		return
	}
	l.byFd[int32(h.s.Dst)] = h
	if err := l.ctl(unix.EPOLL_CTL_ADD, h.s.Src, unix.EPOLLIN|unix.EPOLLRDHUP); err != nil {
		l.finish(h, err)
		return
	}
	l.byFd[int32(h.s.Src)] = h
	l.live++
	if h.cancelled.Load() {
		l.finish(h, ErrCancelled)
		return
	}
	if len(h.s.Buffered) > 0 {
		l.relay(h, h.s.Buffered, false)
		h.s.Buffered = nil
	} else if h.dec.Done() {
		l.finish(h, nil)
	}
}

// nodeEvent reads what the node sent, once: a level-triggered epoll
// reports the socket again while data remains.
func (l *loop) nodeEvent(h *Handle) {
	if h.ended || len(h.unsent) > 0 {
		return
	}
	n, err := rawconn.Read(h.s.Src, l.readBuf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		l.finish(h, &NodeError{Err: err})
		return
	case n == 0:
		if h.s.Framing == UntilClose {
			l.relay(h, nil, true)
			return
		}
		l.finish(h, &NodeError{Err: ErrNodeClosed})
		return
	}
	h.last = l.now
	if n == len(l.readBuf) {
		l.fullRead = true
	}
	l.relay(h, l.readBuf[:n], false)
}

// relay decodes in and sends its payload to the client as one chunk.
// closed is set when the node closed a body framed by the connection's
// end, after in. Until the body ends, the payload after the last whole
// unit waits in h.held for the rest of the unit.
func (l *loop) relay(h *Handle, in []byte, closed bool) {
	// The held bytes go in front of the new payload. A read that ends
	// where a unit ends, as Ollama writes one line per chunk, leaves
	// nothing held, so nothing is copied here.
	frame := append(l.frameBuf[:frameHeadroom], h.held...)
	h.held = h.held[:0]
	if cap(h.held) > maxKeptHeld {
		h.held = nil
	}
	frame, extra, err := h.dec.Decode(in, frame)
	end := err == nil && (closed || h.dec.Done())
	if !end {
		frame = holdBack(h, frame)
	}
	payload := frame[frameHeadroom:]
	if extra > 0 {
		h.reusable = false
	}
	if len(payload) > 0 {
		if err := callData(h, payload); err != nil {
			l.finish(h, err)
			return
		}
		start := putChunkSize(frame[:frameHeadroom], len(payload))
		frame = append(frame, '\r', '\n')
		l.frameBuf = frame[:0]
		if !l.send(h, frame[start:]) {
			return
		}
	}
	switch {
	case err != nil:
		l.finish(h, &NodeError{Err: err})
	case end:
		h.ended = true
		if len(h.unsent) == 0 {
			l.finish(h, nil)
		}
	}
}

// holdBack moves the payload after the last whole unit from frame to
// h.held and returns the frame without it. A part of a unit of MaxHeld
// bytes or more stays in the frame.
func holdBack(h *Handle, frame []byte) []byte {
	payload := frame[frameHeadroom:]
	whole := h.s.Whole.WholeLen(payload)
	if rest := len(payload) - whole; rest > 0 && rest < h.s.MaxHeld {
		h.held = append(h.held, payload[whole:]...)
		return frame[:frameHeadroom+whole]
	}
	return frame
}

// callData passes payload to the stream's Data function. A panic there
// ends only that stream, with an error, because the loop serves many.
func callData(h *Handle, payload []byte) (err error) {
	if h.s.Data == nil {
		return nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrDataPanic, p)
		}
	}()
	h.s.Data(payload)
	return nil
}

// putChunkSize writes the chunk size line right-aligned in head and
// returns where it starts.
func putChunkSize(head []byte, n int) int {
	const hexDigits = "0123456789abcdef"
	i := len(head)
	i--
	head[i] = '\n'
	i--
	head[i] = '\r'
	for {
		i--
		head[i] = hexDigits[n&0xf]
		n >>= 4
		if n == 0 {
			return i
		}
	}
}

// send writes b to the client and keeps what the socket did not take,
// pausing the node's socket until the client catches up. It reports false
// when the stream ended.
func (l *loop) send(h *Handle, b []byte) bool {
	n, err := writeAll(h.s.Dst, b)
	if err != nil {
		l.finish(h, ErrClientGone)
		return false
	}
	if n == len(b) {
		return true
	}
	h.unsent = append(h.unsent[:0], b[n:]...)
	h.stalledSince = l.now
	h.queued = rawconn.QueuedBytes(h.s.Dst)
	if err := l.ctl(unix.EPOLL_CTL_MOD, h.s.Src, 0); err != nil {
		l.finish(h, err)
		return false
	}
	if err := l.ctl(unix.EPOLL_CTL_MOD, h.s.Dst, unix.EPOLLOUT|unix.EPOLLRDHUP); err != nil {
		l.finish(h, err)
		return false
	}
	return true
}

// writeAll writes b until the socket would block and returns how much it
// took. A nil error with a short count means the socket is full.
func writeAll(fd int, b []byte) (int, error) {
	total := 0
	for total < len(b) {
		n, err := rawconn.Write(fd, b[total:])
		if n > 0 {
			total += n
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return total, nil
		case err != nil:
			return total, err
		case n == 0:
			return total, nil
		}
	}
	return total, nil
}

func (l *loop) clientEvent(h *Handle, events uint32) {
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.finish(h, ErrClientGone)
		return
	}
	if events&unix.EPOLLOUT == 0 || len(h.unsent) == 0 {
		return
	}
	n, err := writeAll(h.s.Dst, h.unsent)
	if err != nil {
		l.finish(h, ErrClientGone)
		return
	}
	h.unsent = h.unsent[:copy(h.unsent, h.unsent[n:])]
	if n > 0 {
		h.stalledSince = l.now
		h.queued = rawconn.QueuedBytes(h.s.Dst)
	}
	if len(h.unsent) > 0 {
		return
	}
	if h.ended {
		l.finish(h, nil)
		return
	}
	h.last = l.now
	if err := l.ctl(unix.EPOLL_CTL_MOD, h.s.Dst, unix.EPOLLRDHUP); err != nil {
		l.finish(h, err)
		return
	}
	if err := l.ctl(unix.EPOLL_CTL_MOD, h.s.Src, unix.EPOLLIN|unix.EPOLLRDHUP); err != nil {
		l.finish(h, err)
	}
}

// scan ends the streams whose node or client has been silent for longer
// than the stream's idle timeout.
func (l *loop) scan() {
	l.lastScan = l.now
	for fd, h := range l.byFd {
		if int(fd) != h.s.Src || h.s.Idle <= 0 {
			continue
		}
		if len(h.unsent) == 0 {
			if l.now.Sub(h.last) > h.s.Idle {
				l.finish(h, ErrIdle)
			}
			continue
		}
		// Linux reports the socket writable only once a third of its send
		// buffer is free, which a slow client that keeps reading can take
		// longer than the idle timeout to free. Its queue shrinks, though.
		if q := rawconn.QueuedBytes(h.s.Dst); q >= 0 && q < h.queued {
			h.stalledSince = l.now
			h.queued = q
		}
		if l.now.Sub(h.stalledSince) > h.s.Idle {
			l.finish(h, ErrClientStalled)
		}
	}
}

// finish ends the stream once: it removes both sockets from the epoll
// set and hands the result to Wait.
func (l *loop) finish(h *Handle, err error) {
	if h.finished {
		return
	}
	h.finished = true
	if h.registered {
		if l.byFd[int32(h.s.Src)] == h {
			delete(l.byFd, int32(h.s.Src))
			_ = rawconn.EpollCtl(l.set.Fd, unix.EPOLL_CTL_DEL, h.s.Src, nil)
			l.live--
		}
		if l.byFd[int32(h.s.Dst)] == h {
			delete(l.byFd, int32(h.s.Dst))
		}
		_ = rawconn.EpollCtl(l.set.Fd, unix.EPOLL_CTL_DEL, h.s.Dst, nil)
	}
	res := Result{Err: err, Reusable: err == nil && h.reusable}
	if err != nil && !errors.Is(err, ErrClientGone) && len(h.unsent) > 0 {
		res.Unsent = h.unsent
	}
	h.unsent = nil
	h.done <- res
}

// Fd returns c's socket. It stays valid while c is open.
func Fd(c syscall.Conn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(s uintptr) { fd = int(s) }); err != nil {
		return -1, err
	}
	return fd, nil
}
