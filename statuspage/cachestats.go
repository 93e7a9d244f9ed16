package statuspage

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// CacheStatsFrom reads the cache's lookup counts from requests, the
// llmproxy_cache_requests_total counter vector (metrics.Metrics.
// CacheRequests), labelled by tier (l1, l2) and result (hit, miss, bypass,
// error). Every lookup counts one l1 hit or one l1 miss. An l1 miss that
// consults L2 then counts one l2 result. So lookups are the l1 hits and
// misses, hits are the l1 and l2 hits, and misses are the difference.
func CacheStatsFrom(requests *prometheus.CounterVec) CacheStats {
	counts := counterValues(requests)
	l1Hits := counts[tierResult{"l1", "hit"}]
	lookups := l1Hits + counts[tierResult{"l1", "miss"}]
	hits := l1Hits + counts[tierResult{"l2", "hit"}]
	// The series are read one after another while lookups go on, so an l2
	// hit may be counted whose l1 miss was read before it happened.
	hits = min(hits, lookups)
	return NewCacheStats(uint64(hits), uint64(lookups-hits))
}

// tierResult is the label pair of one llmproxy_cache_requests_total series.
type tierResult struct{ tier, result string }

// counterValues returns the value of every series of vec by its labels.
// Collect creates no series, so a tier that never counted (l2 without
// Redis) stays absent from /metrics.
func counterValues(vec *prometheus.CounterVec) map[tierResult]float64 {
	ch := make(chan prometheus.Metric)
	go func() {
		vec.Collect(ch)
		close(ch)
	}()
	out := map[tierResult]float64{}
	for m := range ch {
		var series dto.Metric
		if err := m.Write(&series); err != nil || series.Counter == nil {
			continue
		}
		var key tierResult
		for _, label := range series.Label {
			switch label.GetName() {
			case "tier":
				key.tier = label.GetValue()
			case "result":
				key.result = label.GetValue()
			}
		}
		out[key] += series.Counter.GetValue()
	}
	return out
}
