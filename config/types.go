package config

import (
	"crypto/sha256"
	"time"
)

// Config is the whole llmproxy configuration. Load fills it from defaults,
// then YAML, then the LLMPROXY_* environment variables, and validates it.
// The defaults below are the values of Default.
type Config struct {
	// Listen is the address clients connect to. Default 127.0.0.1:11434,
	// Ollama's own address, so that clients need no change.
	Listen string `yaml:"listen"`
	// ShutdownTimeout bounds how long in-flight requests and streams may run
	// after SIGTERM or SIGINT before they are cancelled. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxBodyBytes is the largest request body accepted; larger bodies get
	// 413. Default 64 MiB, room for several base64 images.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxHeaderBytes is the largest request head (request line and
	// headers) accepted; a larger one gets 431. It is also the read buffer
	// of each client connection, so it costs that much memory per
	// connection. Default 8 KiB, read at start only.
	MaxHeaderBytes int64 `yaml:"max_header_bytes"`
	// ReadTimeout bounds the time a client takes to send a request, head
	// and body: on a new connection from the accept, on a kept-alive one
	// from the request's first byte. A slower request gets 408. Default
	// 5m, room for large images on slow links. Read at start only.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds the time a client takes to read a whole
	// non-streamed response, from when the proxy starts to send it. A
	// slower client has its connection closed. Streamed responses are not
	// bounded by it. Default 5m.
	WriteTimeout time.Duration `yaml:"write_timeout"`

	// Nodes lists the Ollama servers. At least one is required.
	Nodes     []Node    `yaml:"nodes"`
	Upstream  Upstream  `yaml:"upstream"`
	Discovery Discovery `yaml:"discovery"`
	CORS      CORS      `yaml:"cors"`
	Health    Health    `yaml:"health"`
	Breaker   Breaker   `yaml:"breaker"`
	Retry     Retry     `yaml:"retry"`
	Models    Models    `yaml:"models"`
	Balancer  Balancer  `yaml:"balancer"`
	Queue     Queue     `yaml:"queue"`
	Auth      Auth      `yaml:"auth"`
	RateLimit RateLimit `yaml:"rate_limit"`
	Redis     Redis     `yaml:"redis"`
	Cache     Cache     `yaml:"cache"`
	Log       Log       `yaml:"log"`
	Admin     Admin     `yaml:"admin"`
}

// Node is one Ollama server behind the proxy.
type Node struct {
	// Name identifies the node in logs, metrics and admin routes. Default:
	// the host:port of URL. Names are unique.
	Name string `yaml:"name"`
	// URL is the node's base URL, http:// or https://, without a path,
	// query or fragment. Load removes a trailing slash.
	URL string `yaml:"url"`
	// MaxConcurrent is the number of requests the node runs at once, its
	// OLLAMA_NUM_PARALLEL. Default 4; the proxy queues the rest itself.
	MaxConcurrent int `yaml:"max_concurrent"`
	// Weight scales the node's share of traffic among equals. It must be
	// positive. Default 1.
	Weight float64 `yaml:"weight"`
}

// Upstream holds the timeouts of requests to nodes.
type Upstream struct {
	// Connect bounds dialing a node. Default 3s.
	Connect time.Duration `yaml:"connect"`
	// FirstByte bounds the time from the start of sending a request to its
	// response headers, which covers a cold model load and the upload of a
	// body over 16 KiB. Ollama sends the headers of a non-streamed response
	// only when generation ends, so for one it bounds the whole
	// generation. Default 5m.
	FirstByte time.Duration `yaml:"first_byte"`
	// Idle bounds the silence between two chunks of a streamed response,
	// and the time a client of a stream may take no bytes. Default 2m.
	Idle time.Duration `yaml:"idle"`
	// Total bounds a whole request, 0 for no limit. Default 0.
	Total time.Duration `yaml:"total"`
}

// Discovery sets how often each node's model inventory is polled.
type Discovery struct {
	// Interval between polls of /api/tags and /api/ps. Default 10s. The
	// poll runs at a health probe, so it is never more frequent than
	// Health.Interval.
	Interval time.Duration `yaml:"interval"`
}

// CORS sets which browser origins may call the proxy.
type CORS struct {
	// AllowedOrigins lists origins answered with CORS headers, each
	// scheme://host[:port], or "*" for any. Default: none, so browsers on
	// other origins are rejected as Ollama rejects them.
	AllowedOrigins []string `yaml:"allowed_origins"`
}

