package balancer

import (
	"maps"
	"math"
	"net/url"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// Model is one model present on a node, as listed by its /api/tags.
type Model struct {
	// Name is the normalized name ("llama3:latest").
	Name string
	// Digest and Size come from the listing.
	Digest string
	Size   int64
	// Raw is the listing entry as the node sent it, kept so that the proxy
	// can merge listings without re-encoding fields it does not parse.
	Raw []byte
}

// Loaded is one model loaded in a node's memory, as listed by its /api/ps
// or assumed after a request for it was placed on the node.
type Loaded struct {
	Name      string
	SizeVRAM  int64
	ExpiresAt time.Time
	// NumCtx is the context size the model was loaded with, 0 when unknown.
	// A request with another num_ctx makes Ollama load the model again.
	NumCtx int
	Raw    []byte
}

// Gate decides whether a node that is up may take new requests. The health
// package implements it with passive failure tracking and a circuit
// breaker. A nil Gate allows every request.
type Gate interface {
	// Usable reports whether the node may be offered new requests now.
	Usable() bool
	// Restricted reports whether a node that is not Usable may still take
	// the requests for models that no usable node lists.
	Restricted() bool
}

// Node is one Ollama server and the proxy's view of its state. The
// exported fields are set at construction and never change. The methods
// are safe for concurrent use.
type Node struct {
	Name string
	URL  *url.URL

	// maxConcurrent and weight (float64 bits) change on a reload, which
	// keeps the node's requests in flight and its state.
	maxConcurrent atomic.Int64
	weight        atomic.Uint64

	// slots is the number of slot leases taken on the node. The
	// balancer's mu guards it.
	slots int
	// currentWeight is the node's current weight in the smooth weighted
	// round robin that breaks ties in placement (see pickWeighted). The
	// balancer's mu guards it.
	currentWeight float64

	up atomic.Bool
	// downMu guards down, which SetUp closes when the node goes down and
	// replaces when it comes back up, and watchers, the head of the list
	// of DownLinks that SetUp notifies when the node goes down.
	downMu   sync.Mutex
	down     chan struct{}
	watchers *DownLink
	draining atomic.Bool
	inflight atomic.Int64
	gate     atomic.Pointer[gateBox]

	// inv is the node's model inventory. Every request reads it, so it
	// is an immutable snapshot that readers load without a lock; writers
	// hold invMu and store a changed copy.
	inv   atomic.Pointer[inventory]
	invMu sync.Mutex

	// infoMu guards version and lastError, which requests do not read.
	infoMu    sync.Mutex
	version   string
	lastError string
}

type gateBox struct{ g Gate }

// inventory is one snapshot of a node's listed and loaded models, keyed
// by wire.ModelKey. It never changes after it is stored.
type inventory struct {
	models map[string]Model
	loaded map[string]Loaded
	// listed and loadedKnown are set once a poll has filled models and
	// loaded. Before that, an empty map means unknown, not empty.
	listed      bool
	loadedKnown bool
	refreshed   time.Time
}

// update stores a copy of the inventory with change applied. The caller
// holds invMu.
func (n *Node) update(change func(*inventory)) {
	next := *n.inv.Load()
	change(&next)
	n.inv.Store(&next)
}

// NewNode returns a node that is up and has an empty inventory until its
// first refresh.
func NewNode(name string, u *url.URL, maxConcurrent int, weight float64) *Node {
	n := &Node{Name: name, URL: u}
	n.SetLimits(maxConcurrent, weight)
	n.inv.Store(&inventory{models: map[string]Model{}, loaded: map[string]Loaded{}})
	n.up.Store(true)
	n.down = make(chan struct{})
	return n
}

// SetLimits sets the node's max_concurrent, at least 1, and its weight,
// 1 when not positive. Requests in flight keep their slots, so lowering
// the limit below them only holds new requests back until enough end.
func (n *Node) SetLimits(maxConcurrent int, weight float64) {
	if maxConcurrent < 1 {
		maxConcurrent = 1
	}
	if weight <= 0 {
		weight = 1
	}
	n.maxConcurrent.Store(int64(maxConcurrent))
	n.weight.Store(math.Float64bits(weight))
}

// MaxConcurrent returns the maximum number of requests the node takes at
// once.
func (n *Node) MaxConcurrent() int { return int(n.maxConcurrent.Load()) }

// Weight returns the node's share of the load relative to other nodes.
func (n *Node) Weight() float64 { return math.Float64frombits(n.weight.Load()) }

// SetGate installs the health gate consulted by Usable.
func (n *Node) SetGate(g Gate) { n.gate.Store(&gateBox{g: g}) }

// Up reports whether health checks consider the node up.
func (n *Node) Up() bool { return n.up.Load() }

// SetUp records the node's health state and returns whether it changed.
// When the node goes down, it also calls the NodeDown method of every
// listener added with WatchDown and removes them all.
func (n *Node) SetUp(up bool) bool {
	n.downMu.Lock()
	defer n.downMu.Unlock()
	if n.up.Swap(up) == up {
		return false
	}
	if up {
		n.down = make(chan struct{})
		return true
	}
	close(n.down)
	for l := n.watchers; l != nil; {
		next := l.next
		listener := l.listener
		*l = DownLink{}
		listener.NodeDown()
		l = next
	}
	n.watchers = nil
	return true
}

// DownListener is an operation on a node that must end when the node goes
// down, such as a request that still waits for the node's response.
type DownListener interface {
	// NodeDown is called once, by SetUp with the node's lock held, so it
	// must return quickly and call no method of the node.
	NodeDown()
}

// DownLink is the entry of one DownListener in a node's list. Its zero
// value is unlinked. Embedding it in the listener lets WatchDown and
// UnwatchDown run without allocating.
type DownLink struct {
	listener   DownListener
	prev, next *DownLink
	linked     bool
}

// WatchDown adds l, through link, to the listeners that SetUp notifies
// when the node goes down, and returns true. When the node is down
// already, it adds nothing and returns false. link must be unlinked.
func (n *Node) WatchDown(link *DownLink, l DownListener) bool {
	n.downMu.Lock()
	defer n.downMu.Unlock()
	if !n.up.Load() {
		return false
	}
	*link = DownLink{listener: l, next: n.watchers, linked: true}
	if n.watchers != nil {
		n.watchers.prev = link
	}
	n.watchers = link
	return true
}

// UnwatchDown removes link from the node's listeners and returns true. It
// returns false when link is not in the list, as after SetUp removed it
// and called its listener's NodeDown. Either way, once it returns, the
// listener is not called through link any more.
func (n *Node) UnwatchDown(link *DownLink) bool {
	n.downMu.Lock()
	defer n.downMu.Unlock()
	if !link.linked {
		return false
	}
	if link.prev != nil {
		link.prev.next = link.next
	} else {
		n.watchers = link.next
	}
	if link.next != nil {
		link.next.prev = link.prev
	}
	*link = DownLink{}
	return true
}

// Down returns a channel that is closed once SetUp marks the node down. It
// is already closed while the node is down, and a later call after the
// node came back up returns a new, open channel.
func (n *Node) Down() <-chan struct{} {
	n.downMu.Lock()
	defer n.downMu.Unlock()
	return n.down
}

// Draining reports whether the node is being drained.
func (n *Node) Draining() bool { return n.draining.Load() }

// SetDraining starts or ends a drain: a draining node takes no new
// requests while those in flight finish.
func (n *Node) SetDraining(d bool) { n.draining.Store(d) }

// Usable reports whether the node may take a new request: up, not
// draining, and allowed by its gate.
func (n *Node) Usable() bool {
	if !n.up.Load() || n.draining.Load() {
		return false
	}
	if b := n.gate.Load(); b != nil && b.g != nil {
		return b.g.Usable()
	}
	return true
}

// Manageable reports whether model management (pull, delete, copy) may
// reach the node: it is up and not draining. Unlike Usable it ignores the
// health gate, because a node that passive checks or its breaker keep
// out, restricted or ejected, still passes its probes and lists models.
func (n *Node) Manageable() bool {
	return n.up.Load() && !n.draining.Load()
}

// Restricted reports whether the node takes only the requests that no
// usable node can take: it is up and not draining, and its gate keeps it out
// restricted (see Gate).
func (n *Node) Restricted() bool {
	if !n.up.Load() || n.draining.Load() {
		return false
	}
	b := n.gate.Load()
	return b != nil && b.g != nil && !b.g.Usable() && b.g.Restricted()
}

// heldOut reports whether only its gate keeps the node out: it is up and
// not draining, but passive checks or its breaker have taken it out,
// restricted or not.
func (n *Node) heldOut() bool {
	if !n.up.Load() || n.draining.Load() {
		return false
	}
	b := n.gate.Load()
	return b != nil && b.g != nil && !b.g.Usable()
}

// Inflight returns the number of requests the proxy has in flight on the
// node.
func (n *Node) Inflight() int64 { return n.inflight.Load() }

// Acquire counts one more request in flight on the node.
func (n *Node) Acquire() { n.inflight.Add(1) }

// Release counts one request fewer in flight.
func (n *Node) Release() { n.inflight.Add(-1) }

// ModelChange is a model that a node lists no more, or lists with another
// digest, compared with the node's previous list.
type ModelChange struct {
	// Name is the normalized name of the model.
	Name string
	// Removed is set when the node no longer lists the model. Otherwise
	// the model's digest changed.
	Removed bool
}

// SetInventory replaces the node's listed and loaded models after a
// successful poll of /api/tags and /api/ps, and records now as the time of
// the refresh. It returns the changes from the list that the previous poll
// and any MarkRemoved since left, sorted by name, and none for the first
// list of the node. A digest change counts only when both lists carry a
// digest.
func (n *Node) SetInventory(models []Model, loaded []Loaded, now time.Time) []ModelChange {
	m, l := modelMap(models), loadedMap(loaded)
	n.invMu.Lock()
	prev := n.inv.Load()
	n.inv.Store(&inventory{models: m, loaded: l, listed: true, loadedKnown: true, refreshed: now})
	n.invMu.Unlock()
	if !prev.listed {
		return nil
	}
	return modelChanges(prev.models, m)
}

// modelChanges returns the models of before that after lacks or lists
// with another digest, sorted by name.
func modelChanges(before, after map[string]Model) []ModelChange {
	var out []ModelChange
	for key, old := range before {
		cur, ok := after[key]
		switch {
		case !ok:
			out = append(out, ModelChange{Name: old.Name, Removed: true})
		case old.Digest != "" && cur.Digest != "" && old.Digest != cur.Digest:
			out = append(out, ModelChange{Name: cur.Name})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func modelMap(models []Model) map[string]Model {
	m := make(map[string]Model, len(models))
	for _, x := range models {
		m[wire.ModelKey(x.Name)] = x
	}
	return m
}

func loadedMap(loaded []Loaded) map[string]Loaded {
	l := make(map[string]Loaded, len(loaded))
	for _, x := range loaded {
		l[wire.ModelKey(x.Name)] = x
	}
	return l
}

// Refreshed returns when the inventory was last replaced.
func (n *Node) Refreshed() time.Time { return n.inv.Load().refreshed }

// SetModels replaces only the listed models, after a poll of /api/tags.
func (n *Node) SetModels(models []Model) {
	m := modelMap(models)
	n.invMu.Lock()
	n.update(func(inv *inventory) {
		inv.models = m
		inv.listed = true
	})
	n.invMu.Unlock()
}

// SetLoaded replaces only the loaded models, after a poll of /api/ps.
func (n *Node) SetLoaded(loaded []Loaded) {
	l := loadedMap(loaded)
	n.invMu.Lock()
	n.update(func(inv *inventory) {
		inv.loaded = l
		inv.loadedKnown = true
	})
	n.invMu.Unlock()
}

// MarkLoaded records model as loaded on the node with numCtx, so that
// follow-up requests prefer the node before the next poll confirms it. A
// numCtx of 0 keeps the context size already known.
func (n *Node) MarkLoaded(model string, numCtx int) {
	key := wire.ModelKey(model)
	// Nearly every request finds the model marked already and copies
	// nothing.
	if n.markedLoaded(key, numCtx) {
		return
	}
	n.invMu.Lock()
	defer n.invMu.Unlock()
	if n.markedLoaded(key, numCtx) {
		return
	}
	n.update(func(inv *inventory) {
		l, ok := inv.loaded[key]
		if !ok {
			// Name the model as the node lists it, or else as the request
			// named it.
			l.Name = wire.NormalizeModel(model)
			if m, listed := inv.models[key]; listed {
				l.Name = m.Name
			}
		}
		if numCtx > 0 {
			l.NumCtx = numCtx
		}
		inv.loaded = maps.Clone(inv.loaded)
		inv.loaded[key] = l
	})
}

func (n *Node) markedLoaded(model string, numCtx int) bool {
	l, ok := n.inv.Load().loaded[model]
	return ok && (numCtx <= 0 || l.NumCtx == numCtx)
}

// MarkUnloaded records that the node has unloaded model.
func (n *Node) MarkUnloaded(model string) {
	model = wire.ModelKey(model)
	n.invMu.Lock()
	defer n.invMu.Unlock()
	if _, ok := n.inv.Load().loaded[model]; !ok {
		return
	}
	n.update(func(inv *inventory) {
		inv.loaded = maps.Clone(inv.loaded)
		delete(inv.loaded, model)
	})
}

// MarkRemoved records that model was deleted from the node: the node no
// longer lists it or has it loaded, so that no request for it goes there
// before the next poll confirms the change.
func (n *Node) MarkRemoved(model string) {
	key := wire.ModelKey(model)
	n.invMu.Lock()
	defer n.invMu.Unlock()
	inv := n.inv.Load()
	_, listed := inv.models[key]
	_, loaded := inv.loaded[key]
	if !listed && !loaded {
		return
	}
	n.update(func(inv *inventory) {
		inv.models = maps.Clone(inv.models)
		delete(inv.models, key)
		inv.loaded = maps.Clone(inv.loaded)
		delete(inv.loaded, key)
	})
}

// HasModel reports whether the node lists model. Names compare as
// wire.ModelKey does, so case and the default tag do not matter.
func (n *Node) HasModel(model string) bool {
	return n.hasKey(wire.ModelKey(model))
}

// hasKey is HasModel for a name that is already a wire.ModelKey.
func (n *Node) hasKey(key string) bool {
	_, ok := n.inv.Load().models[key]
	return ok
}

// ModelsKnown reports whether the node's model list is current: it has
// been polled at least once and the node is up. The list of a node that
// passive checks or its breaker keep out stays known, because the probes
// that keep it up also poll its list, and so does a draining node's. A
// model missing from a list that is not known may still be on the node.
func (n *Node) ModelsKnown() bool {
	return n.inv.Load().listed && n.up.Load()
}

// ModelsListed reports whether a poll has filled the node's model list at
// least once. Unlike ModelsKnown, it stays true while the node is down, and
// HasModel then uses the last list fetched.
func (n *Node) ModelsListed() bool { return n.inv.Load().listed }

// LoadedKnown reports whether the node's loaded models have been polled.
func (n *Node) LoadedKnown() bool { return n.inv.Load().loadedKnown }

// IsLoaded reports whether model is loaded on the node with a context size
// that serves numCtx without a reload. A numCtx of 0, or an unknown loaded
// context size, matches any.
func (n *Node) IsLoaded(model string, numCtx int) bool {
	return n.loadedKey(wire.ModelKey(model), numCtx)
}

// loadedKey is IsLoaded for a name that is already a wire.ModelKey.
func (n *Node) loadedKey(key string, numCtx int) bool {
	l, ok := n.inv.Load().loaded[key]
	if !ok {
		return false
	}
	return numCtx == 0 || l.NumCtx == 0 || l.NumCtx == numCtx
}

// Models returns the node's listed models sorted by name.
func (n *Node) Models() []Model {
	out := slices.Collect(maps.Values(n.inv.Load().models))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// LoadedModels returns the models loaded on the node, sorted by name.
func (n *Node) LoadedModels() []Loaded {
	out := slices.Collect(maps.Values(n.inv.Load().loaded))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetVersion records the Ollama version the node reports.
func (n *Node) SetVersion(v string) {
	n.infoMu.Lock()
	n.version = v
	n.infoMu.Unlock()
}

// Version returns the Ollama version last reported, "" before the first.
func (n *Node) Version() string {
	n.infoMu.Lock()
	defer n.infoMu.Unlock()
	return n.version
}

// SetLastError records the most recent failure seen on the node.
func (n *Node) SetLastError(msg string) {
	n.infoMu.Lock()
	n.lastError = msg
	n.infoMu.Unlock()
}

// LastError returns the most recent failure seen on the node.
func (n *Node) LastError() string {
	n.infoMu.Lock()
	defer n.infoMu.Unlock()
	return n.lastError
}

// NormalizeModel is wire.NormalizeModel, re-exported for callers of this
// package.
func NormalizeModel(name string) string { return wire.NormalizeModel(name) }
