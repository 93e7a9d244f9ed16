package cache

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// l1Tier is the in-process tier: a ristretto cache bounded in bytes, each
// record costing its size.
type l1Tier struct {
	cache     *ristretto.Cache[string, *record]
	ttl       time.Duration
	bytes     prometheus.Gauge
	evictions prometheus.Counter
	// clearing is set while ristretto's Clear runs. Clear reports every
	// removed record to OnEvict, and those are not evictions.
	clearing atomic.Bool
}

// l1EntryBytesEstimate is an estimate of the typical record size, about a
// short chat response, used to size ristretto's frequency counters.
// ristretto's documentation advises ten counters per record the cache
// contains when full.
const l1EntryBytesEstimate = 2048

// maxL1Counters caps the counters, at about 3 bytes each (ristretto's
// figure), to some 50 MiB whatever l1.max_bytes is.
const maxL1Counters = 1 << 24

func newL1(
	maxBytes int64,
	ttl time.Duration,
	bytes prometheus.Gauge,
	evictions prometheus.Counter,
) (*l1Tier, error) {
	t := &l1Tier{ttl: ttl, bytes: bytes, evictions: evictions}
	counters := max(maxBytes/l1EntryBytesEstimate*10, 1000)
	c, err := ristretto.NewCache(&ristretto.Config[string, *record]{
		NumCounters:        min(counters, maxL1Counters),
		MaxCost:            maxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            t.onEvict,
	})
	if err != nil {
		return nil, fmt.Errorf("create l1 cache: %w", err)
	}
	t.cache = c
	return t, nil
}

// onEvict runs in ristretto's goroutine for records evicted to make room,
// records whose TTL ran out (those carry their expiration), and every
// record removed by Clear.
func (t *l1Tier) onEvict(item *ristretto.Item[*record]) {
	if item.Expiration.IsZero() && !t.clearing.Load() {
		t.evictions.Inc()
	}
	t.updateBytes()
}

func (t *l1Tier) updateBytes() {
	t.bytes.Set(float64(t.cache.MaxCost() - t.cache.RemainingCost()))
}

func (t *l1Tier) get(key string) (*record, bool) {
	return t.cache.Get(key)
}

// set stores the records and waits until ristretto has applied them, so
// that the next get returns them. ristretto may still reject a record that
// is larger than the tier, or that its admission policy values below the
// records it would evict.
func (t *l1Tier) set(recs ...*record) {
	for _, r := range recs {
		t.cache.SetWithTTL(r.key, r, r.cost, t.ttl)
	}
	t.cache.Wait()
	t.updateBytes()
}

// del removes recs and waits until ristretto has applied the removals.
func (t *l1Tier) del(recs []*record) {
	for _, r := range recs {
		t.cache.Del(r.key)
	}
	t.cache.Wait()
	t.updateBytes()
}

// purgeModel removes the records of one model. It visits every record,
// which is fine for an administrative call.
func (t *l1Tier) purgeModel(model string) {
	var keys []string
	t.cache.IterValues(func(r *record) bool {
		if r.model == model {
			keys = append(keys, r.key)
		}
		return false
	})
	for _, k := range keys {
		t.cache.Del(k)
	}
	t.cache.Wait()
	t.updateBytes()
}

// clear removes every record. The caller serializes calls.
func (t *l1Tier) clear() {
	t.clearing.Store(true)
	t.cache.Clear()
	t.clearing.Store(false)
	t.updateBytes()
}

func (t *l1Tier) close() { t.cache.Close() }
