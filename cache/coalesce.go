package cache

import (
	"context"
	"sync/atomic"
)

// flight is one upstream request that identical requests wait for.
type flight struct {
	done    chan struct{} // closed when the leader's fetch returned
	entry   *Entry        // the leader's entry, written before done closes
	err     error         // the leader's error, written before done closes
	waiters atomic.Int32  // requests waiting for this flight
}

// shared reports whether the leader's fetch left anything for the waiters.
func (f *flight) shared() bool { return f.entry != nil || f.err != nil }

// Do coalesces identical requests that missed at the same time, so that at
// most one fetch per p.Key runs at a time. The first caller for p.Key, the
// leader, runs fetch. fetch must send the request upstream and send the
// response to its own client. It then returns what the waiting requests
// are to receive: the entry that Store or StoreEmbeddings returned, or an
// error that describes a response that was not stored, such as an error
// response of a node. It returns nil and nil when its client received
// nothing that another client could use. Do returns fetch's entry and
// error with fetched set, and the caller has nothing left to send.
//
// Callers that arrive while the leader runs wait for it, and Do returns
// the leader's entry or error to each of them with fetched unset. A
// waiter must then send entry.Render(theirPlan), or the response that the
// error describes. So the waiters of a leader that failed get its error at
// once, and none sends the request upstream again. When fetch returns nil
// and nil, as when its client went away, or panics, the waiters coalesce
// again: one of them becomes the leader and runs its own fetch, and the
// others wait for it, as often as needed. So one client that went away
// does not fail the others. A waiter whose ctx ends while it waits returns
// ctx.Err() and sends nothing, and so does a waiter whose ctx has ended
// when it would coalesce again.
//
// A leader with a KindResponse plan first looks in L1 again, unless the
// plan has NoCache, because an identical request may have stored the
// response between this caller's Lookup and Do. A hit returns with fetched
// unset. A KindNone plan is not coalesced, and fetch runs at once.
//
// NOTE: an error reaches only the callers that wait when fetch returns. It
// is not cached, so the next identical request runs fetch again.
func (c *Cache) Do(
	ctx context.Context,
	p Plan,
	fetch func() (*Entry, error),
) (entry *Entry, fetched bool, err error) {
	if p.Kind == KindNone {
		entry, err = fetch()
		return entry, true, err
	}
	for waited := false; ; waited = true {
		if waited && ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		c.flightsMu.Lock()
		f, ok := c.flights[p.Key]
		if !ok {
			f = &flight{done: make(chan struct{})}
			c.flights[p.Key] = f
			c.flightsMu.Unlock()
			return c.lead(p, f, fetch)
		}
		f.waiters.Add(1)
		c.flightsMu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			f.waiters.Add(-1)
			return nil, false, ctx.Err()
		}
		if f.shared() {
			return f.entry, false, f.err
		}
	}
}

// Waiting reports whether a request waits for the fetch of p.Key that is
// running, so that the leader can decide whether to copy a response
// that it does not store.
func (c *Cache) Waiting(p Plan) bool {
	c.flightsMu.Lock()
	f := c.flights[p.Key]
	c.flightsMu.Unlock()
	return f != nil && f.waiters.Load() > 0
}

// lead runs fetch for the flight f of p.Key, which the caller has
// registered, and ends the flight when fetch returns or panics.
func (c *Cache) lead(p Plan, f *flight, fetch func() (*Entry, error)) (*Entry, bool, error) {
	defer func() {
		c.flightsMu.Lock()
		delete(c.flights, p.Key)
		c.flightsMu.Unlock()
		close(f.done)
	}()
	if p.Kind == KindResponse && !p.NoCache {
		if rec, ok := c.l1.get(p.Key); ok && rec.response.serves(p) {
			f.entry = &Entry{route: p.route, response: rec.response}
			return f.entry, false, nil
		}
	}
	f.entry, f.err = fetch()
	return f.entry, true, f.err
}
