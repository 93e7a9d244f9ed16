// Package statuspage serves the proxy's status page: one self-contained
// HTML page at GET /admin, and the JSON it polls at GET /admin/status.
// The page shows each node's state, circuit breaker, in-flight requests,
// loaded models and generation speed, the queue depth of each priority
// class, the cache hit rate and the most recent request errors.
//
// The package checks no credentials. The proxy serves Page without the
// admin token, because a browser opening the page cannot send one and
// the page contains no data. It serves JSON behind the token, and the
// page sends the token as Authorization: Bearer on every poll.
package statuspage

import "time"

// Snapshot is the document served by JSON: the state of the proxy at one
// moment. Its JSON field names are the contract with the page's script.
type Snapshot struct {
	// Version is the proxy's release, as llmproxy version prints it.
	Version string `json:"version"`
	// UptimeSeconds is the time since the proxy started, in seconds.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Time is when the snapshot was taken.
	Time time.Time `json:"time"`
	// Nodes lists every configured node, in configuration order.
	Nodes []NodeStatus `json:"nodes"`
	// QueueDepth is the number of requests waiting in the proxy's queue,
	// by priority class (priority, standard, batch).
	QueueDepth map[string]int `json:"queue_depth"`
	// Cache is the response cache's lookup counts since the proxy started.
	Cache CacheStats `json:"cache"`
	// RecentErrors lists the latest failed requests, newest first.
	RecentErrors []ErrorRecord `json:"recent_errors"`
	// Redis is the state of the shared Redis, absent when none is
	// configured.
	Redis *RedisStatus `json:"redis,omitempty"`
}

// RedisStatus is whether the shared Redis is reachable, and what works
// otherwise while it is not.
type RedisStatus struct {
	// Up is false while any component that uses Redis cannot reach it.
	Up bool `json:"up"`
	// Degraded lists what works otherwise meanwhile, one sentence per
	// component, and is empty while Redis is up.
	Degraded []string `json:"degraded"`
}

// NodeStatus is the state of one node.
type NodeStatus struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// State is up, down, ejected, restricted or draining, as GET
	// /admin/nodes reports it. Only an up node takes new requests, which
	// llmproxy_node_up reports as 1.
	// An ejected node passes its probes, but its breaker or passive health
	// checks keep it out. A restricted node is kept out the same way, but
	// takes the requests for its models that no up node lists.
	State string `json:"state"`
	// Breaker is the circuit breaker's state: closed, half-open or open,
	// with " (passive out)" appended while passive health checks keep the
	// node out.
	Breaker string `json:"breaker"`
	// Inflight is the number of requests the proxy has running on the node.
	Inflight int64 `json:"inflight"`
	// MaxConcurrent is the node's max_concurrent setting.
	MaxConcurrent int `json:"max_concurrent"`
	// LoadedModels lists the models the node reports in memory (/api/ps).
	LoadedModels []string `json:"loaded_models"`
	// TokensPerSecond is the node's recent generation speed, from the
	// eval_count and eval_duration of its finished generations, or 0 before
	// the first one.
	TokensPerSecond float64 `json:"tokens_per_second"`
	// LastError is the node's latest probe or request error, or empty.
	LastError string `json:"last_error"`
}

// CacheStats counts response cache lookups. Requests that bypass the cache
// count in neither Hits nor Misses.
type CacheStats struct {
	// Hits counts lookups served from either tier.
	Hits uint64 `json:"hits"`
	// Misses counts lookups that found the response in neither tier.
	Misses uint64 `json:"misses"`
	// HitRate is Hits / (Hits + Misses), from 0 to 1, or 0 before the
	// first lookup.
	HitRate float64 `json:"hit_rate"`
}

// NewCacheStats returns the stats for hits and misses, with HitRate set.
func NewCacheStats(hits, misses uint64) CacheStats {
	s := CacheStats{Hits: hits, Misses: misses}
	if total := hits + misses; total > 0 {
		s.HitRate = float64(hits) / float64(total)
	}
	return s
}

// Source produces snapshots. The proxy implements it. Snapshot is called
// once per poll of every open page, from the server's handler goroutine,
// so it must be safe for concurrent use.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Snapshot

// Snapshot returns f().
func (f SourceFunc) Snapshot() Snapshot { return f() }
