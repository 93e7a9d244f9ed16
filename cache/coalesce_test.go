package cache

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor waits until cond is true and reports whether it became true
// within a generous limit. It yields between checks rather than sleeping
// for a guessed time, and may run outside the test's goroutine, so it
// reports a timeout with Errorf.
func waitFor(t *testing.T, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return false
		}
		runtime.Gosched()
	}
	return true
}

// waiters returns the number of requests waiting for the flight of key.
func (c *Cache) waiters(key string) int {
	c.flightsMu.Lock()
	defer c.flightsMu.Unlock()
	if f, ok := c.flights[key]; ok {
		return int(f.waiters.Load())
	}
	return 0
}

// doResult is what one caller of Do received.
type doResult struct {
	entry   *Entry
	fetched bool
	err     error
}

// runConcurrent calls Do n times at once with fetch and returns every
// outcome once all have returned.
func runConcurrent(ctx context.Context, c *Cache, p Plan, n int, fetch func() (*Entry, error)) []doResult {
	results := make([]doResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			e, fetched, err := c.Do(ctx, p, fetch)
			results[i] = doResult{e, fetched, err}
		})
	}
	wg.Wait()
	return results
}

func TestDoCoalescesConcurrentMisses(t *testing.T) {
	const n = 50
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	response := readTestdata(t, "chat_nostream.body")
	var calls atomic.Int32
	fetch := func() (*Entry, error) {
		calls.Add(1)
		waitFor(t, "every other request to wait", func() bool { return tc.waiters(p.Key) == n-1 })
		return tc.store(t, p, response), nil
	}

	results := runConcurrent(context.Background(), tc.Cache, p, n, fetch)
	if got := calls.Load(); got != 1 {
		t.Fatalf("upstream calls = %d, want 1", got)
	}
	fetched := 0
	for _, r := range results {
		if r.err != nil || r.entry == nil {
			t.Fatalf("Do = %v, %v, want an entry", r.entry, r.err)
		}
		if r.fetched {
			fetched++
		}
	}
	if fetched != 1 {
		t.Errorf("callers that fetched = %d, want 1", fetched)
	}
}

// recordMax raises peak to v unless it is already at least v.
func recordMax(peak *atomic.Int32, v int32) {
	for {
		m := peak.Load()
		if v <= m || peak.CompareAndSwap(m, v) {
			return
		}
	}
}

func TestDoEmptyFetchRecoalesces(t *testing.T) {
	const n = 5
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	var calls, active, maxActive atomic.Int32
	fetch := func() (*Entry, error) {
		started := calls.Add(1)
		recordMax(&maxActive, active.Add(1))
		defer active.Add(-1)
		// Every caller that has not fetched yet waits for this fetch, unless
		// another fetch runs beside it or every caller has fetched.
		waitFor(t, "the callers that have not fetched to wait", func() bool {
			return tc.waiters(p.Key) == n-int(started) || active.Load() > 1 || calls.Load() == n
		})
		return nil, nil
	}

	results := runConcurrent(context.Background(), tc.Cache, p, n, fetch)
	if got := maxActive.Load(); got != 1 {
		t.Errorf("concurrent fetches of one key = %d, want 1", got)
	}
	if got := calls.Load(); got != n {
		t.Errorf("fetches = %d, want %d: each caller leads once after the fetch before it returned nothing",
			got, n)
	}
	for _, r := range results {
		if !r.fetched || r.err != nil || r.entry != nil {
			t.Errorf("Do = %v, fetched %v, err %v, want nil, fetched, no error", r.entry, r.fetched, r.err)
		}
	}
}

func TestDoNextLeaderServesWaiters(t *testing.T) {
	const n = 5
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	response := readTestdata(t, "chat_nostream.body")
	var calls atomic.Int32
	fetch := func() (*Entry, error) {
		started := calls.Add(1)
		waitFor(t, "the callers that have not fetched to wait", func() bool {
			return tc.waiters(p.Key) == n-int(started) || calls.Load() > started
		})
		if started == 1 {
			// The first leader's client went away.
			return nil, nil
		}
		return tc.store(t, p, response), nil
	}

	results := runConcurrent(context.Background(), tc.Cache, p, n, fetch)
	if got := calls.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2: the first returned nothing, the second an entry", got)
	}
	fetched, served := 0, 0
	for _, r := range results {
		if r.err != nil {
			t.Errorf("Do error = %v, want none", r.err)
		}
		if r.fetched {
			fetched++
		} else if r.entry != nil {
			served++
		}
	}
	if fetched != 2 {
		t.Errorf("callers that fetched = %d, want 2", fetched)
	}
	if served != n-2 {
		t.Errorf("callers served the second leader's entry = %d, want %d", served, n-2)
	}
}

func TestDoWaitersShareFetchError(t *testing.T) {
	const n = 5
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	errNode := errors.New("node returned status 500")
	var calls atomic.Int32
	fetch := func() (*Entry, error) {
		if calls.Add(1) == 1 {
			waitFor(t, "the other requests to wait", func() bool { return tc.waiters(p.Key) == n-1 })
		}
		return nil, errNode
	}

	results := runConcurrent(context.Background(), tc.Cache, p, n, fetch)
	if got := calls.Load(); got != 1 {
		t.Errorf("fetches = %d, want 1: the waiters share the leader's error", got)
	}
	fetched := 0
	for _, r := range results {
		if r.fetched {
			fetched++
		}
		if !errors.Is(r.err, errNode) || r.entry != nil {
			t.Errorf("Do = %v, err %v, want nil and the leader's error", r.entry, r.err)
		}
	}
	if fetched != 1 {
		t.Errorf("callers that fetched = %d, want 1", fetched)
	}
}

func TestDoWaiterHonoursContext(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	release := make(chan struct{})
	leaderDone := make(chan struct{})
	defer func() {
		close(release)
		<-leaderDone
	}()
	go func() {
		defer close(leaderDone)
		_, _, _ = tc.Do(context.Background(), p, func() (*Entry, error) {
			<-release
			return nil, nil
		})
	}()
	if !waitFor(t, "the leader to start", func() bool {
		tc.flightsMu.Lock()
		defer tc.flightsMu.Unlock()
		return tc.flights[p.Key] != nil
	}) {
		return
	}

	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, _, err := tc.Do(ctx, p, func() (*Entry, error) {
			t.Error("a cancelled waiter fetched")
			return nil, nil
		})
		errs <- err
	}()
	waitFor(t, "the waiter to wait", func() bool { return tc.waiters(p.Key) == 1 })
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Errorf("waiter error = %v, want context.Canceled", err)
	}
}

func TestDoFindsAnswerStoredMeanwhile(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	tc.store(t, p, readTestdata(t, "chat_nostream.body"))
	e, fetched, err := tc.Do(context.Background(), p, func() (*Entry, error) {
		t.Error("fetched a response that L1 holds")
		return nil, nil
	})
	if err != nil || fetched || e == nil {
		t.Errorf("Do = %v, %v, %v, want the stored entry", e, fetched, err)
	}
}

func TestDoNotCacheableRunsFetch(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := tc.Classify(Request{Route: "/api/show", Body: []byte(`{"model":"m"}`)})
	ran := false
	_, fetched, err := tc.Do(context.Background(), p, func() (*Entry, error) {
		ran = true
		return nil, nil
	})
	if !ran || !fetched || err != nil {
		t.Errorf("Do of a KindNone plan: ran %v, fetched %v, err %v", ran, fetched, err)
	}
}