// Health configures active probes and passive failure tracking.
type Health struct {
	// Interval between probes of one node. Default 5s.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one probe. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// UnhealthyThreshold is the consecutive failed probes that take a node
	// down. Default 3.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
	// HealthyThreshold is the consecutive good probes that bring a node back
	// up. Default 2.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// MaxFails failures on real traffic within FailTimeout take a node out
	// for FailTimeout. Default 3; 0 turns passive checks off.
	MaxFails int `yaml:"max_fails"`
	// FailTimeout is both the window that counts failures and how long a
	// node stays out after MaxFails. Default 30s.
	FailTimeout time.Duration `yaml:"fail_timeout"`
	// MaxEjectionPercent caps the nodes that passive checks and open
	// circuit breakers keep out at once, in percent of all nodes, rounded
	// down but at least one node. A node that is the last usable node of
	// some of its models is restricted to those models instead, and counts
	// as out. Active probes are not capped. 0 lets neither take any node
	// out. From 0 to 100, default 50.
	MaxEjectionPercent int `yaml:"max_ejection_percent"`
}

// Breaker configures the circuit breaker of each node.
type Breaker struct {
	// ConsecutiveFailures is the run of failures that opens the breaker.
	// Default 5.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures"`
	// FailureRatio, above 0 and at most 1, opens the breaker when at least
	// MinRequests were counted in the current Interval. Default 0.5.
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests before FailureRatio applies. Default 10.
	MinRequests uint32 `yaml:"min_requests"`
	// Interval is the closed-state counting window. Default 60s.
	Interval time.Duration `yaml:"interval"`
	// OpenTimeout is how long the breaker stays open before it lets probe
	// requests through. Default 15s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// HalfOpenRequests is how many probe requests a half-open breaker lets
	// through. Default 2.
	HalfOpenRequests uint32 `yaml:"half_open_requests"`
}

