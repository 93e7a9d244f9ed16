// Package metrics owns the Prometheus registry of llmproxy and every metric
// it exports. Other packages receive a *Metrics and only observe; none of
// them registers metrics of its own.
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// OtherModel is the label value that stands for every model outside the
// bounded set returned by a ModelLabeler, so that label values stay bounded
// when clients send arbitrary model names.
const OtherModel = "other"

// Metrics holds every metric of one proxy process. All fields are set by
// New and safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	// Requests and latency.
	Requests        *prometheus.CounterVec   // route, model, node, code
	RequestDuration *prometheus.HistogramVec // route, model
	TimeToFirstTok  *prometheus.HistogramVec // model
	TokensPerSecond *prometheus.GaugeVec     // node, model
	Tokens          *prometheus.CounterVec   // key, model, kind
	StreamRelays    *prometheus.CounterVec   // relay
	WriteTimeouts   prometheus.Counter

	// Nodes.
	NodeUp           *prometheus.GaugeVec   // node
	NodeBreaker      *prometheus.GaugeVec   // node
	NodeInflight     *prometheus.GaugeVec   // node
	NodeLoadedModels *prometheus.GaugeVec   // node
	NodeVRAMBytes    *prometheus.GaugeVec   // node
	NodeFailures     *prometheus.CounterVec // node, reason
	UncountedErrors  *prometheus.CounterVec // node, reason
	EjectionsSkipped *prometheus.CounterVec // node, check
	Retries          *prometheus.CounterVec // node, reason
	ModelLoads       *prometheus.CounterVec // node, model
	PullSkipped      *prometheus.CounterVec // node, reason

	// Queue.
	QueueDepth    *prometheus.GaugeVec     // class
	QueueWait     *prometheus.HistogramVec // class
	QueueRejected *prometheus.CounterVec   // class, reason

	// Limits.
	RateLimited   *prometheus.CounterVec // key, limit
	RedisFallback *prometheus.CounterVec // component
	// RedisUp is set through SetRedisUp, which combines the components.
	RedisUp prometheus.Gauge
	redis   redisComponents

	// Cache.
	CacheRequests  *prometheus.CounterVec // tier, result
	CacheBytes     *prometheus.GaugeVec   // tier
	CacheEvictions prometheus.Counter

	series series
}

// Buckets for request latency in seconds, from a cached response (sub-ms) to
// a long generation with a cold load (minutes).
var latencyBuckets = []float64{
	.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
	1, 2.5, 5, 10, 30, 60, 120, 300,
}

