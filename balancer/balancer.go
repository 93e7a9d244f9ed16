// Package balancer owns the set of nodes, what each one holds, and the
// choice of the node that serves a request. It knows nothing of HTTP: the
// proxy asks it for a lease on a node and returns the lease when done.
package balancer

import (
	"context"
	"errors"
	"hash/fnv"
	"sync/atomic"
)

// Placement policies.
const (
	PolicyInferenceAware = "inference_aware"
	PolicyLeastConn      = "least_conn"
	PolicyRoundRobin     = "round_robin"
)

var (
	// ErrModelNotFound means no node lists the requested model.
	ErrModelNotFound = errors.New("model not found")
	// ErrNoNode means nodes list the model but none of them may take the
	// request now (down, draining, breaker open, or all already tried).
	ErrNoNode = errors.New("no usable node")
)

// Request describes what placement needs to know of one request.
type Request struct {
	// Model is the normalised model name; "" for a request that any node
	// can serve.
	Model string
	// NumCtx is options.num_ctx when set: a loaded model with another
	// context size is reloaded by Ollama, so it counts as not loaded.
	NumCtx int
	// Tried lists nodes already tried by this request; they are skipped.
	Tried []*Node
}

// Balancer chooses nodes. It is safe for concurrent use; SetNodes may
// replace the node set while requests run.
type Balancer struct {
	policy string
	nodes  atomic.Pointer[[]*Node]
	rr     atomic.Uint64
}

// New returns a balancer over nodes with the given policy (one of the
// Policy constants; "" selects inference_aware).
func New(policy string, nodes []*Node) *Balancer {
	if policy == "" {
		policy = PolicyInferenceAware
	}
	b := &Balancer{policy: policy}
	b.SetNodes(nodes)
	return b
}

// SetNodes replaces the node set. Leases on removed nodes stay valid until
// released.
func (b *Balancer) SetNodes(nodes []*Node) {
	cp := append([]*Node(nil), nodes...)
	b.nodes.Store(&cp)
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
	for _, n := range b.Nodes() {
		if n.HasModel(model) {
			return true
		}
	}
	return false
}

// Holding returns the usable nodes that hold the model in memory.
func (b *Balancer) Holding(model string) []*Node {
	var out []*Node
	for _, n := range b.Nodes() {
		if n.Usable() && n.IsLoaded(model, 0) {
			out = append(out, n)
		}
	}
	return out
}

// Usable returns the nodes that may take requests now.
func (b *Balancer) Usable() []*Node {
	var out []*Node
	for _, n := range b.Nodes() {
		if n.Usable() {
			out = append(out, n)
		}
	}
	return out
}

// Lease is one request's hold on a node. Release it exactly once; further
// calls do nothing.
type Lease struct {
	Node     *Node
	released atomic.Bool
}

// Release returns the node's slot.
func (l *Lease) Release() {
	if l.released.CompareAndSwap(false, true) {
		l.Node.Release()
	}
}

// Acquire chooses a node for req and counts the request in flight on it.
// It returns ErrModelNotFound when no node lists the model and ErrNoNode
// when none of those that do may take it.
func (b *Balancer) Acquire(ctx context.Context, req Request) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := b.pick(req)
	if err != nil {
		return nil, err
	}
	n.Acquire()
	return &Lease{Node: n}, nil
}

func (b *Balancer) pick(req Request) (*Node, error) {
	known := false
	var best *Node
	var bestScore score
	nodes := b.Nodes()
	// start rotates the order in which equal candidates win.
	start := b.rr.Add(1)
	for i, n := range nodes {
		if req.Model != "" && !n.HasModel(req.Model) {
			continue
		}
		known = true
		if !n.Usable() || tried(req.Tried, n) {
			continue
		}
		s := b.score(n, req, (uint64(i)+start)%uint64(len(nodes)))
		if best == nil || s.less(bestScore) {
			best, bestScore = n, s
		}
	}
	switch {
	case best != nil:
		return best, nil
	case !known:
		return nil, ErrModelNotFound
	default:
		return nil, ErrNoNode
	}
}

// score ranks a candidate; lower is better.
type score struct {
	cold int     // 1 when the model would have to be loaded
	load float64 // in-flight requests per weighted slot
	tie  uint64  // rendezvous hash for a cold placement, else rotation order
}

func (s score) less(o score) bool {
	if s.cold != o.cold {
		return s.cold < o.cold
	}
	if s.load != o.load {
		return s.load < o.load
	}
	return s.tie < o.tie
}

func (b *Balancer) score(n *Node, req Request, rotation uint64) score {
	load := float64(n.Inflight()) / (float64(n.MaxConcurrent) * n.Weight)
	switch b.policy {
	case PolicyRoundRobin:
		return score{tie: rotation}
	case PolicyLeastConn:
		return score{load: load, tie: rotation}
	}
	if req.Model != "" && !n.IsLoaded(req.Model, req.NumCtx) {
		// A cold placement goes where the model's rank is best, so that a
		// model being loaded lands on one node, not on whichever is free.
		return score{cold: 1, load: load, tie: rendezvous(req.Model, n.Name)}
	}
	return score{load: load, tie: rotation}
}

// rendezvous gives each (model, node) pair a stable pseudo-random rank, so
// that equal candidates are broken the same way every time: the requests
// of one model land on one node until load says otherwise. This keeps the
// `ollama run` sequence (show, preload, chat) on one node.
func rendezvous(model, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(model))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return h.Sum64()
}

func tried(list []*Node, n *Node) bool {
	for _, t := range list {
		if t == n {
			return true
		}
	}
	return false
}