// Retry configures failover before the first byte.
type Retry struct {
	// Attempts is the total tries of one request, the first included.
	// Default 3.
	Attempts int `yaml:"attempts"`
	// Backoff is the base wait before the second and later retries, with
	// full jitter, doubled for each one. The first retry goes to another
	// node at once. Default 50ms.
	Backoff time.Duration `yaml:"backoff"`
	// MaxBackoff caps the wait between tries. Default 1s.
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// Models lists models kept present on every node.
type Models struct {
	// Ensure lists models pulled onto any node that lacks them. Default:
	// none.
	Ensure []string `yaml:"ensure"`
}

// Balancer selects the placement policy.
type Balancer struct {
	// Policy is inference_aware (default), least_conn or round_robin.
	Policy string `yaml:"policy"`
	// AffinityLoadFactor bounds prefix affinity: a conversation stays on its
	// node while that node's load is below this factor times the average.
	// At least 1. Default 1.25.
	AffinityLoadFactor float64 `yaml:"affinity_load_factor"`
}

// Queue configures the request queue held by the proxy.
type Queue struct {
	// Aging is the waiting time that raises a request by one class rank,
	// and 0 turns aging off. Default 10s.
	Aging time.Duration `yaml:"aging"`
	// Classes holds the limits of the priority, standard and batch classes,
	// keyed by class name. A file may set any subset, and the other classes
	// keep their defaults.
	Classes map[string]QueueClass `yaml:"classes"`
}

// QueueClass is the backpressure limit of one priority class.
type QueueClass struct {
	// MaxLength is the maximum number of requests waiting in the class,
	// and 0 leaves the class unbounded. Default 1000.
	MaxLength int `yaml:"max_length"`
	// MaxWait is the maximum time a request waits before 503. It must be
	// positive. Default 5m for priority and standard, 30m for batch.
	MaxWait time.Duration `yaml:"max_wait"`
}

// Auth configures API keys.
type Auth struct {
	// Required rejects requests without a known key with 401. Default false.
	Required bool `yaml:"required"`
	// UnknownKeys decides, while Required is false, what happens to a
	// request whose key matches none of Keys: UnknownKeysAnonymous serves
	// it as a request without a key, UnknownKeysReject rejects it with
	// 401. Default UnknownKeysAnonymous.
	UnknownKeys string `yaml:"unknown_keys"`
	// Keys lists the accepted keys.
	Keys []Key `yaml:"keys"`
}

// Key is one API key with its limits. Zero limits mean unlimited.
type Key struct {
	// Name identifies the key in logs, metrics and usage records. It is
	// required and unique.
	Name string `yaml:"name"`
	// SHA256 is the hex SHA-256 of the key, 64 hex digits. Exactly one of
	// SHA256 and Env is set.
	SHA256 string `yaml:"sha256"`
	// Env names an environment variable that contains the key in clear
	// text. Load reads it once and keeps only its SHA-256 (see Digest), so
	// the variable must be non-empty at load time.
	Env string `yaml:"env"`
	// Priority is the queue class of the key's requests: priority,
	// standard or batch. Default standard.
	Priority string `yaml:"priority"`
	// RequestsPerSec is the sustained request rate, 0 for no limit.
	RequestsPerSec float64 `yaml:"requests_per_second"`
	// Burst is the number of requests allowed at once above the rate. It
	// must be at least 1 when RequestsPerSec is set.
	Burst int `yaml:"burst"`
	// TokensPerMinute limits the tokens the key's requests use per minute,
	// 0 for no limit.
	TokensPerMinute int64 `yaml:"tokens_per_minute"`
	// MaxConcurrent limits the key's requests in flight, 0 for no limit.
	MaxConcurrent int `yaml:"max_concurrent"`
	// MonthlyTokens is the token quota per calendar month, 0 for none.
	MonthlyTokens int64 `yaml:"monthly_tokens"`
	// MonthlyRequests is the request quota per calendar month, 0 for none.
	MonthlyRequests int64 `yaml:"monthly_requests"`
	// AllowedModels lists the models the key may use, and empty allows all.
	// A name without a tag means its :latest tag, as in Ollama.
	AllowedModels []string `yaml:"allowed_models"`

	// envDigest is the SHA-256 of the Env variable's value, read at load
	// time. It is nil for keys given by SHA256 and keys not loaded.
	envDigest *[sha256.Size]byte
}

// RateLimit configures limits for clients without a key.
type RateLimit struct {
	// PerAddress is the request rate per client address in requests per
	// second, 0 for no limit. Default 10.
	PerAddress float64 `yaml:"per_address"`
	// Burst is the number of requests per client address allowed at once
	// above the rate. It must be at least 1 when PerAddress is set.
	// Default 20.
	Burst int `yaml:"burst"`
	// TrustedProxies lists CIDRs, or single addresses, of reverse proxies
	// whose X-Forwarded-For is trusted. Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// DefaultTokenEstimate is reserved for the output of a request that
	// sets no num_predict or max_tokens, on top of an estimate of its
	// prompt. Default 512.
	DefaultTokenEstimate int64 `yaml:"default_token_estimate"`
}

// Redis is the shared state of several instances.
type Redis struct {
	// Addr is the host:port of the Redis server. Empty means none, so that
	// limits, quotas and the cache stay local to each instance. Default
	// empty.
	Addr string `yaml:"addr"`
	// Password authenticates to Redis, empty for none.
	Password string `yaml:"password"`
	// DB is the Redis database number. Default 0.
	DB int `yaml:"db"`
	// Timeout of one Redis call; past it the caller falls back to local
	// state. Default 200ms.
	Timeout time.Duration `yaml:"timeout"`
	// KeyPrefix namespaces every key. Default "llmproxy:".
	KeyPrefix string `yaml:"key_prefix"`
	// CheckInterval is how often the rate limiter and the cache each check
	// Redis with a call of their own. So llmproxy_redis_up and the log
	// follow Redis without traffic, and the counts of an outage reach Redis
	// soon after it responds again. Default 5s.
	CheckInterval time.Duration `yaml:"check_interval"`
}

// Cache configures the response cache.
type Cache struct {
	// Enabled turns the cache on. Nil counts as true, see IsEnabled.
	// Default true.
	Enabled *bool `yaml:"enabled"`
	// PerKey gives each API key its own entries, so that one key's clients
	// cannot tell from a hit what another key's clients asked. Requests
	// without a key share one set. Default false: every client shares the
	// cache.
	PerKey bool `yaml:"per_key"`
	// Generate selects the generation requests that are cached:
	// deterministic (default) caches a request only when its options make
	// the output repeatable, never caches none of them.
	Generate string `yaml:"generate"`
	// L1 is the in-process tier.
	L1 CacheL1 `yaml:"l1"`
	// L2 is the Redis tier.
	L2 CacheL2 `yaml:"l2"`
}

// CacheL1 is the in-process tier.
type CacheL1 struct {
	// MaxBytes bounds the tier. Default 256 MiB.
	MaxBytes int64 `yaml:"max_bytes"`
	// TTL of an entry. Default 1h.
	TTL time.Duration `yaml:"ttl"`
}

// CacheL2 is the Redis tier, used when redis.addr is set.
type CacheL2 struct {
	// Enabled turns the tier on when Redis is configured. Nil counts as
	// true, see IsEnabled. Default true.
	Enabled *bool `yaml:"enabled"`
	// TTL of an entry. Default 24h.
	TTL time.Duration `yaml:"ttl"`
}

// Log configures logging.
type Log struct {
	// Format is text (default) or json.
	Format string `yaml:"format"`
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// Admin configures the admin routes.
type Admin struct {
	// Listen serves admin routes on their own address; empty serves them on
	// the main listener.
	Listen string `yaml:"listen"`
	// Token, when set, must be sent as a bearer token to admin routes.
	// Default empty, which leaves admin routes open.
	Token string `yaml:"token"`
}
