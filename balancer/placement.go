package balancer

import (
	"math"
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
	// weight is the node's weight, read once per placement.
	weight float64
	cost   float64 // expected seconds until the request would finish
	// tie marks the candidates that the policy ranks equal to its choice.
	// pickWeighted chooses among them by weight.
	tie bool
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
	cands := b.cands[:0]
	for _, n := range b.Nodes() {
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
		weight := n.Weight()
		cands = append(cands, candidate{
			n:      n,
			free:   !slots || n.slots < n.MaxConcurrent(),
			warm:   req.Model == "" || n.loadedKey(req.Model, req.NumCtx),
			load:   float64(used) / (float64(n.MaxConcurrent()) * weight),
			weight: weight,
		})
	}
	b.cands = cands
	return cands
}

// pickRoundRobin returns a free candidate, chosen by weight among all of
// them.
func pickRoundRobin(cands []candidate) *Node {
	for i := range cands {
		cands[i].tie = cands[i].free
	}
	return pickWeighted(cands)
}

// pickLeastConn returns a free candidate with the fewest requests per
// weighted slot, chosen by weight among those that have as few, as
// nginx's least_conn does (ngx_http_upstream_least_conn_module.c).
func pickLeastConn(cands []candidate) *Node {
	var best *candidate
	for i := range cands {
		c := &cands[i]
		if c.free && (best == nil || c.load < best.load) {
			best = c
		}
	}
	if best == nil {
		return nil
	}
	for i := range cands {
		c := &cands[i]
		c.tie = c.free && c.load == best.load
	}
	return pickWeighted(cands)
}

// pickWeighted returns the node, among the candidates marked tie, that
// comes next in nginx's smooth weighted round robin (ngx_http_upstream_get_peer
// in ngx_http_upstream_round_robin.c), or nil when none is marked. Each
// marked candidate's node adds its weight to its current weight, and the
// node with the highest current weight wins and subtracts the sum of the
// weights added. Over a run of picks among the same nodes each node gets a
// share in proportion to its weight, spread out rather than in bursts.
// Nodes that are not marked keep their current weight, as nginx's peers
// that are down or failed do. The caller holds the balancer's mu, which
// guards the current weights.
func pickWeighted(cands []candidate) *Node {
	var best *Node
	total := 0.0
	for i := range cands {
		c := &cands[i]
		if !c.tie {
			continue
		}
		c.n.currentWeight += c.weight
		total += c.weight
		if best == nil || c.n.currentWeight > best.currentWeight {
			best = c.n
		}
	}
	if best != nil {
		best.currentWeight -= total
	}
	return best
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
	now := b.now()
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
		c.cost = c.delay + svc*b.est.speedFactor(c.n.Name, now)
		if best < 0 || compare(c, &cands[best], req.Model) < 0 {
			best = i
		}
	}
	if cands[best].free {
		markTies(cands, &cands[best], req.Model, math.Inf(1))
		return pickWeighted(cands)
	}
	var fallback *candidate
	for i := range cands {
		c := &cands[i]
		if c.free && waited.Seconds() >= c.delay && (fallback == nil || compare(c, fallback, req.Model) < 0) {
			fallback = c
		}
	}
	if fallback == nil {
		return nil
	}
	markTies(cands, fallback, req.Model, waited.Seconds())
	return pickWeighted(cands)
}

// markTies marks the free candidates with a delay of at most maxDelay
// seconds that compare equal to best. A candidate that compares equal has
// the load of best, which is checked first because it is cheaper.
func markTies(cands []candidate, best *candidate, model string, maxDelay float64) {
	for i := range cands {
		c := &cands[i]
		c.tie = c == best ||
			c.free && c.load == best.load && c.delay <= maxDelay && compare(c, best, model) == 0
	}
}

// compare returns -1 when c comes before o, 1 when o comes before c, and
// 0 when the policy ranks them equal, which leaves the choice to weight
// (see pickWeighted). It orders candidates by cost, then free before busy,
// then by load. When both would have to load the model, the model's
// rendezvous rank by weight comes next (see loadRank), so that one
// model's loads go to one node.
// Costs within costTolerance of each other count as equal, so that noise
// in the measured speeds does not send every request to one node.
func compare(c, o *candidate, model string) int {
	d := c.cost - o.cost
	tolerance := max(costTolerance*max(c.cost, o.cost), minCostDifference)
	switch {
	case d < -tolerance:
		return -1
	case d > tolerance:
		return 1
	case c.free != o.free:
		return ordered(c.free)
	case c.load < o.load:
		return -1
	case c.load > o.load:
		return 1
	}
	if !c.warm && !o.warm {
		if rc, ro := loadRank(model, c), loadRank(model, o); rc != ro {
			return ordered(rc < ro)
		}
	}
	return 0
}

// loadRank ranks c for the first load of model, lowest first, by weighted
// rendezvous hashing: it draws for each node an exponential variable of
// rate weight from the node's rendezvous hash. The lowest draw falls on a
// node with probability weight over the sum of weights. So the models that
// no node has loaded spread over the nodes in proportion to weight, and
// each model still goes to the same node every time. Among nodes of equal
// weight, the lower hash ranks first.
func loadRank(model string, c *candidate) float64 {
	// The top 53 bits give a uniform value in (0, 1).
	u := (float64(Rendezvous(model, c.n.Name)>>11) + 0.5) / (1 << 53)
	return -math.Log1p(-u) / c.weight
}

// ordered returns -1 when first is true and 1 otherwise.
func ordered(first bool) int {
	if first {
		return -1
	}
	return 1
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
