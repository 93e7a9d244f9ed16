package balancer

import (
	"time"
)

// Two expected costs count as equal when they differ by less than
// costTolerance of the larger one or less than minCostDifference seconds.
const (
	costTolerance     = 0.15
	minCostDifference = 0.05
)

// candidate is a node that could serve a request, with the values that
// placement compares.
type candidate struct {
	n    *Node
	free bool    // a slot is free (always true for requests without slots)
	warm bool    // the model is loaded with a fitting context size
	load float64 // slots in use (requests in flight without slots) per weighted slot
	rot  uint64  // rotation order, for ties
	cost float64 // expected seconds until the request would finish
	// delay is the part of cost spent before generation starts: waiting
	// for a slot and loading the model.
	delay float64
}

// placeLocked returns the node with a free slot where req should start
// now, or nil when it should wait for a slot.
func (b *Balancer) placeLocked(req Request, waited time.Duration) *Node {
	return b.bestLocked(req, waited, true)
}

// bestLocked applies the policy. With slots false every candidate counts
// as free, for requests that take no slot.
func (b *Balancer) bestLocked(req Request, waited time.Duration, slots bool) *Node {
	cands := b.candidatesLocked(req, slots)
	if len(cands) == 0 {
		return nil
	}
	switch b.settings.Policy {
	case PolicyRoundRobin:
		return pickRoundRobin(cands)
	case PolicyLeastConn:
		return pickLeastConn(cands)
	}
	return b.pickInferenceAware(cands, req, waited)
}

// candidatesLocked returns the nodes that could serve req. The slice is
// valid until the next call, which reuses it.
func (b *Balancer) candidatesLocked(req Request, slots bool) []candidate {
	nodes := b.Nodes()
	start := b.rr.Add(1)
	cands := b.cands[:0]
	for i, n := range nodes {
		if tried(req.Tried, n) || (req.Model != "" && !n.hasKey(req.Model)) || !b.usableFor(n, req.Model, req.Tried) {
			continue
		}
		if req.Warm && !warmFor(n, req) {
			continue
		}
		used := n.slots
		if !slots {
			used = int(n.Inflight())
		}
		cands = append(cands, candidate{
			n:    n,
			free: !slots || n.slots < n.MaxConcurrent(),
			warm: req.Model == "" || n.loadedKey(req.Model, req.NumCtx),
			load: float64(used) / (float64(n.MaxConcurrent()) * n.Weight()),
			rot:  (uint64(i) + start) % uint64(len(nodes)),
		})
	}
	b.cands = cands
	return cands
}

// pickRoundRobin returns the free candidate next in rotation.
func pickRoundRobin(cands []candidate) *Node {
	var best *candidate
	for i := range cands {
		c := &cands[i]
		if c.free && (best == nil || c.rot < best.rot) {
			best = c
		}
	}
	if best == nil {
		return nil
	}
	return best.n
}

// pickLeastConn returns the free candidate with the fewest requests per
// weighted slot, as nginx's least_conn does.
func pickLeastConn(cands []candidate) *Node {
	var best *candidate
	for i := range cands {
		c := &cands[i]
		if !c.free {
			continue
		}
		if best == nil || c.load < best.load || (c.load == best.load && c.rot < best.rot) {
			best = c
		}
	}
	if best == nil {
		return nil
	}
	return best.n
}

// pickInferenceAware returns the node where the request should finish
// first, or nil when it should wait. A conversation goes to the node that
// served its previous turn while that node is not overloaded. Otherwise
// the lowest expected cost wins, where a cold model load adds the load
// time learned from the nodes' reports. A busy node that has the model
// loaded wins over an idle one that would have to load it when its wait
// is shorter than the load. The request then waits for the busy node, and
// goes to the idle node once it has waited as long as that load.
func (b *Balancer) pickInferenceAware(cands []candidate, req Request, waited time.Duration) *Node {
	if n := b.affinityNode(cands, req); n != nil {
		return n
	}
	busyWait := b.busyWaitLocked(cands, req)
	svc := b.est.serviceTime(req.Model)
	best := -1
	for i := range cands {
		c := &cands[i]
		if !c.free {
			c.delay += busyWait
		}
		if !c.warm {
			c.delay += b.est.loadTime(c.n.Name, req.Model)
		}
		// A slower node takes longer to generate the same response.
		c.cost = c.delay + svc*b.est.speedFactor(c.n.Name)
		if best < 0 || cheaper(c, &cands[best], req.Model) {
			best = i
		}
	}
	if cands[best].free {
		return cands[best].n
	}
	var fallback *candidate
	for i := range cands {
		c := &cands[i]
		if c.free && waited.Seconds() >= c.delay && (fallback == nil || cheaper(c, fallback, req.Model)) {
			fallback = c
		}
	}
	if fallback == nil {
		return nil
	}
	return fallback.n
}

// cheaper reports whether c comes before o. It orders candidates by cost,
// then free before busy, then by load, then by a stable rank. The rank is
// the model's rendezvous rank when both would have to load the model, so
// that one model's loads go to one node, and the rotation order otherwise.
// Costs within costTolerance of each other count as equal, so that noise
// in the measured speeds does not send every request to one node.
func cheaper(c, o *candidate, model string) bool {
	d := c.cost - o.cost
	tolerance := max(costTolerance*max(c.cost, o.cost), minCostDifference)
	if d > tolerance || -d > tolerance {
		return c.cost < o.cost
	}
	if c.free != o.free {
		return c.free
	}
	if c.load != o.load {
		return c.load < o.load
	}
	if !c.warm && !o.warm {
		return rendezvous(model, c.n.Name) < rendezvous(model, o.n.Name)
	}
	return c.rot < o.rot
}

// busyWaitLocked estimates in seconds how long a request for req.Model
// waits for a slot on a busy node that has the model loaded. The estimate
// shares the queued requests for the model, plus this one, among the slots
// of the candidates that have it loaded, each request taking the model's
// usual service time.
func (b *Balancer) busyWaitLocked(cands []candidate, req Request) float64 {
	slots := 0
	for _, c := range cands {
		if c.warm {
			slots += c.n.MaxConcurrent()
		}
	}
	ahead := 0
	for _, w := range b.waiting {
		if w.req.Model == req.Model {
			ahead++
		}
	}
	return b.est.serviceTime(req.Model) * float64(ahead+1) / float64(max(slots, 1))
}

// affinityNode returns the node that served the conversation's previous
// turn if that node has a free slot and a load of at most
// balancer.affinity_load_factor times the average load, counting this
// request. This is the bound of consistent hashing with bounded loads.
func (b *Balancer) affinityNode(cands []candidate, req Request) *Node {
	if req.Affinity == 0 {
		return nil
	}
	name, ok := b.affinity.get(req.Affinity)
	if !ok {
		return nil
	}
	var total, slots float64
	var home *candidate
	for i := range cands {
		c := &cands[i]
		total += float64(c.n.slots)
		slots += float64(c.n.MaxConcurrent()) * c.n.Weight()
		if c.n.Name == name {
			home = c
		}
	}
	if home == nil || !home.free {
		return nil
	}
	avg := (total + 1) / slots
	if home.load > avg*b.settings.AffinityLoadFactor {
		return nil
	}
	return home.n
}
