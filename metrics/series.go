package metrics

import (
	"maps"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// children caches the child metrics of vectors by a comparable key. A
// vector's own lookup hashes every label value and takes a read lock that
// all cores contend for, while a hit here is one atomic load and one map
// read. A miss builds the children once under mu and publishes a new copy
// of the map, so the keys must be bounded, as every label here is.
type children[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (c *children[K, V]) get(k K, build func(K) V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var next map[K]V
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
		next = maps.Clone(*m)
	} else {
		next = map[K]V{}
	}
	v := build(k)
	next[k] = v
	c.m.Store(&next)
	return v
}

// drop removes the keys for which match is true.
func (c *children[K, V]) drop(match func(K) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.m.Load()
	if m == nil {
		return
	}
	next := maps.Clone(*m)
	maps.DeleteFunc(next, func(k K, _ V) bool { return match(k) })
	c.m.Store(&next)
}

// RequestSeries are the metrics of one finished request: its count by
// route, model, node and status code, and its duration by route and model.
type RequestSeries struct {
	Requests prometheus.Counter
	Duration prometheus.Observer
}

type requestKey struct {
	route, model, node string
	code               int
}

type modelKey struct{ a, model string }

// TokenCounters are the prompt and completion token counters of one key
// and model.
type TokenCounters struct {
	Prompt, Completion prometheus.Counter
}

// series holds the cached children of the per-request vectors.
type series struct {
	requests children[requestKey, *RequestSeries]
	tokens   children[modelKey, TokenCounters]
	rates    children[modelKey, prometheus.Gauge]
	ttft     children[string, prometheus.Observer]
}

// Request returns the series of a request on route for model, served by
// node with status code.
func (m *Metrics) Request(route, model, node string, code int) *RequestSeries {
	return m.series.requests.get(requestKey{route, model, node, code},
		func(k requestKey) *RequestSeries {
			return &RequestSeries{
				Requests: m.Requests.WithLabelValues(k.route, k.model, k.node, strconv.Itoa(k.code)),
				Duration: m.RequestDuration.WithLabelValues(k.route, k.model),
			}
		})
}

// TokensOf returns the token counters of key (a key's label) and model.
func (m *Metrics) TokensOf(key, model string) TokenCounters {
	return m.series.tokens.get(modelKey{key, model}, func(k modelKey) TokenCounters {
		return TokenCounters{
			Prompt:     m.Tokens.WithLabelValues(k.a, k.model, "prompt"),
			Completion: m.Tokens.WithLabelValues(k.a, k.model, "completion"),
		}
	})
}

// TokenRate returns the generation rate gauge of node and model.
func (m *Metrics) TokenRate(node, model string) prometheus.Gauge {
	return m.series.rates.get(modelKey{node, model}, func(k modelKey) prometheus.Gauge {
		return m.TokensPerSecond.WithLabelValues(k.a, k.model)
	})
}

// TimeToFirstToken returns the time-to-first-token histogram of model.
func (m *Metrics) TimeToFirstToken(model string) prometheus.Observer {
	return m.series.ttft.get(model, func(k string) prometheus.Observer {
		return m.TimeToFirstTok.WithLabelValues(k)
	})
}

// ForgetNode removes the gauges of a node that left the configuration, so
// that dashboards stop showing it as up. Its counters stay, as totals of
// what it served.
func (m *Metrics) ForgetNode(node string) {
	labels := prometheus.Labels{"node": node}
	for _, g := range []*prometheus.GaugeVec{m.NodeUp, m.NodeBreaker, m.NodeInflight,
		m.NodeLoadedModels, m.NodeVRAMBytes, m.TokensPerSecond} {
		g.DeletePartialMatch(labels)
	}
	// A cached gauge would no longer be exported if the node came back.
	m.series.rates.drop(func(k modelKey) bool { return k.a == node })
}
