package health

import (
	"errors"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
)

// errNodeFailure is what the breaker is told when a request failed
// because of the node.
var errNodeFailure = errors.New("node failure")

// tracker holds the passive state and the circuit breaker of one node. It
// is the node's balancer.Gate.
type tracker struct {
	node    *balancer.Node
	breaker *gobreaker.CircuitBreaker[struct{}]
	// halfOpenMax is how many requests a half-open breaker lets through at
	// once; more would defeat the breaker's probing.
	halfOpenMax int64
	maxFails    int
	failWindow  time.Duration
	now         func() time.Time

	// mu guards the passive failure record.
	mu       sync.Mutex
	failures []time.Time
	outUntil time.Time

	// Active probe state, touched only by the node's probe loop.
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
	t.breaker = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
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
		// gobreaker calls this with its lock held: only hand the event on.
		OnStateChange: func(_ string, from, to gobreaker.State) { onChange(n, from, to) },
	})
	return t
}

// Usable implements balancer.Gate: the node is not out after passive
// failures, and its breaker is closed, or half-open with room for one more
// probe request.
func (t *tracker) Usable() bool {
	t.mu.Lock()
	out := t.now().Before(t.outUntil)
	t.mu.Unlock()
	if out {
		return false
	}
	switch t.breaker.State() {
	case gobreaker.StateOpen:
		return false
	case gobreaker.StateHalfOpen:
		return t.node.Inflight() < t.halfOpenMax
	}
	return true
}

// report records one request's outcome and reports whether the node was
// just taken out by passive checks.
func (t *tracker) report(failure string) (tookOut bool) {
	var err error
	if failure != "" {
		err = errNodeFailure
	}
	_, _ = t.breaker.Execute(func() (struct{}, error) { return struct{}{}, err })
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
	if len(t.failures) >= t.maxFails && !now.Before(t.outUntil) {
		t.outUntil = now.Add(t.failWindow)
		t.failures = t.failures[:0]
		return true
	}
	return false
}

// passiveOut reports whether passive checks hold the node out now.
func (t *tracker) passiveOut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.now().Before(t.outUntil)
}

// breakerState names the breaker's state: closed, half-open or open.
func (t *tracker) breakerState() string { return t.breaker.State().String() }

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
