package health

import "sync"

// ejectionCap limits the nodes that passive checks and circuit breakers
// keep out at once. Both act on the outcomes of real requests, so a wave of
// failures that are not the nodes' own, such as responses slower than a
// timeout, could otherwise take out the whole fleet and turn every request
// into a 503. The cap is health.max_ejection_percent of the nodes, rounded
// down but at least one node, as in Envoy's outlier detection. On top of
// it, neither takes out the last usable node of a model that the node
// lists, because a node that fails some requests serves better than none.
// Such a node is restricted instead: it stays out for every model that
// another usable node lists, and in for the rest (see tracker.Restricted).
// A node whose every model has no other usable node is not taken out at
// all. Active probes are not capped: a node that fails GET /api/version
// cannot serve anything.
type ejectionCap struct {
	// mu serialises the decisions, so that two nodes that fail at once
	// cannot both take the last place. It guards the fields below. A
	// breaker calls admit while it holds its own lock, so code that holds
	// mu takes no other lock and reads the other nodes' state from atomics.
	mu       sync.Mutex
	percent  int
	trackers []*tracker
}

// set adopts the cap in percent and the trackers of the current nodes.
func (ec *ejectionCap) set(percent int, trackers []*tracker) {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	ec.percent = percent
	ec.trackers = trackers
}

// admit calls takeOut and returns true when t may be taken out now. The
// argument of takeOut is true when the take-out is restricted, because t is
// the last usable node of some of its models but not of all. The call runs
// inside the decision, so takeOut must mark t out before the next decision
// reads it. A nil cap admits every take-out unrestricted.
func (ec *ejectionCap) admit(t *tracker, takeOut func(restricted bool)) bool {
	if ec == nil {
		takeOut(false)
		return true
	}
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if !ec.allowsLocked(t) {
		return false
	}
	sole, shared := ec.coverageLocked(t)
	if sole && !shared {
		// Every model of t would keep it in, so the take-out changes nothing.
		return false
	}
	takeOut(sole)
	return true
}

// allowsLocked reports whether health.max_ejection_percent leaves room to
// take t out. A restricted node counts as out.
func (ec *ejectionCap) allowsLocked(t *tracker) bool {
	if t.ejected() {
		// Out already, by the other mechanism: no capacity is lost.
		return true
	}
	if ec.percent == 0 {
		return false
	}
	out := 0
	for _, o := range ec.trackers {
		if o != t && o.ejected() {
			out++
		}
	}
	return out < max(1, len(ec.trackers)*ec.percent/100)
}

// coverageLocked reports whether t lists a model that no other usable node
// lists (sole), and whether it lists one that another usable node lists
// (shared). A node whose model list is empty or not yet known counts as the
// holder of a sole model when no other node is usable at all, and of a
// shared one otherwise.
func (ec *ejectionCap) coverageLocked(t *tracker) (sole, shared bool) {
	models := t.node.Models()
	if len(models) == 0 {
		for _, o := range ec.trackers {
			if o != t && o.available() {
				return false, true
			}
		}
		return true, false
	}
	for _, m := range models {
		if ec.listedElsewhereLocked(t, m.Name) {
			shared = true
		} else {
			sole = true
		}
	}
	return sole, shared
}

// listedElsewhereLocked reports whether a usable node other than t lists
// model.
func (ec *ejectionCap) listedElsewhereLocked(t *tracker, model string) bool {
	for _, o := range ec.trackers {
		if o != t && o.available() && o.node.HasModel(model) {
			return true
		}
	}
	return false
}
