package proxy

import (
	"sync"
	"time"
)

// watchTick is how often the watch clock looks for watches to start. A
// watch starts between watchDelay and watchDelay+watchTick after its
// request began, and sooner past watchDelay when other requests begin in
// the meantime, since each one starts the watches that are due. A longer
// tick costs less CPU, but a client that half-closes its side after a
// lone request must be noticed before a fast node's first byte.
const watchTick = 20 * time.Millisecond

// dueAtAdd bounds the due watches that one add starts.
const dueAtAdd = 4

// watchClockRest is how long the clock keeps ticking with no watch
// waiting before it stops. It starts again with the next watch.
const watchClockRest = time.Second

// watchClock starts the reads of the watches whose requests have run for
// watchDelay. One clock serves every watch, so a request sets no runtime
// timer of its own. On a proxy that is idle between requests, such a
// timer woke a sleeping runtime thread to re-arm its wait. strace at
// 1,000 requests/s counted 0.42 futex calls per request with such timers
// and 0.34 with this clock.
//
// The clock's ticks are the fallback: on a busy proxy, each new request
// starts the watches that are due, without waiting for a tick. The
// waiting watches form a queue in the order they were added, which is the
// order of their start times.
type watchClock struct {
	mu         sync.Mutex
	head, tail *clientWatch
	running    bool
	// due is the clock goroutine's list of watches to start, kept between
	// ticks.
	due []dueWatch
}

// dueWatch is a watch taken from the queue to start, in the use it was
// added for.
type dueWatch struct {
	w   *clientWatch
	use uint64
}

var watches watchClock

// add queues w, in its current use, to start after watchDelay, and starts
// up to dueAtAdd watches that are due.
func (c *watchClock) add(w *clientWatch, use uint64) {
	now := time.Now()
	var due [dueAtAdd]dueWatch
	c.mu.Lock()
	n := 0
	for h := c.head; h != nil && n < len(due) && now.Sub(h.armedAt) >= watchDelay; h = c.head {
		due[n] = dueWatch{w: h, use: h.armedUse}
		c.unlinkLocked(h)
		n++
	}
	w.armedAt, w.armedUse, w.queued = now, use, true
	w.qprev, w.qnext = c.tail, nil
	if c.tail != nil {
		c.tail.qnext = w
	} else {
		c.head = w
	}
	c.tail = w
	start := !c.running
	c.running = true
	c.mu.Unlock()
	for _, d := range due[:n] {
		d.w.startUse(d.use)
	}
	if start {
		go c.run()
	}
}

// remove takes w out of the queue if it is still there.
func (c *watchClock) remove(w *clientWatch) {
	c.mu.Lock()
	c.unlinkLocked(w)
	c.mu.Unlock()
}

func (c *watchClock) unlinkLocked(w *clientWatch) {
	if !w.queued {
		return
	}
	if w.qprev != nil {
		w.qprev.qnext = w.qnext
	} else {
		c.head = w.qnext
	}
	if w.qnext != nil {
		w.qnext.qprev = w.qprev
	} else {
		c.tail = w.qprev
	}
	w.qprev, w.qnext, w.queued = nil, nil, false
}

// run ticks until the queue has been empty for watchClockRest.
func (c *watchClock) run() {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	var empty time.Duration
	for now := range t.C {
		due, stop := c.takeDue(now, empty >= watchClockRest)
		if stop {
			return
		}
		for i, d := range due {
			d.w.startUse(d.use)
			due[i] = dueWatch{}
		}
		c.due = due[:0]
		if c.waiting() {
			empty = 0
		} else {
			empty += watchTick
		}
	}
}

// takeDue removes from the queue the watches added watchDelay or longer
// before now. When rest is set and nothing waits, it marks the clock
// stopped and reports true instead.
func (c *watchClock) takeDue(now time.Time, rest bool) ([]dueWatch, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rest && c.head == nil {
		c.running = false
		return nil, true
	}
	due := c.due[:0]
	for w := c.head; w != nil && now.Sub(w.armedAt) >= watchDelay; w = c.head {
		due = append(due, dueWatch{w: w, use: w.armedUse})
		c.unlinkLocked(w)
	}
	return due, false
}

// waiting reports whether any watch is queued.
func (c *watchClock) waiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head != nil
}
