package cache

import (
	"context"
	"sync/atomic"
)

// flight is one upstream request that identical requests wait for.
type flight struct {
	done    chan struct{} // closed when the leader's fetch returned
	entry   *Entry        // the leader's response, written before done closes
	waiters atomic.Int32  // requests waiting, for tests
}

// Do coalesces identical requests that missed at the same time. The first
// caller for p.Key, the leader, runs fetch. fetch must send the request
// upstream, send the response to its own client, and return what Store or
// StoreEmbeddings returned, or nil when nothing could be stored. Do then
// returns that entry with fetched set, and the caller has nothing left to
// send.
//
// Callers that arrive while the leader runs wait for it and receive its
// entry with fetched unset, so they must send entry.Render(theirPlan). When
// the leader's fetch returns nil (an upstream error, a cut stream, a
// panic), each waiter runs its own fetch instead, without coalescing, and
// Do returns as for a leader. So one client that went away does not fail
// the others. A waiter whose ctx ends returns ctx.Err() and sends nothing.
//
// A leader with a KindResponse plan first looks in L1 again, unless the
// plan has NoCache, because an identical request may have stored the
// response between this caller's Lookup and Do. A hit returns with fetched
// unset. A KindNone plan is not coalesced, and fetch runs at once.
func (c *Cache) Do(
	ctx context.Context,
	p Plan,
	fetch func() *Entry,
) (entry *Entry, fetched bool, err error) {
	if p.Kind == KindNone {
		return fetch(), true, nil
	}
	c.flightsMu.Lock()
	if f, ok := c.flights[p.Key]; ok {
		f.waiters.Add(1)
		c.flightsMu.Unlock()
		return waitFlight(ctx, f, fetch)
	}
	f := &flight{done: make(chan struct{})}
	c.flights[p.Key] = f
	c.flightsMu.Unlock()

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
	f.entry = fetch()
	return f.entry, true, nil
}

func waitFlight(ctx context.Context, f *flight, fetch func() *Entry) (*Entry, bool, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	if f.entry != nil {
		return f.entry, false, nil
	}
	return fetch(), true, nil
}
