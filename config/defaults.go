package config

import "time"

// Priority classes of the request queue, from the highest rank to the
// lowest. A key's Priority and the keys of Queue.Classes name one of them.
const (
	ClassPriority = "priority"
	ClassStandard = "standard"
	ClassBatch    = "batch"
)

// Classes lists the priority classes in rank order, highest first.
var Classes = []string{ClassPriority, ClassStandard, ClassBatch}

// Placement policies of Balancer.Policy, implemented by package balancer.
const (
	PolicyInferenceAware = "inference_aware"
	PolicyLeastConn      = "least_conn"
	PolicyRoundRobin     = "round_robin"
)

// Policies lists the accepted values of Balancer.Policy.
var Policies = []string{PolicyInferenceAware, PolicyLeastConn, PolicyRoundRobin}

// Values of Cache.Generate.
const (
	GenerateDeterministic = "deterministic"
	GenerateNever         = "never"
)

// Values of Auth.UnknownKeys.
const (
	UnknownKeysAnonymous = "anonymous"
	UnknownKeysReject    = "reject"
)

// Values of Log.Format and Log.Level.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"

	LogLevelDebug = "debug"
	LogLevelInfo  = "info"
	LogLevelWarn  = "warn"
	LogLevelError = "error"
)

// ClassRank returns the rank of a priority class, 0 for ClassPriority and
// rising towards ClassBatch, or -1 when class is not one of Classes.
func ClassRank(class string) int {
	for i, c := range Classes {
		if c == class {
			return i
		}
	}
	return -1
}

// Default returns the default configuration, without nodes. Each call
// returns a new value, so the caller may change it freely.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:11434",
		ShutdownTimeout: 30 * time.Second,
		MaxBodyBytes:    64 << 20,
		MaxHeaderBytes:  8 << 10,
		ReadTimeout:     5 * time.Minute,
		WriteTimeout:    5 * time.Minute,
		Upstream: Upstream{
			Connect:   3 * time.Second,
			FirstByte: 5 * time.Minute,
			Idle:      2 * time.Minute,
			Total:     0,
		},
		Discovery: Discovery{Interval: 10 * time.Second},
		Health: Health{
			Interval:           5 * time.Second,
			Timeout:            2 * time.Second,
			UnhealthyThreshold: 3,
			HealthyThreshold:   2,
			MaxFails:           3,
			FailTimeout:        30 * time.Second,
			MaxEjectionPercent: 50,
		},
		Breaker: Breaker{
			ConsecutiveFailures: 5,
			FailureRatio:        0.5,
			MinRequests:         10,
			Interval:            60 * time.Second,
			OpenTimeout:         15 * time.Second,
			HalfOpenRequests:    2,
		},
		Retry: Retry{
			Attempts:   3,
			Backoff:    50 * time.Millisecond,
			MaxBackoff: time.Second,
		},
		Balancer: Balancer{
			Policy:             PolicyInferenceAware,
			AffinityLoadFactor: 1.25,
		},
		Queue: Queue{
			Aging:   10 * time.Second,
			Classes: defaultClasses(),
		},
		Auth: Auth{UnknownKeys: UnknownKeysAnonymous},
		RateLimit: RateLimit{
			PerAddress:           10,
			Burst:                20,
			DefaultTokenEstimate: 512,
		},
		Redis: Redis{
			Timeout:       200 * time.Millisecond,
			KeyPrefix:     "llmproxy:",
			CheckInterval: 5 * time.Second,
		},
		Cache: Cache{
			Enabled:  boolPtr(true),
			Generate: GenerateDeterministic,
			L1:       CacheL1{MaxBytes: 256 << 20, TTL: time.Hour},
			L2:       CacheL2{Enabled: boolPtr(true), TTL: 24 * time.Hour},
		},
		Log: Log{Format: LogFormatText, Level: LogLevelInfo},
	}
}

// DefaultNode returns a node with the default limits and the given URL. Its
// name is left empty, so that Load derives it from the URL.
func DefaultNode(url string) Node {
	return Node{URL: url, MaxConcurrent: 4, Weight: 1}
}

// defaultKey is the starting value of each key decoded from YAML.
func defaultKey() Key {
	return Key{Priority: ClassStandard}
}

func defaultClasses() map[string]QueueClass {
	return map[string]QueueClass{
		ClassPriority: {MaxLength: 1000, MaxWait: 5 * time.Minute},
		ClassStandard: {MaxLength: 1000, MaxWait: 5 * time.Minute},
		ClassBatch:    {MaxLength: 1000, MaxWait: 30 * time.Minute},
	}
}

func boolPtr(b bool) *bool {
	return &b
}
