// Package balancer owns the set of nodes, the models and slots of each
// one, the queue of requests waiting for a slot, and the choice of the
// node that serves each request. It does not depend on HTTP. The proxy
// acquires a lease on a node and releases it when the request ends.
//
// Inference requests (generation and embeddings) take one of a node's
// max_concurrent slots, so the balancer never places more of them on a
// node than it can run at once. The queue lives here, where it can be
// ordered by priority class, aged and shared fairly between clients. A
// waiting request is placed when a slot frees (late binding), on the node
// where it should finish first.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/wire"
	"github.com/llmproxy/llmproxy/metrics"
)

// Placement policies.
const (
	PolicyInferenceAware = config.PolicyInferenceAware
	PolicyLeastConn      = config.PolicyLeastConn
	PolicyRoundRobin     = config.PolicyRoundRobin
)

var (
	// ErrModelNotFound means no node lists the requested model, and the
	// model list of every node is known.
	ErrModelNotFound = errors.New("model not found")
	// ErrNoNode means nodes list the model but none of them may take the
	// request now (down, draining, breaker open, or all already tried).
	ErrNoNode = errors.New("no usable node")
	// ErrModelsUnknown means no node whose model list is known lists the
	// model, but some nodes' lists are not known (never polled, node down
	// or breaker open), so the model may be on one of them. It wraps
	// ErrNoNode, because the request may succeed once those nodes are
	// back.
	ErrModelsUnknown = fmt.Errorf("%w: model not listed by any node whose model list is known", ErrNoNode)
)

// Request is the part of one request that placement uses.
type Request struct {
	// Model is the model name, or "" for a request that any node can
	// serve. Acquire and HasCandidate compare it as wire.ModelKey does.
	Model string
	// NumCtx is options.num_ctx, or 0 when unset. Ollama reloads a model
	// that is loaded with another context size, so such a model counts as
	// not loaded.
	NumCtx int
	// Tried lists the nodes this request has already tried. Placement
	// skips them.
	Tried []*Node
	// Warm limits placement to nodes that have the model loaded with a
	// fitting context size, or whose loaded models have not been polled.
	// A retry after a node timed out loading the model sets it, so that
	// the retry does not start another cold load.
	Warm bool
	// Slot marks an inference request, which takes one of the node's
	// slots and may wait in the queue for one.
	Slot bool
	// Class is the priority class; "" means standard.
	Class string
	// Client identifies the client for fair sharing within a class. It is
	// the API key name, or the client address.
	Client string
	// Affinity identifies a conversation, or is 0 for none. Each turn goes
	// to the node that served the previous one, where Ollama can reuse the
	// prompt cache, while that node is not overloaded.
	Affinity uint64
}

// Settings are the scheduling settings, taken from the balancer and queue
// sections of the configuration.
type Settings struct {
	// Policy is the placement policy. "" means PolicyInferenceAware.
	Policy string
	// AffinityLoadFactor bounds the load of a conversation's node relative
	// to the average load. Zero or less means 1.25.
	AffinityLoadFactor float64
	// Aging is the waiting time that raises a request one priority class.
	// Zero disables aging.
	Aging time.Duration
	// Classes maps each priority class to its queue limits.
	Classes map[string]config.QueueClass
	// Clock returns the time used for waiting and aging, and nil means
	// time.Now. Tests set it to order waiters deterministically.
	Clock func() time.Time
}

// SettingsFrom extracts the scheduling settings of cfg.
func SettingsFrom(cfg *config.Config) Settings {
	return Settings{
		Policy:             cfg.Balancer.Policy,
		AffinityLoadFactor: cfg.Balancer.AffinityLoadFactor,
		Aging:              cfg.Queue.Aging,
		Classes:            cfg.Queue.Classes,
	}
}

func (s Settings) classLimit(class string) config.QueueClass {
	return s.Classes[class]
}

// Balancer chooses nodes and owns the queue of waiting requests. It is
// safe for concurrent use, and SetNodes and SetSettings may change it while
// requests run.
type Balancer struct {
	nodes atomic.Pointer[[]*Node]
	m     *metrics.Metrics
	clock atomic.Pointer[func() time.Time]
	// waits holds the queue wait histogram of each class, looked up once.
	// It does not change after New.
	waits map[string]prometheus.Observer

	// mu guards every field below and the slot counts of the nodes.
	mu       sync.Mutex
	settings Settings
	waiting  []*waiter
	depth    map[string]int
	vclock   map[string]uint64
	lastTag  map[string]map[string]uint64
	est      estimates
	affinity affinityTable
	// cands is candidatesLocked's buffer, reused by each placement.
	cands []candidate
}

