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
	node     *balancer.Node
	now      func() time.Time
	onChange func(n *balancer.Node, from, to gobreaker.State)
	// ejections decides whether the node may be taken out, nil for no cap.
	ejections *ejectionCap

	// breakerHeld counts the trips that the ejection cap refused to the
	// breaker since report last read it.
	breakerHeld atomic.Int64

	// probeCall is the liveness probe in progress, shared by the callers
	// of Alive. probeCallMu guards it.
	probeCallMu sync.Mutex
	probeCall   *liveness

	// breaker is the node's current breaker. apply replaces it with mu
	// held. The outcome of a request that ends while it is replaced counts
	// in the old breaker and is lost.
	breaker atomic.Pointer[nodeBreaker]

	// mu guards the passive settings and failure record below.
	mu         sync.Mutex
	maxFails   int
	failWindow time.Duration
	failures   []time.Time
	// outSince is the start of the latest passive take-out, so that a
	// reloaded fail_timeout can move its end.
	outSince time.Time
	// outUntil is the end of a passive take-out in Unix nanoseconds, 0 for
	// none. It stays set after that end until endedLocked reports the end.
	// Active probes do not clear it, so a node that probes mark down and up
	// again stays out until then. Usable reads it without the lock.
	outUntil atomic.Int64
	// outRestricted is set when the latest passive take-out is restricted
	// (see Restricted). Restricted reads it without the lock.
	outRestricted atomic.Bool
	// heldLogged is when a take-out that the ejection cap refused was last
	// logged, so that a node failing on and on logs it once a minute.
	heldLogged time.Time

	// probeMu serialises the node's probes: its loop's, and those of
	// ProbeAll at start and after a reload. It guards the fields below.
	probeMu    sync.Mutex
	okStreak   int
	failStreak int
	probed     bool
}

// nodeBreaker is a circuit breaker with the settings it was built from,
// which gobreaker fixes at construction.
type nodeBreaker struct {
	cb       *gobreaker.CircuitBreaker[struct{}]
	settings config.Breaker
	// halfOpenMax is the maximum number of requests in flight that a
	// half-open breaker allows. More would defeat its trial requests.
	halfOpenMax int64
	// tripped is set while the breaker is not closed, so that Usable,
	// called for every candidate of every request, skips the breaker's
	// lock in the usual closed state. Each breaker has its own flag, so a
	// replaced breaker cannot set the flag of its successor.
	tripped atomic.Bool
	// restricted is set when the latest trip was restricted (see
	// Restricted). It stays set while the breaker is half-open and after it
	// reopens from there.
	restricted atomic.Bool
}

// takeOut describes a passive take-out: the failures counted within the
// window, how long the node stays out, and whether it is restricted.
type takeOut struct {
	failures   int
	duration   time.Duration
	restricted bool
}

// takeOutEnd is a passive take-out that has ended: when it ended and
// how long it lasted.
type takeOutEnd struct {
	at     time.Time
	lasted time.Duration
}

// reported is the effect of one reported outcome on the node.
type reported struct {
	// out is set when passive checks have just taken the node out.
	out *takeOut
	// ended is the passive take-out that had ended before this failure
	// and whose end no probe had reported yet, or nil.
	ended *takeOutEnd
	// passiveHeld is set when the node reached max_fails but the ejection
	// cap kept it in.
	passiveHeld bool
	// breakerHeld counts the times that the breaker would have opened but
	// the ejection cap kept it closed.
	breakerHeld int64
}

// heldLogInterval is the least time between two logs of a take-out that
// the ejection cap refused to one node.
const heldLogInterval = time.Minute

func newTracker(n *balancer.Node, cfg *config.Config, now func() time.Time,
	onChange func(n *balancer.Node, from, to gobreaker.State), ejections *ejectionCap) *tracker {
	t := &tracker{
		node:       n,
		now:        now,
		onChange:   onChange,
		ejections:  ejections,
		maxFails:   cfg.Health.MaxFails,
		failWindow: cfg.Health.FailTimeout,
	}
	t.breaker.Store(t.newBreaker(cfg.Breaker))
	return t
}

