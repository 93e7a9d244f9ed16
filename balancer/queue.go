package balancer

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/llmproxy/llmproxy/config"
)

var (
	// ErrQueueFull means the request's class already has queue.max_length
	// requests waiting.
	ErrQueueFull = errors.New("queue full")
	// ErrQueueTimeout means the request waited its class's max_wait
	// without a slot freeing on a node that can serve it.
	ErrQueueTimeout = errors.New("queue wait timed out")
)

// waiter is one request waiting for a slot.
type waiter struct {
	req     Request
	rank    int    // class rank: 0 for priority, rising towards batch
	tag     uint64 // start-time fair-queuing tag within the class
	arrived time.Time
	// maxWait is the class's max_wait when the request was queued.
	maxWait time.Duration
	// ready receives the node the request was placed on, or nil when the
	// request failed with err.
	ready chan *Node
	err   error
	// placed is set under the balancer's mu when a node was sent on ready.
	placed bool
	// cold is set with placed when the node had to load the model.
	cold bool
}

// WaitingRequest is one request waiting for a slot, as listed by
// GET /admin/queue.
type WaitingRequest struct {
	Model   string        `json:"model"`
	Class   string        `json:"class"`
	Client  string        `json:"client"`
	Waiting time.Duration `json:"waiting_ns"`
}

// level returns the waiter's effective class rank after aging. Each
// queue.aging of waiting raises it one class, so batch requests are not
// starved.
func (w *waiter) level(now time.Time, aging time.Duration) int {
	lvl := w.rank
	if aging > 0 {
		lvl -= int(now.Sub(w.arrived) / aging)
	}
	return max(lvl, 0)
}

// before reports whether w comes before o. The higher effective class
// comes first. Within one class the lower fair-queuing tag comes first,
// which interleaves clients. Between classes that aged to the same level,
// the request that waited longer comes first.
func (w *waiter) before(o *waiter, now time.Time, aging time.Duration) bool {
	lw, lo := w.level(now, aging), o.level(now, aging)
	if lw != lo {
		return lw < lo
	}
	if w.req.Class == o.req.Class {
		return w.tag < o.tag
	}
	return w.arrived.Before(o.arrived)
}

// enqueueLocked adds w to the queue with a start-time fair-queuing tag, or
// returns ErrQueueFull when its class already has max_length requests
// waiting. A client's request is tagged after that client's previous one
// and after the class's virtual time, so that a client arriving late is
// served next rather than after a long burst of another client.
func (b *Balancer) enqueueLocked(w *waiter) error {
	limit := b.settings.classLimit(w.req.Class)
	if limit.MaxLength > 0 && b.depth[w.req.Class] >= limit.MaxLength {
		return ErrQueueFull
	}
	w.maxWait = limit.MaxWait
	clients := b.lastTag[w.req.Class]
	if clients == nil {
		clients = map[string]uint64{}
		b.lastTag[w.req.Class] = clients
	}
	w.tag = max(b.vclock[w.req.Class], clients[w.req.Client]) + 1
	clients[w.req.Client] = w.tag
	b.waiting = append(b.waiting, w)
	b.depth[w.req.Class]++
	b.observeDepth(w.req.Class)
	return nil
}

func (b *Balancer) removeLocked(w *waiter) {
	for i, x := range b.waiting {
		if x == w {
			b.waiting = append(b.waiting[:i], b.waiting[i+1:]...)
			b.depth[w.req.Class]--
			b.observeDepth(w.req.Class)
			break
		}
	}
	if b.vclock[w.req.Class] < w.tag {
		b.vclock[w.req.Class] = w.tag
	}
	b.forgetIdleClientsLocked(w.req.Class)
}

// forgetIdleClientsLocked drops the tags that are not after the class's
// virtual time. The next request of such a client is tagged after the
// virtual time anyway, so dropping them changes no tag. It runs only once
// the class has 1024 clients or more.
func (b *Balancer) forgetIdleClientsLocked(class string) {
	clients := b.lastTag[class]
	if len(clients) < 1024 {
		return
	}
	v := b.vclock[class]
	for c, tag := range clients {
		if tag <= v {
			delete(clients, c)
		}
	}
}

