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
// Active probes are not capped: a node that fails GET /api/version cannot
// serve anything.
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
// call runs inside the decision, so takeOut must mark t out before the
// next decision reads it. A nil cap admits every take-out.
func (ec *ejectionCap) admit(t *tracker, takeOut func()) bool {
	if ec == nil {
		takeOut()
		return true
	}
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if !ec.allowsLocked(t) {
		return false
	}
	takeOut()
	return true
}

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
	if out >= max(1, len(ec.trackers)*ec.percent/100) {
		return false
	}
	return !ec.lastUsableLocked(t)
}

// lastUsableLocked reports whether t serves a model that no other usable
// node lists. For a node whose model list is empty or not yet known, it
// reports whether no other node is usable at all.
func (ec *ejectionCap) lastUsableLocked(t *tracker) bool {
	models := t.node.Models()
	if len(models) == 0 {
		for _, o := range ec.trackers {
			if o != t && o.available() {
				return false
			}
		}
		return true
	}
	for _, m := range models {
		if !ec.listedElsewhereLocked(t, m.Name) {
			return true
		}
	}
	return false
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
