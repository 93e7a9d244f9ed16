package statuspage

import (
	"testing"

	"github.com/llmproxy/llmproxy/metrics"
)

func TestCacheStatsFromCounters(t *testing.T) {
	m := metrics.New()
	add := func(tier, result string, n float64) {
		m.CacheRequests.WithLabelValues(tier, result).Add(n)
	}
	add("l1", "hit", 6)
	add("l1", "miss", 4)
	add("l2", "hit", 2)
	add("l2", "miss", 1)
	add("l2", "error", 1)
	add("l1", "bypass", 9)

	got := CacheStatsFrom(m.CacheRequests)
	want := NewCacheStats(8, 2)
	if got != want {
		t.Errorf("CacheStatsFrom = %+v, want %+v", got, want)
	}
}

func TestCacheStatsFromNothing(t *testing.T) {
	m := metrics.New()
	if got := CacheStatsFrom(m.CacheRequests); got != (CacheStats{}) {
		t.Errorf("CacheStatsFrom = %+v, want zero", got)
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "llmproxy_cache_requests_total" {
			t.Errorf("reading the stats created %d series", len(f.GetMetric()))
		}
	}
}

// A reading taken between an l1 miss and its l2 hit must not count more
// hits than lookups.
func TestCacheStatsFromClampsHits(t *testing.T) {
	m := metrics.New()
	m.CacheRequests.WithLabelValues("l1", "miss").Add(1)
	m.CacheRequests.WithLabelValues("l2", "hit").Add(2)
	if got, want := CacheStatsFrom(m.CacheRequests), NewCacheStats(1, 0); got != want {
		t.Errorf("CacheStatsFrom = %+v, want %+v", got, want)
	}
}
