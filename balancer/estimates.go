package balancer

import "time"

// Defaults used until nodes have reported real timings. They are rough
// estimates: a cold load of a 7-8B model from local disk takes a few
// seconds on a GPU node, and a short chat response takes a couple of
// seconds.
const (
	defaultLoadTime    = 5 * time.Second
	defaultServiceTime = 2 * time.Second
	// ewmaWeight is the weight of a new observation.
	ewmaWeight = 0.2
	// affinityEntries is the maximum number of conversations remembered
	// for affinity.
	affinityEntries = 100_000
)

// estimates are the timings learned from node reports, in seconds. The
// balancer's mu guards them.
type estimates struct {
	load    map[string]float64 // load time by node and model
	loadAny map[string]float64 // load time by model, over all nodes
	service map[string]float64 // service time by model
	tps     map[string]float64 // generated tokens per second by node
}

func newEstimates() estimates {
	return estimates{load: map[string]float64{}, loadAny: map[string]float64{},
		service: map[string]float64{}, tps: map[string]float64{}}
}

func (e *estimates) loadTime(node, model string) float64 {
	if v, ok := e.load[node+"\x00"+model]; ok {
		return v
	}
	if v, ok := e.loadAny[model]; ok {
		return v
	}
	return defaultLoadTime.Seconds()
}

func (e *estimates) serviceTime(model string) float64 {
	if v, ok := e.service[model]; ok {
		return v
	}
	return defaultServiceTime.Seconds()
}

// speedFactor returns how long a generation takes on node relative to the
// average node, from the token throughput that nodes reported. It is 0.5
// for a node twice as fast as the average, and 1 while fewer than two
// nodes have been measured. A node not measured yet counts as fast as the
// fastest one, so that it gets the traffic that measures it.
func (e *estimates) speedFactor(node string) float64 {
	if len(e.tps) < 2 {
		return 1
	}
	var sum, fastest float64
	for _, x := range e.tps {
		sum += x
		fastest = max(fastest, x)
	}
	v, ok := e.tps[node]
	if !ok || v <= 0 {
		v = fastest
	}
	return sum / float64(len(e.tps)) / v
}

func ewma(m map[string]float64, key string, v float64) {
	if old, ok := m[key]; ok {
		m[key] = old + ewmaWeight*(v-old)
		return
	}
	m[key] = v
}

// Observe adds the timings a node reported for the lease's request to the
// estimates. load is Ollama's load_duration, total is the whole request,
// and evalTokens are the tokens generated in evalTime. Load times are
// learned only from cold placements, because a warm request reports a
// load_duration of a few milliseconds. Service times are learned only from
// requests that took a slot.
func (l *Lease) Observe(load, total time.Duration, evalTokens int64, evalTime time.Duration) {
	if l.b == nil || l.req.Model == "" || total <= 0 {
		return
	}
	b := l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if l.Cold && load > 0 {
		ewma(b.est.load, l.Node.Name+"\x00"+l.req.Model, load.Seconds())
		ewma(b.est.loadAny, l.req.Model, load.Seconds())
	}
	if l.req.Slot {
		ewma(b.est.service, l.req.Model, (total - load).Seconds())
	}
	if evalTokens > 0 && evalTime > 0 {
		ewma(b.est.tps, l.Node.Name, float64(evalTokens)/evalTime.Seconds())
	}
}

// affinityTable maps conversations to the node that served their latest
// turn. It keeps at most size entries and then evicts the conversation
// added first, even if it is still active.
type affinityTable struct {
	nodes map[uint64]string
	ring  []uint64
	next  int
	size  int
}

func newAffinityTable(size int) affinityTable {
	return affinityTable{nodes: map[uint64]string{}, ring: make([]uint64, 0, min(size, 1024)),
		size: size}
}

func (t *affinityTable) get(key uint64) (string, bool) {
	n, ok := t.nodes[key]
	return n, ok
}

func (t *affinityTable) put(key uint64, node string) {
	if _, ok := t.nodes[key]; ok {
		t.nodes[key] = node
		return
	}
	if len(t.ring) < t.size {
		t.ring = append(t.ring, key)
	} else {
		delete(t.nodes, t.ring[t.next])
		t.ring[t.next] = key
		t.next = (t.next + 1) % len(t.ring)
	}
	t.nodes[key] = node
}

// NodeTokensPerSecond returns the node's generation speed in tokens per
// second, an exponentially weighted moving average of its reports, or 0
// before the first report.
func (b *Balancer) NodeTokensPerSecond(node string) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.est.tps[node]
}
