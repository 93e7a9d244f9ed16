package health

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
)

// errNodeFailure is the error recorded in the breaker for a request that
// failed because of the node.
var errNodeFailure = errors.New("node failure")

// tracker is the passive failure state and the circuit breaker of one
// node. It is the node's balancer.Gate.
type tracker struct {
	node *balancer.Node
	// breaker is replaced by a fresh one when the node recovers.
	breaker atomic.Pointer[gobreaker.CircuitBreaker[struct{}]]
	// settings configures every breaker built for the node.
	settings gobreaker.Settings
	// halfOpenMax is the maximum number of requests in flight that a
	// half-open breaker allows. More would defeat its trial requests.
	halfOpenMax int64
	maxFails    int
	failWindow  time.Duration
	now         func() time.Time

	// mu guards the passive failure record.
	mu       sync.Mutex
	failures []time.Time
	// outUntil is the end of a passive take-out in Unix nanoseconds, 0 for
	// none. Usable reads it without the lock.
	outUntil atomic.Int64
	// tripped is set while the breaker is not closed, so that Usable, called
	// for every candidate of every request, skips the breaker's lock in the
	// usual closed state.
	tripped atomic.Bool

	// probeMu serialises the node's probes: its loop's, and those of
	// ProbeAll at start and after a reload. It guards the fields below.
	probeMu    sync.Mutex
	okStreak   int
	failStreak int
	probed     bool
}

func newTracker(n *balancer.Node, cfg *config.Config, now func() time.Time,
	onChange func(n *balancer.Node, from, to gobreaker.State)) *tracker {
	b := cfg.Breaker
	t := &tracker{
		node:        n,
		halfOpenMax: int64(max(b.HalfOpenRequests, 1)),
		maxFails:    cfg.Health.MaxFails,
		failWindow:  cfg.Health.FailTimeout,
		now:         now,
	}
	t.settings = gobreaker.Settings{
		Name:        n.Name,
		MaxRequests: uint32(t.halfOpenMax),
		Interval:    b.Interval,
		Timeout:     b.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if b.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= b.ConsecutiveFailures {
				return true
			}
			return b.FailureRatio > 0 && c.Requests >= max(b.MinRequests, 1) &&
				float64(c.TotalFailures)/float64(c.Requests) >= b.FailureRatio
		},
		// gobreaker calls OnStateChange with its lock held, so this only
		// passes the event on.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			t.tripped.Store(to != gobreaker.StateClosed)
			onChange(n, from, to)
		},
	}
	t.breaker.Store(gobreaker.NewCircuitBreaker[struct{}](t.settings))
	return t
}

// recovered clears the passive failures and replaces the breaker of a node
// that active probes found up again after it was down. Such a node was
// restarted or repaired, so it gets traffic at once rather than after the
// passive and breaker timeouts.
func (t *tracker) recovered() {
	t.mu.Lock()
	t.failures = t.failures[:0]
	t.outUntil.Store(0)
	t.mu.Unlock()
	t.breaker.Store(gobreaker.NewCircuitBreaker[struct{}](t.settings))
	t.tripped.Store(false)
}

// Usable implements balancer.Gate. It reports whether passive checks do
// not keep the node out and its breaker is closed, or half-open with fewer
// than halfOpenMax requests in flight on the node.
func (t *tracker) Usable() bool {
	if t.passiveOut() {
		return false
	}
	if !t.tripped.Load() {
		return true
	}
	switch t.breaker.Load().State() {
	case gobreaker.StateOpen:
		return false
	case gobreaker.StateHalfOpen:
		return t.node.Inflight() < t.halfOpenMax
	}
	return true
}

// report records one request's outcome and reports whether the node was
// just taken out by passive checks.
func (t *tracker) report(failure string, mayTakeOut bool) (tookOut bool) {
	var err error
	if failure != "" {
		err = errNodeFailure
	}
	_, _ = t.breaker.Load().Execute(func() (struct{}, error) { return struct{}{}, err })
	if failure == "" || t.maxFails <= 0 {
		return false
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := t.failures[:0]
	for _, f := range t.failures {
		if now.Sub(f) < t.failWindow {
			keep = append(keep, f)
		}
	}
	t.failures = append(keep, now)
	if mayTakeOut && len(t.failures) >= t.maxFails && now.UnixNano() >= t.outUntil.Load() {
		t.outUntil.Store(now.Add(t.failWindow).UnixNano())
		t.failures = t.failures[:0]
		return true
	}
	return false
}

// passiveOut reports whether passive checks keep the node out now.
func (t *tracker) passiveOut() bool {
	until := t.outUntil.Load()
	return until != 0 && t.now().UnixNano() < until
}

// breakerState returns the breaker's state: closed, half-open or open.
func (t *tracker) breakerState() string { return t.breaker.Load().State().String() }

// breakerGauge maps the breaker's state to the value of
// llmproxy_node_breaker_state: 0 closed, 1 half-open, 2 open.
func breakerGauge(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}
