package ollamasim

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// errServerBusy is Ollama's ErrMaxQueue, sent with 503 when the queue is full.
// The double space is Ollama's.
var errServerBusy = errors.New("server busy, please try again.  maximum pending requests exceeded")

// errServerClosed ends requests still waiting when the server closes.
var errServerClosed = errors.New("server shutting down")

// scheduler models Ollama's scheduler: loaded model instances, each with
// Parallel slots, one FIFO queue of requests waiting for a slot or a load,
// LRU eviction past MaxLoaded, and keep-alive expiry.
type scheduler struct {
	parallel  int
	maxQueue  int
	maxLoaded int
	loadTime  time.Duration
	now       func() time.Time
	log       *slog.Logger
	changed   func()        // called after every state change; must not block
	done      chan struct{} // closed by close

	mu        sync.Mutex // guards the fields below and every instance
	instances map[string]*instance
	waiting   []*ticket
	loads     map[string]int64
	uses      uint64 // counts grants and releases, ordering instances by last use
	closed    bool
}

// instance is one loaded (or loading) model.
type instance struct {
	key       string
	name      string // display name, such as "llama3:latest"
	numCtx    int
	sizeBytes int64
	slots     []slot
	active    int           // slots in use
	uses      uint64        // slots taken so far, to find the least recently used slot
	ready     chan struct{} // closed when the load completes
	isReady   bool
	loadTimer *time.Timer
	keepAlive time.Duration // from the last request; forever never expires
	lastUsed  time.Time     // stamped by Config.Now, for expires_at
	useOrder  uint64        // scheduler.uses when last taken or released, for LRU eviction
	expiresAt time.Time
	expiry    *time.Timer
	expiryGen int // invalidates a fired expiry timer that was replaced
}

// slot remembers the tokens it processed last: its prompt cache.
type slot struct {
	busy     bool
	cache    []int
	lastUsed uint64 // value of instance.uses when the slot was last taken
}

// ticket is a request for a slot.
type ticket struct {
	key       string
	name      string
	numCtx    int
	sizeBytes int64
	prompt    []int
	keepAlive time.Duration
	// preload requests only that the model be loaded. It needs no slot when
	// the model is already loaded, as in Ollama, where a preload returns at
	// once even while every slot is busy.
	preload bool
	grant   chan *lease // buffered; receives the lease once granted
}

// lease is a granted slot, or no slot (slot -1) for a preload of a loaded
// model. cached is the number of leading prompt tokens found in the slot's
// cache, which need no evaluation.
type lease struct {
	inst   *instance
	slot   int
	cached int
}

func newScheduler(cfg Config, changed func()) *scheduler {
	return &scheduler{
		parallel:  cfg.Parallel,
		maxQueue:  cfg.MaxQueue,
		maxLoaded: cfg.MaxLoaded,
		loadTime:  cfg.LoadTime,
		now:       cfg.Now,
		log:       cfg.Logger,
		changed:   changed,
		done:      make(chan struct{}),
		instances: make(map[string]*instance),
		loads:     make(map[string]int64),
	}
}

// acquire waits for a slot of the model t names and for the model to be
// loaded. It returns errServerBusy at once when the queue is full, and the
// context's error when the client goes away first.
func (s *scheduler) acquire(ctx context.Context, t *ticket) (*lease, error) {
	t.grant = make(chan *lease, 1)
	if err := s.enqueue(t); err != nil {
		return nil, err
	}

	var l *lease
	select {
	case l = <-t.grant:
	case <-ctx.Done():
		return nil, s.abandon(t, ctx.Err())
	case <-s.done:
		return nil, s.abandon(t, errServerClosed)
	}

	select {
	case <-l.inst.ready:
		return l, nil
	case <-ctx.Done():
		s.release(l, nil)
		return nil, ctx.Err()
	case <-s.done:
		s.release(l, nil)
		return nil, errServerClosed
	}
}

func (s *scheduler) enqueue(t *ticket) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errServerClosed
	}
	defer s.changed()
	s.waiting = append(s.waiting, t)
	s.dispatchLocked()
	if len(t.grant) == 0 && len(s.waiting) > s.maxQueue {
		s.removeWaitingLocked(t)
		return errServerBusy
	}
	return nil
}

// abandon withdraws t after its client went away, giving back a slot that
// was granted in the meantime.
func (s *scheduler) abandon(t *ticket, err error) error {
	s.mu.Lock()
	select {
	case l := <-t.grant:
		s.mu.Unlock()
		s.release(l, nil)
		return err
	default:
	}
	s.removeWaitingLocked(t)
	s.dispatchLocked()
	s.mu.Unlock()
	s.changed()
	return err
}

