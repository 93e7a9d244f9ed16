package ollamasim

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sync"
	"time"
)

// modelEntry is a model present on the node. Entries are never modified after
// they are stored, so readers may keep them without the store's lock.
type modelEntry struct {
	spec       ModelSpec // with defaults applied
	key        string
	modifiedAt time.Time
}

// modelStore holds the models and blobs of the node.
type modelStore struct {
	registry map[string]ModelSpec // keyed by modelKey; nil means any name is pullable

	mu     sync.RWMutex // guards models and blobs
	models map[string]*modelEntry
	blobs  map[string]int64 // size in bytes by digest ("sha256:<hex>")
}

func newModelStore(cfg Config) *modelStore {
	st := &modelStore{
		models: make(map[string]*modelEntry),
		blobs:  make(map[string]int64),
	}
	if cfg.Registry != nil {
		st.registry = make(map[string]ModelSpec, len(cfg.Registry))
		for name, spec := range cfg.Registry {
			spec.Name = name
			st.registry[modelKey(name)] = spec
		}
	}
	now := cfg.Now()
	for _, spec := range cfg.Models {
		st.put(spec, now)
	}
	return st
}

// get returns the model called name, or nil when the node does not have it.
func (st *modelStore) get(name string) *modelEntry {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.models[modelKey(name)]
}

// put stores spec, replacing a model of the same name, and returns the entry.
func (st *modelStore) put(spec ModelSpec, modifiedAt time.Time) *modelEntry {
	spec = spec.withDefaults()
	entry := &modelEntry{spec: spec, key: modelKey(spec.Name), modifiedAt: modifiedAt}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.models[entry.key] = entry
	return entry
}

// remove deletes the model called name and reports whether it was present.
func (st *modelStore) remove(name string) bool {
	key := modelKey(name)
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.models[key]
	delete(st.models, key)
	return ok
}

// list returns the models, most recently modified first as Ollama lists them.
func (st *modelStore) list() []*modelEntry {
	st.mu.RLock()
	entries := make([]*modelEntry, 0, len(st.models))
	for _, e := range st.models {
		entries = append(entries, e)
	}
	st.mu.RUnlock()
	slices.SortFunc(entries, func(a, b *modelEntry) int {
		if c := b.modifiedAt.Compare(a.modifiedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	return entries
}

// pullable returns the spec /api/pull would fetch for name, and false when
// the registry does not have it.
func (st *modelStore) pullable(name string) (ModelSpec, bool) {
	if st.registry == nil {
		return ModelSpec{Name: name}, true
	}
	spec, ok := st.registry[modelKey(name)]
	if ok {
		spec.Name = name
	}
	return spec, ok
}

func (st *modelStore) hasBlob(digest string) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	_, ok := st.blobs[digest]
	return ok
}

func (st *modelStore) blobSize(digest string) (int64, bool) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	size, ok := st.blobs[digest]
	return size, ok
}

func (st *modelStore) putBlob(digest string, size int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.blobs[digest] = size
}

// layerDigest derives the digest of one layer of a model, stable across runs.
func layerDigest(modelDigest, layer string) string {
	sum := sha256.Sum256([]byte(modelDigest + "/" + layer))
	return "sha256:" + hex.EncodeToString(sum[:])
}