// dispatchLocked places waiting requests on free slots, best-ranked
// first. A waiter whose best node is busy stays queued, so that it waits
// for the node that has its model loaded instead of loading it elsewhere.
// A waiter that has waited longer than that load would take goes to a free
// node.
func (b *Balancer) dispatchLocked() {
	if len(b.waiting) == 0 {
		return
	}
	now := b.now()
	aging := b.settings.Aging
	sort.SliceStable(b.waiting, func(i, j int) bool {
		return b.waiting[i].before(b.waiting[j], now, aging)
	})
	for i := 0; i < len(b.waiting); {
		w := b.waiting[i]
		n := b.placeLocked(w.req, now.Sub(w.arrived))
		if n == nil {
			i++
			continue
		}
		w.cold = b.takeSlotLocked(n, w.req)
		w.placed = true
		b.removeLocked(w)
		b.observeWait(w.req.Class, now.Sub(w.arrived))
		w.ready <- n
	}
}

// failUnservableLocked fails the waiting requests whose model no node
// lists any more, such as after a reload removed the only node with it,
// with ErrModelNotFound. They would otherwise wait out max_wait.
func (b *Balancer) failUnservableLocked() {
	now := b.now()
	for i := 0; i < len(b.waiting); {
		w := b.waiting[i]
		if err := b.checkCandidates(w.req); !errors.Is(err, ErrModelNotFound) {
			i++
			continue
		}
		b.removeLocked(w)
		b.observeWait(w.req.Class, now.Sub(w.arrived))
		w.err = ErrModelNotFound
		w.ready <- nil
	}
}

// wait blocks until w is placed, its context ends or its class's
// max_wait passes.
func (b *Balancer) wait(ctx context.Context, w *waiter) (*Node, error) {
	var timeout <-chan time.Time
	if w.maxWait > 0 {
		t := time.NewTimer(w.maxWait)
		defer t.Stop()
		timeout = t.C
	}
	var cause error
	select {
	case n := <-w.ready:
		if n == nil {
			return nil, w.err
		}
		return n, nil
	case <-ctx.Done():
		cause = context.Cause(ctx)
	case <-timeout:
		cause = ErrQueueTimeout
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.placed {
		// The waiter was placed while it gave up, so free the slot.
		n := <-w.ready
		b.freeSlotLocked(n, w.req)
		b.dispatchLocked()
	} else {
		b.removeLocked(w)
		b.observeWait(w.req.Class, b.now().Sub(w.arrived))
	}
	if b.m != nil && errors.Is(cause, ErrQueueTimeout) {
		b.m.QueueRejected.WithLabelValues(w.req.Class, "timeout").Inc()
	}
	return nil, cause
}

// Waiting lists the requests waiting for a slot, best-ranked first.
func (b *Balancer) Waiting() []WaitingRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	ws := append([]*waiter(nil), b.waiting...)
	sort.SliceStable(ws, func(i, j int) bool { return ws[i].before(ws[j], now, b.settings.Aging) })
	out := make([]WaitingRequest, 0, len(ws))
	for _, w := range ws {
		out = append(out, WaitingRequest{
			Model: w.req.Model, Class: w.req.Class, Client: w.req.Client,
			Waiting: now.Sub(w.arrived),
		})
	}
	return out
}

// Depth returns the number of waiting requests per class.
func (b *Balancer) Depth() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]int, len(config.Classes))
	for _, c := range config.Classes {
		out[c] = b.depth[c]
	}
	return out
}

func (b *Balancer) observeDepth(class string) {
	if b.m != nil {
		b.m.QueueDepth.WithLabelValues(class).Set(float64(b.depth[class]))
	}
}

func (b *Balancer) observeWait(class string, d time.Duration) {
	if b.m == nil {
		return
	}
	if o, ok := b.waits[class]; ok {
		o.Observe(d.Seconds())
		return
	}
	b.m.QueueWait.WithLabelValues(class).Observe(d.Seconds())
}