func (s *scheduler) removeWaitingLocked(t *ticket) {
	if i := slices.Index(s.waiting, t); i >= 0 {
		s.waiting = slices.Delete(s.waiting, i, i+1)
	}
}

// release gives the slot back. A non-nil seq replaces the slot's prompt
// cache: the tokens the slot processed (prompt and generated tokens).
func (s *scheduler) release(l *lease, seq []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := l.inst
	if l.slot >= 0 {
		sl := &inst.slots[l.slot]
		sl.busy = false
		if seq != nil {
			sl.cache = seq
		}
		inst.active--
	}
	inst.lastUsed = s.now()
	s.uses++
	inst.useOrder = s.uses
	if inst.active == 0 && s.instances[inst.key] == inst {
		s.idleLocked(inst)
	}
	s.dispatchLocked()
	s.changed()
}

// dispatchLocked grants slots to waiting tickets in FIFO order. A ticket that
// cannot be served blocks later tickets for the same model, so each model's
// requests keep their order. Tickets for other models and preloads, which
// need no slot, may pass it.
func (s *scheduler) dispatchLocked() {
	if s.closed {
		return
	}
	blocked := make(map[string]bool)
	old := s.waiting
	kept := s.waiting[:0]
	for _, t := range old {
		if (!blocked[t.key] || t.preload) && s.grantLocked(t) {
			continue
		}
		blocked[t.key] = true
		kept = append(kept, t)
	}
	clear(old[len(kept):])
	s.waiting = kept
}

// grantLocked gives t a slot if one is free, loading the model first when it
// is not loaded or was loaded with another num_ctx, and reports whether it
// did.
func (s *scheduler) grantLocked(t *ticket) bool {
	inst := s.instances[t.key]
	if inst != nil && inst.numCtx != t.numCtx {
		// Ollama reloads a model whose runner options differ, once its
		// running requests finish.
		if inst.active > 0 {
			return false
		}
		s.unloadLocked(inst, "num_ctx changed")
		inst = nil
	}

	if inst == nil {
		if !s.makeRoomLocked() {
			return false
		}
		inst = s.loadLocked(t)
	}

	var l *lease
	switch {
	case t.preload && inst.isReady:
		l = &lease{inst: inst, slot: -1}
	case inst.active >= len(inst.slots):
		return false
	default:
		l = inst.take(t.prompt)
	}

	inst.keepAlive = t.keepAlive
	s.uses++
	inst.useOrder = s.uses
	inst.expiryGen++
	if inst.expiry != nil {
		inst.expiry.Stop()
		inst.expiry = nil
	}
	t.grant <- l
	return true
}

// isLoaded reports whether model key is loaded and ready with numCtx.
func (s *scheduler) isLoaded(key string, numCtx int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.instances[key]
	return inst != nil && inst.isReady && inst.numCtx == numCtx
}

// makeRoomLocked evicts the least recently used idle model when MaxLoaded
// models are loaded, and reports whether there is room for one more.
func (s *scheduler) makeRoomLocked() bool {
	if len(s.instances) < s.maxLoaded {
		return true
	}
	var victim *instance
	for _, inst := range s.instances {
		if inst.active > 0 {
			continue
		}
		if victim == nil || inst.useOrder < victim.useOrder {
			victim = inst
		}
	}
	if victim == nil {
		return false
	}
	s.unloadLocked(victim, "evicted")
	return true
}

func (s *scheduler) loadLocked(t *ticket) *instance {
	inst := &instance{
		key:       t.key,
		name:      t.name,
		numCtx:    t.numCtx,
		sizeBytes: t.sizeBytes,
		slots:     make([]slot, s.parallel),
		ready:     make(chan struct{}),
		lastUsed:  s.now(),
	}
	s.instances[t.key] = inst
	s.loads[t.key]++
	s.log.Info("loading model", "model", t.key, "num_ctx", t.numCtx, "load_time", s.loadTime)
	if s.loadTime <= 0 {
		inst.markReady()
	} else {
		inst.loadTimer = time.AfterFunc(s.loadTime, func() { s.finishLoad(inst) })
	}
	return inst
}

func (s *scheduler) finishLoad(inst *instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.instances[inst.key] != inst || inst.isReady {
		return
	}
	inst.markReady()
	s.changed()
}

