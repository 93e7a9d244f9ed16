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
	// speedMaxAge is how long a node's measured generation speed counts
	// for placement after its last report. A node measured as slower gets
	// fewer first loads, so without a limit one slow measurement (a busy
	// GPU, a short generation) could keep a node without loaded models
	// from every first load, and so from the reports that would correct
	// it. Past the limit the node counts as not measured, which gives it
	// the traffic that measures it again. Five minutes is Ollama's default
	// keep_alive, after which an idle node has unloaded its models.
	speedMaxAge = 5 * time.Minute
)

// estimates are the timings learned from node reports, in seconds. The
// balancer's mu guards them.
type estimates struct {
	load    map[string]float64 // load time by node and model
	loadAny map[string]float64 // load time by model, over all nodes
	service map[string]float64 // service time by model
	tps     map[string]float64 // generated tokens per second by node
	// tpsAt is when each node last reported its speed.
	tpsAt map[string]time.Time
}

func newEstimates() estimates {
	return estimates{load: map[string]float64{}, loadAny: map[string]float64{},
		service: map[string]float64{}, tps: map[string]float64{}, tpsAt: map[string]time.Time{}}
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
// average node, from the token throughput that nodes reported within
// speedMaxAge before now. It is 0.5 for a node twice as fast as the
// average, and 1 while fewer than two nodes have such a measurement. A
// node without one counts as fast as the fastest node, so that it gets the
// traffic that measures it.
func (e *estimates) speedFactor(node string, now time.Time) float64 {
	var sum, fastest float64
	measured := 0
	for n, x := range e.tps {
		if e.speedCurrent(n, now) {
			sum += x
			fastest = max(fastest, x)
			measured++
		}
	}
	if measured < 2 {
		return 1
	}
	v := e.tps[node]
	if v <= 0 || !e.speedCurrent(node, now) {
		v = fastest
	}
	return sum / float64(measured) / v
}

// speedCurrent reports whether node's speed was reported within
// speedMaxAge before now.
func (e *estimates) speedCurrent(node string, now time.Time) bool {
	at, ok := e.tpsAt[node]
	return ok && now.Sub(at) < speedMaxAge
}

// observeSpeed adds a node's reported tokens per second at now. A report
// after speedMaxAge without one replaces the old average instead of
// moving it, since the old value no longer describes the node.
func (e *estimates) observeSpeed(node string, tps float64, now time.Time) {
	if !e.speedCurrent(node, now) {
		delete(e.tps, node)
	}
	ewma(e.tps, node, tps)
	e.tpsAt[node] = now
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
		b.est.observeSpeed(l.Node.Name, float64(evalTokens)/evalTime.Seconds(), b.now())
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
