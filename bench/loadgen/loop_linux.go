//go:build linux

package loadgen

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/llmproxy/llmproxy/internal/rawconn"
)

// streamsPerLoop is the number of streams that share one event loop. On
// a 2-core machine one loop read 1,000 streams of 66 chunks per second
// with less CPU per chunk than two loops did, because each of its
// wake-ups found more sockets ready (bench/cmd/loadgen against three
// bench/cmd/stampsim nodes).
const streamsPerLoop = 1000

// readSpace is the maximum that one read(2) takes from a socket. The loop's
// buffer has room for a carried partial line in front of it.
const readSpace = 64 << 10

// socketEvents are the epoll events of every socket. They are
// edge-triggered, so a socket is registered once, and a read that
// returns less than requested has drained the socket.
const socketEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// runStreamLoops reads the workers' streams on one epoll event loop per
// streamsPerLoop workers, up to GOMAXPROCS loops, and returns when every
// loop has stopped and closed its sockets. Each loop owns the workers it
// was given, and one wake-up of a loop reads every socket that has data.
func runStreamLoops(ctx context.Context, g *streamGen, workers []*streamWorker) error {
	n := min((len(workers)+streamsPerLoop-1)/streamsPerLoop, runtime.GOMAXPROCS(0))
	loops := make([]*streamLoop, 0, n)
	for range n {
		l, err := newStreamLoop(g)
		if err != nil {
			for _, l := range loops {
				l.close()
			}
			return err
		}
		loops = append(loops, l)
	}
	for i, w := range workers {
		l := loops[i%n]
		c := &streamConn{w: w, index: int32(len(l.conns)), fd: -1, wakeAt: g.startTime(i, len(workers))}
		l.conns = append(l.conns, c)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, l := range loops {
			l.stop()
		}
	})
	defer stop()

	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(l.run)
	}
	wg.Wait()
	for _, l := range loops {
		if l.err != nil {
			return l.err
		}
	}
	return nil
}

// streamLoop is one epoll instance and the goroutine that serves its
// connections.
type streamLoop struct {
	g *streamGen
	// set is the loop's epoll set, in which it waits through Go's poller.
	// A read deadline on set.File wakes it for the next timer.
	set    *rawconn.EpollSet
	events []unix.EpollEvent
	// stopping is set when the phase's context ends.
	stopping atomic.Bool
	// mu guards the eventfd against stop writing it after close.
	mu     sync.Mutex
	closed bool

	// The fields below belong to the loop's goroutine.
	conns []*streamConn
	buf   []byte
	now   time.Time
	// nextWake is the earliest wakeAt of the waiting and connecting
	// connections, or the window's end.
	nextWake time.Time
	deadline time.Time // set on file
	done     bool
	err      error
}

func newStreamLoop(g *streamGen) (*streamLoop, error) {
	set, err := rawconn.NewEpollSet("loadgen-epoll")
	if err != nil {
		return nil, err
	}
	return &streamLoop{
		g: g, set: set,
		events: make([]unix.EpollEvent, 256),
		buf:    make([]byte, maxLineBytes+readSpace),
	}, nil
}

// stop makes the loop end its streams and return. It may be called from
// any goroutine, and after close.
func (l *streamLoop) stop() {
	l.stopping.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.set.Wake()
}

// close closes every descriptor of the loop.
func (l *streamLoop) close() {
	for _, c := range l.conns {
		l.closeConn(c)
	}
	l.mu.Lock()
	l.closed = true
	l.set.Close()
	l.mu.Unlock()
}

// run serves the loop's connections until the window ends or the phase's
// context ends.
func (l *streamLoop) run() {
	defer l.close()
	l.now = time.Now()
	l.tick()
	for !l.done {
		err := l.set.Raw.Read(l.poll)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.err = fmt.Errorf("wait for epoll events: %w", err)
			return
		}
		l.now = time.Now()
		l.tick()
	}
}

// poll handles every event ready in the epoll set, then the timers that
// are due. It returns true to end the wait in Go's poller once the loop
// is done, and false to wait for more events.
func (l *streamLoop) poll(uintptr) bool {
	for {
		n, err := rawconn.EpollWait(l.set.Fd, l.events)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.err = fmt.Errorf("epoll_wait: %w", err)
			l.done = true
			return true
		}
		for i := range n {
			l.handle(l.events[i])
		}
		if n < len(l.events) {
			break
		}
	}
	l.now = time.Now()
	l.tick()
	return l.done
}

// tick ends the loop at the window's end, starts the streams that are due
// and sets the deadline of the next wait.
func (l *streamLoop) tick() {
	if !l.now.Before(l.g.windowEnd) || l.stopping.Load() {
		l.done = true
		return
	}
	if !l.now.Before(l.nextWake) {
		l.fireTimers()
	}
	l.arm()
}

// live reports whether samples and errors still count: the window has
// not ended and the phase's context has not ended.
func (l *streamLoop) live() bool {
	return l.now.Before(l.g.windowEnd) && !l.stopping.Load()
}

// fireTimers starts the streams of waiting connections that are due and
// fails the connects that timed out, then finds the next wakeAt.
func (l *streamLoop) fireTimers() {
	for _, c := range l.conns {
		if c.wakeAt.After(l.now) {
			continue
		}
		switch c.state {
		case connWaiting:
			l.startStream(c)
		case connConnecting:
			l.lost(c, fmt.Errorf("connect to %s: timed out after %v", c.w.target.addr, connectTimeout))
		}
	}
	l.nextWake = l.g.windowEnd
	for _, c := range l.conns {
		if c.state == connWaiting || c.state == connConnecting {
			l.schedule(c.wakeAt)
		}
	}
}

// schedule makes the loop wake by t.
func (l *streamLoop) schedule(t time.Time) {
	if t.Before(l.nextWake) {
		l.nextWake = t
	}
}

// arm sets the read deadline that wakes the loop for its next timer. A
// deadline that has passed must be set again, or every wait fails at
// once.
func (l *streamLoop) arm() {
	if l.nextWake.Equal(l.deadline) && l.deadline.After(l.now) {
		return
	}
	l.deadline = l.nextWake
	_ = l.set.File.SetReadDeadline(l.deadline)
}

func (l *streamLoop) handle(ev unix.EpollEvent) {
	if int(ev.Fd) == l.set.EventFd {
		l.set.Drain()
		return
	}
	c := l.conns[ev.Pad]
	if c.fd != int(ev.Fd) {
		return
	}
	switch c.state {
	case connConnecting:
		l.connected(c, ev.Events)
	case connWriting:
		l.writeRequest(c)
		if c.state == connHead {
			// The edge of data that came while writing is gone.
			l.readable(c, ev.Events)
		}
	case connHead, connBody:
		l.readable(c, ev.Events)
	}
}
