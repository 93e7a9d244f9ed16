package cache

import (
	"sync"
	"sync/atomic"
)

// purgeEpochs records when each purge that this instance applied began,
// so that a response whose request started before a purge of its model is
// not stored after it. Every purge takes the next value of seq and records
// it for its model, or in all for a purge of every model. A request notes
// seq when it is classified (Plan.epoch). Its response is stored only
// while no purge of its model, and no purge of every model, has a higher
// value. Purges update the record under Cache.purgeMu, so the values of one
// model only grow.
type purgeEpochs struct {
	seq atomic.Uint64
	all atomic.Uint64
	// models maps a normalized model name to the uint64 seq value of its
	// last purge. It grows by one entry per model ever purged.
	models sync.Map
}

// current returns the value that a request starting now notes: one atomic
// load, with no lock and no allocation.
func (e *purgeEpochs) current() uint64 { return e.seq.Load() }

// bump records a purge of model ("" for every model) that begins now. The
// caller holds Cache.purgeMu and empties the tiers only after bump, so that
// a store that checked purgedSince before bump is emptied by the purge.
func (e *purgeEpochs) bump(model string) {
	n := e.seq.Add(1)
	if model == "" {
		e.all.Store(n)
		return
	}
	e.models.Store(model, n)
}

// purgedSince reports whether a purge of model, or of every model, began
// after a request noted epoch.
func (e *purgeEpochs) purgedSince(model string, epoch uint64) bool {
	if e.all.Load() > epoch {
		return true
	}
	v, ok := e.models.Load(model)
	return ok && v.(uint64) > epoch
}