// New returns a balancer over nodes. m may be nil.
func New(s Settings, nodes []*Node, m *metrics.Metrics) *Balancer {
	b := &Balancer{
		m:        m,
		depth:    map[string]int{},
		vclock:   map[string]uint64{},
		lastTag:  map[string]map[string]uint64{},
		est:      newEstimates(),
		affinity: newAffinityTable(affinityEntries),
	}
	b.SetSettings(s)
	b.SetNodes(nodes)
	if m != nil {
		b.waits = make(map[string]prometheus.Observer, len(config.Classes))
		for _, c := range config.Classes {
			m.QueueDepth.WithLabelValues(c).Set(0)
			b.waits[c] = m.QueueWait.WithLabelValues(c)
		}
	}
	return b
}

// now returns the time from the settings' clock, or time.Now when none is
// set. The clock is an atomic pointer, so now needs no lock.
func (b *Balancer) now() time.Time {
	if c := b.clock.Load(); c != nil {
		return (*c)()
	}
	return time.Now()
}

// SetSettings replaces the scheduling settings for new decisions. A nil
// Clock keeps the clock already set.
func (b *Balancer) SetSettings(s Settings) {
	if s.Policy == "" {
		s.Policy = PolicyInferenceAware
	}
	if s.AffinityLoadFactor <= 0 {
		s.AffinityLoadFactor = 1.25
	}
	if s.Clock != nil {
		b.clock.Store(&s.Clock)
	}
	b.mu.Lock()
	b.settings = s
	b.mu.Unlock()
}

// SetNodes replaces the node set and places waiting requests on new
// nodes. Waiting requests for a model that no node lists any more fail
// with ErrModelNotFound. Leases on removed nodes stay valid until
// released. The weighted round robin starts afresh over the new set.
func (b *Balancer) SetNodes(nodes []*Node) {
	cp := append([]*Node(nil), nodes...)
	b.mu.Lock()
	b.nodes.Store(&cp)
	for _, n := range cp {
		n.currentWeight = 0
	}
	b.failUnservableLocked()
	b.mu.Unlock()
	b.Dispatch()
}

// Dispatch places waiting requests on free slots. Call it when a node
// becomes usable, so that requests waiting for it do not wait for the
// next slot to free elsewhere.
func (b *Balancer) Dispatch() {
	b.mu.Lock()
	b.dispatchLocked()
	b.mu.Unlock()
}

// Nodes returns the current node set in configuration order.
func (b *Balancer) Nodes() []*Node { return *b.nodes.Load() }