// New creates every metric on a fresh registry, along with the Go runtime
// and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	f := factory{reg: reg}
	return &Metrics{
		Registry: reg,

		Requests: f.counter("llmproxy_requests_total",
			"Requests answered, by route, model, serving node and status code.",
			"route", "model", "node", "code"),
		RequestDuration: f.histogram("llmproxy_request_duration_seconds",
			"Time from request arrival to the end of the response.",
			"route", "model"),
		TimeToFirstTok: f.histogram("llmproxy_time_to_first_token_seconds",
			"Time from request arrival to the first byte of the answer body.",
			"model"),
		TokensPerSecond: f.gauge("llmproxy_tokens_per_second",
			"Generation speed last reported by a node for a model (eval_count/eval_duration).",
			"node", "model"),
		Tokens: f.counter("llmproxy_tokens_total",
			"Tokens by API key, model and kind (prompt or completion), from node reports, or estimated "+
				"for a stream that ends without them: one completion token per chunk and a prompt of a "+
				"quarter of the request body's bytes.",
			"key", "model", "kind"),
		StreamRelays: f.counter("llmproxy_stream_relays_total",
			"Streamed responses by relay: event_loop (epoll, on Linux for HTTP/1.1 clients of "+
				"plain TCP nodes) or goroutine (every other stream).",
			"relay"),
		WriteTimeouts: f.plainCounter("llmproxy_client_write_timeouts_total",
			"Client connections closed because a write timed out: a buffered response not "+
				"read within write_timeout, or a stream that fasthttp writes (HTTP/1.1 without "+
				"the event loop) not read within upstream.idle. The request keeps the status "+
				"that llmproxy_requests_total counted. A stream on the event loop or to an "+
				"HTTP/1.0 client whose client stops reading counts there as status 499 instead."),

		NodeUp: f.gauge("llmproxy_node_up",
			"1 when the node takes new requests (state up in /admin/nodes), 0 when it is "+
				"down, draining, or kept out by its breaker or passive checks, including a "+
				"restricted node that takes only the requests for its models that no up node lists.", "node"),
		NodeBreaker: f.gauge("llmproxy_node_breaker_state",
			"Circuit breaker state of the node: 0 closed, 1 half-open, 2 open.", "node"),
		NodeInflight: f.gauge("llmproxy_node_inflight",
			"Requests the proxy has in flight on the node.", "node"),
		NodeLoadedModels: f.gauge("llmproxy_node_loaded_models",
			"Models the node reports loaded in memory (/api/ps).", "node"),
		NodeVRAMBytes: f.gauge("llmproxy_node_loaded_vram_bytes",
			"GPU memory used by the models loaded on the node (size_vram in /api/ps).", "node"),
		NodeFailures: f.counter("llmproxy_node_failures_total",
			"Failures counted against a node, by reason.", "node", "reason"),
		UncountedErrors: f.counter("llmproxy_uncounted_node_errors_total",
			"Errors of a node that passive checks and its breaker did not count against it, by "+
				"reason: request_error (every node tried returned the same 5xx error, so the "+
				"request caused it), unconfirmed_5xx (a 5xx error of Ollama's that no other node's "+
				"response confirmed or refuted), slow_response (no head of a non-streamed "+
				"response within upstream.first_byte from a node that then passed a probe) and "+
				"node_down (health checks marked the node down while it had the request, "+
				"before its response head).",
			"node", "reason"),
		EjectionsSkipped: f.counter("llmproxy_ejections_skipped_total",
			"Times that passive checks (check=passive) or a circuit breaker (check=breaker) "+
				"would have taken a node out but did not, because health.max_ejection_percent "+
				"nodes were out already or the node was the last usable one of each of its models.",
			"node", "check"),
		Retries: f.counter("llmproxy_retries_total",
			"Requests retried on another node, by the node that failed and the reason.",
			"node", "reason"),
		ModelLoads: f.counter("llmproxy_model_loads_total",
			"Cold model loads caused on a node, seen as a load_duration over 1s or a placement "+
				"on a node without the model loaded.",
			"node", "model"),
		PullSkipped: f.counter("llmproxy_pull_skipped_nodes_total",
			"Nodes that a pull did not reach because they were down or draining at the time, by "+
				"reason: down or draining. Such a node lacks the model until it is pulled again.",
			"node", "reason"),

		QueueDepth: f.gauge("llmproxy_queue_depth",
			"Requests waiting in the proxy's queue, by priority class.", "class"),
		QueueWait: f.histogram("llmproxy_queue_wait_seconds",
			"Time requests waited in the queue before a node took them.", "class"),
		QueueRejected: f.counter("llmproxy_queue_rejected_total",
			"Requests rejected by the queue, by class and reason (full, timeout).",
			"class", "reason"),

		RateLimited: f.counter("llmproxy_ratelimited_total",
			"Requests rejected by a limit, by key name and limit.", "key", "limit"),
		RedisFallback: f.counter("llmproxy_redis_fallback_total",
			"Operations that fell back to local state because Redis failed, by component.",
			"component"),
		RedisUp: f.plainGauge("llmproxy_redis_up",
			"1 when the last Redis call of each component that uses Redis (the rate limiter, the "+
				"cache) succeeded, 0 when one failed. Both also check Redis every "+
				"redis.check_interval (5s by default), so the gauge follows Redis without traffic. "+
				"0 until the first call or check, and without redis.addr."),

		CacheRequests: f.counter("llmproxy_cache_requests_total",
			"Cache lookups by tier (l1, l2) and result (hit, miss, bypass, error).",
			"tier", "result"),
		CacheBytes: f.gauge("llmproxy_cache_bytes",
			"Bytes held by a cache tier.", "tier"),
		CacheEvictions: f.plainCounter("llmproxy_cache_evictions_total",
			"Entries evicted from the in-process cache to stay within its size."),
	}
}

type factory struct{ reg prometheus.Registerer }

func (f factory) counter(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: name, Help: help, Buckets: latencyBuckets,
	}, labels)
	f.reg.MustRegister(h)
	return h
}

func (f factory) plainGauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) plainCounter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

// redisComponents is the Redis state that each component last reported.
type redisComponents struct {
	mu sync.Mutex
	up map[string]bool
}

// The components that use Redis, as SetRedisUp and the component label of
// llmproxy_redis_fallback_total name them.
const (
	RedisRateLimit = "ratelimit"
	RedisCache     = "cache"
)

// SetRedisUp records whether the last Redis call of component (such as
// RedisRateLimit or RedisCache) succeeded, and sets RedisUp to 1 only while
// every component that reported is up. The components run different
// commands, so Redis can take one's and reject the other's, as when an
// ACL forbids the rate limiter's scripts.
func (m *Metrics) SetRedisUp(component string, up bool) {
	m.redis.mu.Lock()
	defer m.redis.mu.Unlock()
	if m.redis.up == nil {
		m.redis.up = map[string]bool{}
	}
	m.redis.up[component] = up
	all := 1.0
	for _, ok := range m.redis.up {
		if !ok {
			all = 0
		}
	}
	m.RedisUp.Set(all)
}

// RedisComponents returns whether Redis was reachable at the last check of
// each component that uses it, by name, or nil when none has checked.
func (m *Metrics) RedisComponents() map[string]bool {
	m.redis.mu.Lock()
	defer m.redis.mu.Unlock()
	if len(m.redis.up) == 0 {
		return nil
	}
	out := make(map[string]bool, len(m.redis.up))
	for name, up := range m.redis.up {
		out[name] = up
	}
	return out
}