// newBreaker builds a closed breaker with the settings of b.
func (t *tracker) newBreaker(b config.Breaker) *nodeBreaker {
	nb := &nodeBreaker{settings: b, halfOpenMax: int64(max(b.HalfOpenRequests, 1))}
	nb.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        t.node.Name,
		MaxRequests: uint32(nb.halfOpenMax),
		Interval:    b.Interval,
		Timeout:     b.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if !tripping(b, c) {
				return false
			}
			// The flag is set inside the cap's decision, so that the next
			// decision counts this node out.
			admitted := t.ejections.admit(t, func(restricted bool) {
				nb.restricted.Store(restricted)
				nb.tripped.Store(true)
			})
			if admitted {
				return true
			}
			t.breakerHeld.Add(1)
			return false
		},
		// gobreaker calls OnStateChange with its lock held, so this only
		// passes the event on. The gauge and the log follow the current
		// breaker alone.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			nb.tripped.Store(to != gobreaker.StateClosed)
			if t.breaker.Load() == nb {
				t.onChange(t.node, from, to)
			}
		},
	})
	return nb
}

// tripping reports whether counts c reach the thresholds of b that open a
// breaker.
func tripping(b config.Breaker, c gobreaker.Counts) bool {
	if b.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= b.ConsecutiveFailures {
		return true
	}
	return b.FailureRatio > 0 && c.Requests >= max(b.MinRequests, 1) &&
		float64(c.TotalFailures)/float64(c.Requests) >= b.FailureRatio
}

// apply adopts the health and breaker settings of a reloaded cfg. Changed
// breaker settings replace the breaker with a closed one with zero counts,
// and apply then returns the state of the replaced breaker and true.
// Unchanged ones keep the breaker, its state and its counts.
func (t *tracker) apply(cfg *config.Config) (from gobreaker.State, replaced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Failures that had left the old window stay forgotten. A current
	// take-out ends the new fail_timeout after it began, or at once when
	// max_fails 0 turns passive checks off.
	now := t.now()
	t.failures = t.recentLocked(now)
	t.maxFails = cfg.Health.MaxFails
	t.failWindow = cfg.Health.FailTimeout
	// The take-out keeps its end time, so that the next probe logs its
	// end (see endedLocked).
	switch {
	case now.UnixNano() >= t.outUntil.Load():
		// No take-out, or one that has ended already.
	case t.maxFails <= 0:
		t.outUntil.Store(now.UnixNano())
	default:
		t.outUntil.Store(t.outSince.Add(t.failWindow).UnixNano())
	}
	if t.maxFails <= 0 {
		t.failures = t.failures[:0]
	}

	// gobreaker v2 fixes its settings at construction and cannot build a
	// breaker in a given state, so the new breaker starts closed. A node
	// that still fails trips it under the new thresholds.
	old := t.breaker.Load()
	if old.settings == cfg.Breaker {
		return 0, false
	}
	from = old.cb.State()
	t.breaker.Store(t.newBreaker(cfg.Breaker))
	return from, true
}

// Usable implements balancer.Gate. It reports whether passive checks do
// not keep the node out and its breaker is closed, or half-open with fewer
// than halfOpenMax requests in flight on the node.
func (t *tracker) Usable() bool {
	if t.passiveOut() {
		return false
	}
	b := t.breaker.Load()
	if !b.tripped.Load() {
		return true
	}
	switch b.cb.State() {
	case gobreaker.StateOpen:
		return false
	case gobreaker.StateHalfOpen:
		return t.node.Inflight() < b.halfOpenMax
	}
	return true
}