// Node returns the node with the given name, or nil.
func (b *Balancer) Node(name string) *Node {
	for _, n := range b.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// HasModel reports whether any node, usable or not, lists the model.
func (b *Balancer) HasModel(model string) bool {
	key := wire.ModelKey(model)
	for _, n := range b.Nodes() {
		if n.hasKey(key) {
			return true
		}
	}
	return false
}

// ModelsKnown reports whether the model list of every node is known (see
// Node.ModelsKnown). Only then does a model that no node lists count as
// missing.
func (b *Balancer) ModelsKnown() bool {
	for _, n := range b.Nodes() {
		if !n.ModelsKnown() {
			return false
		}
	}
	return true
}

// Holding returns the usable nodes that have the model loaded.
func (b *Balancer) Holding(model string) []*Node {
	var out []*Node
	key := wire.ModelKey(model)
	for _, n := range b.Nodes() {
		if n.loadedKey(key, 0) && b.usableFor(n, key, nil) {
			out = append(out, n)
		}
	}
	return out
}

// Listing returns the usable nodes that list the model.
func (b *Balancer) Listing(model string) []*Node {
	var out []*Node
	key := wire.ModelKey(model)
	for _, n := range b.Nodes() {
		if n.hasKey(key) && b.usableFor(n, key, nil) {
			out = append(out, n)
		}
	}
	return out
}

// Usable returns the nodes that may take requests now, without the
// restricted ones.
func (b *Balancer) Usable() []*Node {
	var out []*Node
	for _, n := range b.Nodes() {
		if n.Usable() {
			out = append(out, n)
		}
	}
	return out
}

// Manageable returns the nodes that model management may reach now (see
// Node.Manageable), restricted and ejected ones included.
func (b *Balancer) Manageable() []*Node {
	var out []*Node
	for _, n := range b.Nodes() {
		if n.Manageable() {
			out = append(out, n)
		}
	}
	return out
}

// Serving returns the nodes that may take requests now: the usable nodes,
// the restricted ones, and an ejected node that placement offers for one
// of its models, because no usable node lists that model.
func (b *Balancer) Serving() []*Node {
	var out []*Node
	for _, n := range b.Nodes() {
		if n.Usable() || n.Restricted() || b.offeredHeldOut(n) {
			out = append(out, n)
		}
	}
	return out
}

// offeredHeldOut reports whether n is held out by its gate and placement
// still offers it for some request (see usableFor).
func (b *Balancer) offeredHeldOut(n *Node) bool {
	if !n.heldOut() {
		return false
	}
	models := n.Models()
	if len(models) == 0 {
		return b.usableFor(n, "", nil)
	}
	for _, m := range models {
		if b.usableFor(n, wire.ModelKey(m.Name), nil) {
			return true
		}
	}
	return false
}

// usableFor reports whether n may take a request for the model key, a
// wire.ModelKey, or "" for a request that any node can serve, which has
// tried the nodes in tried. A usable node may take every request. A node
// that passive checks or its breaker keep out (restricted or ejected) may
// take a request only when every other usable node that lists the model
// is in tried. A failing node serves better than none, also when the
// model's other nodes went down or failed the request after it was taken
// out. usableFor does not check that n lists the model.
func (b *Balancer) usableFor(n *Node, key string, triedNodes []*Node) bool {
	if n.Usable() {
		return true
	}
	if !n.heldOut() {
		return false
	}
	for _, o := range b.Nodes() {
		if o != n && o.Usable() && !tried(triedNodes, o) && (key == "" || o.hasKey(key)) {
			return false
		}
	}
	return true
}

// Lease is one request's claim on a node. Call Release when the request
// ends. Calls after the first do nothing.
type Lease struct {
	Node *Node
	// Cold is set when the model was not loaded on the node when the node
	// was chosen.
	Cold     bool
	b        *Balancer
	req      Request
	start    time.Time
	released atomic.Bool
}

// NewLease returns a lease on n taken outside placement, for requests
// that must reach one given node. It counts the request in flight.
func NewLease(n *Node) *Lease {
	n.Acquire()
	return &Lease{Node: n}
}

// Release frees the node's slot, if the request took one, and places
// waiting requests on free slots.
func (l *Lease) Release() {
	if !l.released.CompareAndSwap(false, true) {
		return
	}
	if l.b == nil || !l.req.Slot {
		l.Node.Release()
		return
	}
	b := l.b
	b.mu.Lock()
	b.freeSlotLocked(l.Node, l.req)
	b.dispatchLocked()
	b.mu.Unlock()
}

// Acquire chooses a node for req and counts the request on it. An
// inference request (req.Slot) waits in the queue while no node that
// should serve it has a free slot, until ctx ends or its class's max_wait
// passes. It returns the errors of checkCandidates when no node may take
// it, ErrQueueFull or ErrQueueTimeout when the queue rejects it, or the
// context's error.
func (b *Balancer) Acquire(ctx context.Context, req Request) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.Class == "" {
		req.Class = config.ClassStandard
	}
	req.Model = wire.ModelKey(req.Model)
	if !req.Slot {
		n, err := b.pickNow(req)
		if err != nil {
			return nil, err
		}
		n.Acquire()
		return &Lease{Node: n, b: b, req: req, start: b.now()}, nil
	}
	b.mu.Lock()
	if err := b.checkCandidates(req); err != nil {
		b.mu.Unlock()
		return nil, err
	}
	now := b.now()
	if n := b.placeLocked(req, 0); n != nil {
		cold := b.takeSlotLocked(n, req)
		b.observeWait(req.Class, 0)
		b.mu.Unlock()
		return &Lease{Node: n, Cold: cold, b: b, req: req, start: now}, nil
	}
	w := &waiter{req: req, rank: max(config.ClassRank(req.Class), 0), arrived: now,
		ready: make(chan *Node, 1)}
	if err := b.enqueueLocked(w); err != nil {
		b.mu.Unlock()
		if b.m != nil {
			b.m.QueueRejected.WithLabelValues(req.Class, "full").Inc()
		}
		return nil, err
	}
	b.mu.Unlock()
	n, err := b.wait(ctx, w)
	if err != nil {
		return nil, err
	}
	return &Lease{Node: n, Cold: w.cold, b: b, req: req, start: b.now()}, nil
}

