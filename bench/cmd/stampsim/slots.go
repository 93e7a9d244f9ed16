package main

import (
	"slices"
	"sync"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// admission is the decision of slots.admit for a stream.
type admission int

const (
	admitted admission = iota // it has a slot and may start
	queued                    // it waits for a slot of its model
	rejected                  // the queue is full: 503 "server busy"
)

// slots counts the lean streams as ollamasim's scheduler counts requests:
// Parallel slots per model, and one FIFO queue of at most MaxQueue streams
// waiting for a slot. They are apart from ollamasim's own slots.
type slots struct {
	parallel int
	maxQueue int

	mu      sync.Mutex     // guards the fields below
	active  map[string]int // streams with a slot, by model key
	waiting []*stream
}

// newSlots returns the slots of cfg, with ollamasim's defaults for zero
// and negative values.
func newSlots(cfg ollamasim.Config) *slots {
	sl := &slots{
		parallel: cfg.Parallel,
		maxQueue: cfg.MaxQueue,
		active:   make(map[string]int),
	}
	if sl.parallel == 0 {
		sl.parallel = ollamasim.DefaultParallel
	}
	switch {
	case sl.maxQueue == 0:
		sl.maxQueue = ollamasim.DefaultMaxQueue
	case sl.maxQueue < 0:
		sl.maxQueue = 0
	}
	return sl
}

// admit gives st a slot, queues it, or rejects it when the queue is full.
func (sl *slots) admit(st *stream) admission {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.active[st.modelKey] < sl.parallel {
		sl.active[st.modelKey]++
		return admitted
	}
	if len(sl.waiting) < sl.maxQueue {
		sl.waiting = append(sl.waiting, st)
		return queued
	}
	return rejected
}

// release frees a slot of model key and returns the first waiting stream
// of that model, which now has the slot, or nil.
func (sl *slots) release(key string) *stream {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	i := slices.IndexFunc(sl.waiting, func(st *stream) bool { return st.modelKey == key })
	if i < 0 {
		sl.active[key]--
		return nil
	}
	next := sl.waiting[i]
	sl.waiting = slices.Delete(sl.waiting, i, i+1)
	return next
}

// withdraw removes st from the queue and reports whether it was waiting
// there.
func (sl *slots) withdraw(st *stream) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	i := slices.Index(sl.waiting, st)
	if i < 0 {
		return false
	}
	sl.waiting = slices.Delete(sl.waiting, i, i+1)
	return true
}

// counts returns the streams with a slot and the streams waiting for one.
func (sl *slots) counts() (active, waiting int) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for _, n := range sl.active {
		active += n
	}
	return active, len(sl.waiting)
}