// Restricted implements balancer.Gate. It reports whether the node is out
// only for the models that another usable node lists: passive checks or the
// breaker keep it out, and each of them that does was restricted when it
// took the node out.
func (t *tracker) Restricted() bool {
	passive := t.passiveOut()
	b := t.breaker.Load()
	tripped := b.tripped.Load()
	if !passive && !tripped {
		return false
	}
	if passive && !t.outRestricted.Load() {
		return false
	}
	return !tripped || b.restricted.Load()
}

// report records one request's outcome in the breaker and the passive
// failure count, and returns what that did to the node. An empty failure
// is a success.
func (t *tracker) report(failure string) reported {
	var err error
	if failure != "" {
		err = errNodeFailure
	}
	_, _ = t.breaker.Load().cb.Execute(func() (struct{}, error) { return struct{}{}, err })
	r := reported{breakerHeld: t.breakerHeld.Swap(0)}
	if failure == "" {
		return r
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.maxFails <= 0 {
		return r
	}
	t.failures = append(t.recentLocked(now), now)
	if len(t.failures) < t.maxFails || now.UnixNano() < t.outUntil.Load() {
		return r
	}
	r.ended = t.endedLocked(now)
	// The failures stay counted while the cap keeps the node in, so the
	// next failure runs the decision again.
	restricted := false
	taken := t.ejections.admit(t, func(r bool) {
		restricted = r
		t.outSince = now
		t.outRestricted.Store(r)
		t.outUntil.Store(now.Add(t.failWindow).UnixNano())
	})
	if !taken {
		r.passiveHeld = true
		return r
	}
	r.out = &takeOut{failures: len(t.failures), duration: t.failWindow, restricted: restricted}
	t.failures = t.failures[:0]
	return r
}

// ended returns the passive take-out that has ended and whose end was
// not reported yet, or nil.
func (t *tracker) ended() *takeOutEnd {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.endedLocked(now)
}

// endedLocked returns the passive take-out that ended by now, or nil when
// there is none or it was returned before. It clears outUntil, so it
// returns each take-out at most once.
func (t *tracker) endedLocked(now time.Time) *takeOutEnd {
	until := t.outUntil.Load()
	if until == 0 || now.UnixNano() < until {
		return nil
	}
	t.outUntil.Store(0)
	at := time.Unix(0, until)
	return &takeOutEnd{at: at, lasted: at.Sub(t.outSince)}
}

// passiveRemaining returns how long passive checks keep the node out from
// now, or 0 when they do not.
func (t *tracker) passiveRemaining() time.Duration {
	until := t.outUntil.Load()
	if until == 0 {
		return 0
	}
	return max(time.Duration(until-t.now().UnixNano()), 0)
}

// heldLogDue reports whether a take-out of the node that the ejection cap
// skipped is logged now. It returns true at most once per heldLogInterval.
func (t *tracker) heldLogDue() bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.heldLogged.IsZero() && now.Sub(t.heldLogged) < heldLogInterval {
		return false
	}
	t.heldLogged = now
	return true
}

// ejected reports whether passive checks or the breaker keep the node out
// now. A half-open breaker counts as out. It takes no lock, so that the
// ejection cap may call it while a breaker holds its own.
func (t *tracker) ejected() bool {
	return t.passiveOut() || t.breaker.Load().tripped.Load()
}

// available reports, without a lock, whether the node may take requests:
// up, not draining and not ejected.
func (t *tracker) available() bool {
	return t.node.Up() && !t.node.Draining() && !t.ejected()
}

// recentLocked returns the failures within the window before now, reusing
// the storage of t.failures.
func (t *tracker) recentLocked(now time.Time) []time.Time {
	keep := t.failures[:0]
	for _, f := range t.failures {
		if now.Sub(f) < t.failWindow {
			keep = append(keep, f)
		}
	}
	return keep
}

// passiveOut reports whether passive checks keep the node out now.
func (t *tracker) passiveOut() bool {
	until := t.outUntil.Load()
	return until != 0 && t.now().UnixNano() < until
}

// breakerState returns the breaker's state: closed, half-open or open.
func (t *tracker) breakerState() string { return t.breaker.Load().cb.State().String() }

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
