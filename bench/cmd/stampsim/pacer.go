package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// wakeInterval is the shortest time between two wakes of the pacer. A
// wake costs a context switch and a pass of Go's scheduler, so each wake
// writes every chunk that falls due within one interval from then. A chunk
// may thus go out up to this much before its due time; its stamp is the
// time of the write.
const wakeInterval = time.Millisecond

// pacer writes the chunks of every lean stream from one goroutine, in the
// order they are due.
type pacer struct {
	srv     *server
	stopped chan struct{} // closed when run returns

	mu       sync.Mutex // guards incoming and wakeAt
	incoming []*stream
	wakeAt   time.Time     // when the sleeping pacer wakes; zero while it runs
	wake     chan struct{} // wakes the pacer for a stream due before wakeAt; buffered

	// Owned by the run goroutine.
	queue dueQueue
	out   []byte // the bytes of one write
	frame []byte // one frame, before chunk framing
}

func newPacer(srv *server) *pacer {
	return &pacer{
		srv:     srv,
		stopped: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		out:     make([]byte, 0, 4096),
		frame:   make([]byte, 0, 1024),
	}
}

// add hands a started stream to the pacer. It wakes the pacer only when
// the stream is due before the pacer's next wake.
func (p *pacer) add(st *stream) {
	p.mu.Lock()
	p.incoming = append(p.incoming, st)
	early := !p.wakeAt.IsZero() && st.due.Before(p.wakeAt)
	p.mu.Unlock()
	if early {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// idle is the wake time of a pacer without streams: it sleeps until add
// wakes it.
var idle = time.Unix(1<<62, 0)

// run writes due chunks until done closes.
func (p *pacer) run(done <-chan struct{}) {
	defer close(p.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		woke := time.Now()
		p.takeIncoming()
		p.writeDue(woke)

		wakeAt, ok := p.planWake(woke)
		if !ok {
			continue
		}
		if wakeAt == idle {
			select {
			case <-p.wake:
			case <-done:
				return
			}
			continue
		}
		timer.Reset(time.Until(wakeAt))
		select {
		case <-timer.C:
		case <-p.wake:
		case <-done:
			timer.Stop()
			return
		}
	}
}

func (p *pacer) takeIncoming() {
	p.mu.Lock()
	incoming := p.incoming
	p.incoming = nil
	p.wakeAt = time.Time{}
	p.mu.Unlock()
	for _, st := range incoming {
		p.queue.push(st)
	}
}

// planWake returns when the pacer, which woke at woke, wakes next: when
// the first stream is due, but no sooner than wakeInterval after woke. It
// returns false when streams arrived meanwhile, which must be queued
// first.
func (p *pacer) planWake(woke time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.incoming) > 0 {
		return time.Time{}, false
	}
	p.wakeAt = idle
	if p.queue.len() > 0 {
		p.wakeAt = p.queue.front().due
		if earliest := woke.Add(wakeInterval); p.wakeAt.Before(earliest) {
			p.wakeAt = earliest
		}
	}
	return p.wakeAt, true
}

// writeDue writes the next chunk of every stream that is due by the end
// of this wake, woke plus wakeInterval.
func (p *pacer) writeDue(woke time.Time) {
	horizon := woke.Add(wakeInterval)
	for p.queue.len() > 0 && p.queue.front().due.Before(horizon) {
		p.writeNext(p.queue.pop())
	}
}

// writeNext writes the next chunk of st, and the end of its response
// after the last token, with one write. Unless st has ended, it requeues
// st one token time after the chunk's due time, so that a stream keeps
// its token rate, but no sooner than half a token time after now.
func (p *pacer) writeNext(st *stream) {
	if st.conn.cancelled.Load() {
		p.end(st, errClientGone)
		return
	}
	now := time.Now()
	out, frame, ended := st.appendResponse(p.out[:0], p.frame, now)
	p.out, p.frame = out, frame
	if err := st.conn.sock.Write(out); err != nil {
		p.end(st, err)
		return
	}
	if ended {
		p.end(st, nil)
		return
	}
	st.due = st.due.Add(st.interval)
	if earliest := now.Add(st.interval / 2); st.due.Before(earliest) {
		st.due = earliest
	}
	p.queue.push(st)
}

// errClientGone ends a stream whose client closed its connection.
var errClientGone = errors.New("client closed the connection")

// end finishes st: it signals the connection's goroutine, frees the slot
// and starts the stream that waited for it, if any. A stream that failed closes its
// connection, because the client is gone or its response is cut.
func (p *pacer) end(st *stream, err error) {
	if err != nil {
		st.conn.nc.Close()
	}
	st.conn.ended <- err
	if err != nil {
		p.noteFailed(st, err)
	} else if log := p.srv.log; log.Enabled(context.Background(), slog.LevelDebug) {
		log.Debug("request served",
			"method", http.MethodPost,
			"route", st.route,
			"remote_addr", st.conn.nc.RemoteAddr(),
			"duration", time.Since(st.received))
	}
	if next := p.srv.slots.release(st.modelKey); next != nil {
		next.start(time.Now(), p.srv.interval)
		p.queue.push(next)
	}
}

// noteFailed counts and logs a stream that ended early.
func (p *pacer) noteFailed(st *stream, err error) {
	log := p.srv.log
	stats := p.srv.stats
	stats.cancelled.Add(1)
	if errors.Is(err, errStalled) {
		// Only a client that stopped reading long enough to fill its
		// socket buffers stalls, so each is worth a line.
		log.Warn("stream dropped: the client is not reading",
			"remote_addr", st.conn.nc.RemoteAddr(), "dropped_total", stats.stalled.Add(1))
		return
	}
	if errors.Is(err, errClientGone) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) {
		log.Debug("stream cancelled: the client closed the connection",
			"remote_addr", st.conn.nc.RemoteAddr())
		return
	}
	log.Warn("stream write failed", "remote_addr", st.conn.nc.RemoteAddr(), "error", err)
}

// dueQueue is a binary min-heap of streams by due time. Most streams are
// pushed in due order, because they share one token time, but the first
// chunk of a stream also waits for its prompt evaluation, which differs
// in length.
type dueQueue struct {
	items []*stream
}

func (q *dueQueue) len() int { return len(q.items) }

func (q *dueQueue) front() *stream { return q.items[0] }

func (q *dueQueue) push(st *stream) {
	q.items = append(q.items, st)
	i := len(q.items) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !st.due.Before(q.items[parent].due) {
			break
		}
		q.items[i] = q.items[parent]
		i = parent
	}
	q.items[i] = st
}

func (q *dueQueue) pop() *stream {
	top := q.items[0]
	last := len(q.items) - 1
	moved := q.items[last]
	q.items[last] = nil
	q.items = q.items[:last]
	if last > 0 {
		q.siftDown(moved)
	}
	return top
}

// siftDown places st, which replaces the root, where it belongs.
func (q *dueQueue) siftDown(st *stream) {
	n := len(q.items)
	i := 0
	for {
		child := 2*i + 1
		if child >= n {
			break
		}
		if right := child + 1; right < n && q.items[right].due.Before(q.items[child].due) {
			child = right
		}
		if !q.items[child].due.Before(st.due) {
			break
		}
		q.items[i] = q.items[child]
		i = child
	}
	q.items[i] = st
}