// HasCandidate reports whether req could be placed now or wait for a
// slot: a usable node that it has not tried lists its model.
func (b *Balancer) HasCandidate(req Request) bool {
	req.Model = wire.ModelKey(req.Model)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.checkCandidates(req) == nil
}

// checkCandidates returns nil when the request can be placed now or wait
// for a slot. Otherwise it returns ErrNoNode when some node lists the
// model, ErrModelsUnknown when none does but some nodes' lists are not
// known, and ErrModelNotFound when every list is known and none has it.
func (b *Balancer) checkCandidates(req Request) error {
	listed, unknown := false, false
	for _, n := range b.Nodes() {
		if req.Model != "" && !n.hasKey(req.Model) {
			unknown = unknown || !n.ModelsKnown()
			continue
		}
		listed = true
		if !tried(req.Tried, n) && (!req.Warm || warmFor(n, req)) && b.usableFor(n, req.Model, req.Tried) {
			return nil
		}
	}
	switch {
	case listed:
		return ErrNoNode
	case unknown:
		return ErrModelsUnknown
	}
	return ErrModelNotFound
}

// warmFor reports whether n may serve req without a cold load: the node's
// inventory shows the model loaded with a fitting context size, or the
// node's loaded models have not been polled.
func warmFor(n *Node, req Request) bool {
	return req.Model == "" || !n.LoadedKnown() || n.loadedKey(req.Model, req.NumCtx)
}

// pickNow chooses a node for a request that takes no slot, such as
// /api/show. It picks the node that a generation of the same model would
// go to, so that the `ollama run` sequence (show, preload, chat) stays on
// one node.
func (b *Balancer) pickNow(req Request) (*Node, error) {
	if err := b.checkCandidates(req); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := b.bestLocked(req, 0, false); n != nil {
		return n, nil
	}
	return nil, ErrNoNode
}

// takeSlotLocked takes a slot on n for req and reports whether the model
// had to be loaded there. A cold placement marks the model loaded at
// once, so that the next request for it waits for this load instead of
// starting another one on a second node. It also records n as the node of
// req's conversation.
func (b *Balancer) takeSlotLocked(n *Node, req Request) (cold bool) {
	n.slots++
	n.Acquire()
	if req.Model != "" && !n.loadedKey(req.Model, req.NumCtx) {
		cold = true
		n.MarkLoaded(req.Model, req.NumCtx)
		if b.m != nil {
			b.m.ModelLoads.WithLabelValues(n.Name, req.Model).Inc()
		}
	}
	if req.Affinity != 0 {
		b.affinity.put(req.Affinity, n.Name)
	}
	return cold
}

func (b *Balancer) freeSlotLocked(n *Node, req Request) {
	n.slots--
	n.Release()
}

// Rendezvous returns a stable pseudo-random rank for a key, such as a
// model or a client address, and a node. The ranks of one key over the
// nodes are independent of each other, so over many keys each node ranks
// highest equally often. Placement ranks the nodes that would have to load
// a model by it (see loadRank), so the requests of one model go to one
// node until the loads differ. This keeps the `ollama run` sequence
// (show, preload, chat) on one node.
func Rendezvous(key, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return mix64(h.Sum64())
}

// mix64 is the finalizer of MurmurHash3 (fmix64). FNV-1a leaves the high
// bits of two keys that differ in their last bytes nearly equal, as node
// names such as gpu1 and gpu2 do, so the ranks of such nodes would move
// together. The finalizer makes every output bit depend on every input
// bit.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func tried(list []*Node, n *Node) bool {
	for _, t := range list {
		if t == n {
			return true
		}
	}
	return false
}