func (inst *instance) markReady() {
	inst.isReady = true
	close(inst.ready)
}

// take occupies a slot for prompt the way Ollama's runner picks a cache
// slot: a free slot whose whole cache the prompt extends, or else the least
// recently used free slot, seeded with the longest prefix any slot (busy or
// not) shares with the prompt. At least one prompt token is always
// evaluated, as in llama.cpp.
func (inst *instance) take(prompt []int) *lease {
	longest, longestLen := 0, -1
	oldest := -1
	for i, sl := range inst.slots {
		if n := commonPrefix(sl.cache, prompt); n > longestLen {
			longest, longestLen = i, n
		}
		if !sl.busy && (oldest < 0 || sl.lastUsed < inst.slots[oldest].lastUsed) {
			oldest = i
		}
	}

	chosen := oldest
	if sl := inst.slots[longest]; !sl.busy && longestLen == len(sl.cache) {
		chosen = longest
	} else if longest != oldest {
		inst.slots[oldest].cache = slices.Clone(inst.slots[longest].cache[:longestLen])
	}

	inst.uses++
	inst.slots[chosen].busy = true
	inst.slots[chosen].lastUsed = inst.uses
	inst.active++
	return &lease{inst: inst, slot: chosen, cached: min(longestLen, max(len(prompt)-1, 0))}
}

func commonPrefix(a, b []int) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// idleLocked starts the keep-alive of an instance that has just become idle,
// or unloads it at once when its keep-alive is zero.
func (s *scheduler) idleLocked(inst *instance) {
	switch {
	case inst.keepAlive == 0:
		s.unloadLocked(inst, "keep_alive expired")
	case inst.keepAlive >= forever:
		inst.expiresAt = inst.lastUsed.Add(forever)
	default:
		inst.expiresAt = inst.lastUsed.Add(inst.keepAlive)
		inst.expiryGen++
		gen := inst.expiryGen
		inst.expiry = time.AfterFunc(inst.keepAlive, func() { s.expire(inst, gen) })
	}
}

func (s *scheduler) expire(inst *instance, gen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.instances[inst.key] != inst || inst.active > 0 || inst.expiryGen != gen {
		return
	}
	s.unloadLocked(inst, "keep_alive expired")
	s.dispatchLocked()
}

// expireNow sets the keep-alive of model key to zero, as a request with
// keep_alive 0 and no prompt does: the model unloads now if idle, or when
// its running requests finish.
func (s *scheduler) expireNow(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.instances[key]
	if inst == nil {
		return
	}
	inst.keepAlive = 0
	if inst.active == 0 {
		s.unloadLocked(inst, "keep_alive 0")
		s.dispatchLocked()
	}
}

func (s *scheduler) unloadLocked(inst *instance, reason string) {
	delete(s.instances, inst.key)
	if inst.loadTimer != nil {
		inst.loadTimer.Stop()
	}
	if inst.expiry != nil {
		inst.expiry.Stop()
	}
	inst.expiryGen++
	s.log.Info("unloading model", "model", inst.key, "reason", reason)
	s.changed()
}

// close unloads every model and ends every wait with errServerClosed.
func (s *scheduler) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	close(s.done)
	for _, inst := range s.instances {
		s.unloadLocked(inst, "server closed")
	}
}

// loadedModel describes one loaded model for /api/ps and Stats.
type loadedModel struct {
	key       string
	name      string
	numCtx    int
	sizeBytes int64
	expiresAt time.Time
}

// schedulerState is a snapshot of the scheduler for /api/ps and Stats.
type schedulerState struct {
	loaded  []loadedModel // latest expiry first, as /api/ps sorts them
	waiting int
	active  int
	loads   map[string]int64
}

// snapshot returns the loaded models, the queue length, the slots in use and
// the load counts.
func (s *scheduler) snapshot() schedulerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	st := schedulerState{waiting: len(s.waiting), loads: maps.Clone(s.loads)}
	for _, inst := range s.instances {
		st.active += inst.active
		if !inst.isReady {
			continue
		}
		expires := inst.expiresAt
		if inst.active > 0 {
			expires = now.Add(inst.keepAlive)
		}
		st.loaded = append(st.loaded, loadedModel{
			key:       inst.key,
			name:      inst.name,
			numCtx:    inst.numCtx,
			sizeBytes: inst.sizeBytes,
			expiresAt: expires,
		})
	}
	slices.SortFunc(st.loaded, func(a, b loadedModel) int {
		if c := b.expiresAt.Compare(a.expiresAt); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	return st
}
