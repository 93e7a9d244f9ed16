package config

import (
	"testing"
	"time"
)

func TestDefaultValues(t *testing.T) {
	c := Default()
	tests := []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, "127.0.0.1:11434"},
		{"shutdown_timeout", c.ShutdownTimeout, 30 * time.Second},
		{"max_body_bytes", c.MaxBodyBytes, int64(64 << 20)},
		{"max_header_bytes", c.MaxHeaderBytes, int64(8 << 10)},
		{"read_timeout", c.ReadTimeout, 5 * time.Minute},
		{"write_timeout", c.WriteTimeout, 5 * time.Minute},
		{"nodes", len(c.Nodes), 0},
		{"upstream.connect", c.Upstream.Connect, 3 * time.Second},
		{"upstream.first_byte", c.Upstream.FirstByte, 5 * time.Minute},
		{"upstream.idle", c.Upstream.Idle, 2 * time.Minute},
		{"upstream.total", c.Upstream.Total, time.Duration(0)},
		{"discovery.interval", c.Discovery.Interval, 10 * time.Second},
		{"cors.allowed_origins", len(c.CORS.AllowedOrigins), 0},
		{"health.interval", c.Health.Interval, 5 * time.Second},
		{"health.timeout", c.Health.Timeout, 2 * time.Second},
		{"health.unhealthy_threshold", c.Health.UnhealthyThreshold, 3},
		{"health.healthy_threshold", c.Health.HealthyThreshold, 2},
		{"health.max_fails", c.Health.MaxFails, 3},
		{"health.fail_timeout", c.Health.FailTimeout, 30 * time.Second},
		{"health.max_ejection_percent", c.Health.MaxEjectionPercent, 50},
		{"breaker.consecutive_failures", c.Breaker.ConsecutiveFailures, uint32(5)},
		{"breaker.failure_ratio", c.Breaker.FailureRatio, 0.5},
		{"breaker.min_requests", c.Breaker.MinRequests, uint32(10)},
		{"breaker.interval", c.Breaker.Interval, 60 * time.Second},
		{"breaker.open_timeout", c.Breaker.OpenTimeout, 15 * time.Second},
		{"breaker.half_open_requests", c.Breaker.HalfOpenRequests, uint32(2)},
		{"retry.attempts", c.Retry.Attempts, 3},
		{"retry.backoff", c.Retry.Backoff, 50 * time.Millisecond},
		{"retry.max_backoff", c.Retry.MaxBackoff, time.Second},
		{"balancer.policy", c.Balancer.Policy, "inference_aware"},
		{"balancer.affinity_load_factor", c.Balancer.AffinityLoadFactor, 1.25},
		{"queue.aging", c.Queue.Aging, 10 * time.Second},
		{"queue.classes", len(c.Queue.Classes), 3},
		{"queue.classes.priority", c.Queue.Classes["priority"], QueueClass{1000, 5 * time.Minute}},
		{"queue.classes.standard", c.Queue.Classes["standard"], QueueClass{1000, 5 * time.Minute}},
		{"queue.classes.batch", c.Queue.Classes["batch"], QueueClass{1000, 30 * time.Minute}},
		{"auth.required", c.Auth.Required, false},
		{"auth.keys", len(c.Auth.Keys), 0},
		{"rate_limit.per_address", c.RateLimit.PerAddress, 10.0},
		{"rate_limit.burst", c.RateLimit.Burst, 20},
		{"rate_limit.default_token_estimate", c.RateLimit.DefaultTokenEstimate, int64(512)},
		{"redis.addr", c.Redis.Addr, ""},
		{"redis.db", c.Redis.DB, 0},
		{"redis.timeout", c.Redis.Timeout, 200 * time.Millisecond},
		{"redis.key_prefix", c.Redis.KeyPrefix, "llmproxy:"},
		{"redis.check_interval", c.Redis.CheckInterval, 5 * time.Second},
		{"cache.enabled", *c.Cache.Enabled, true},
		{"cache.generate", c.Cache.Generate, "deterministic"},
		{"cache.l1.max_bytes", c.Cache.L1.MaxBytes, int64(256 << 20)},
		{"cache.l1.ttl", c.Cache.L1.TTL, time.Hour},
		{"cache.l2.enabled", *c.Cache.L2.Enabled, true},
		{"cache.l2.ttl", c.Cache.L2.TTL, 24 * time.Hour},
		{"log.format", c.Log.Format, "text"},
		{"log.level", c.Log.Level, "info"},
		{"admin.listen", c.Admin.Listen, ""},
		{"admin.token", c.Admin.Token, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
}

func TestDefaultNodeLimits(t *testing.T) {
	n := DefaultNode("http://127.0.0.1:11435")
	want := Node{URL: "http://127.0.0.1:11435", MaxConcurrent: 4, Weight: 1}
	if n != want {
		t.Errorf("DefaultNode = %+v, want %+v", n, want)
	}
}

func TestDefaultReturnsFreshValues(t *testing.T) {
	a := Default()
	*a.Cache.Enabled = false
	a.Queue.Classes[ClassBatch] = QueueClass{}
	b := Default()
	if !*b.Cache.Enabled {
		t.Errorf("cache.enabled shared between calls")
	}
	if b.Queue.Classes[ClassBatch].MaxLength != 1000 {
		t.Errorf("queue.classes shared between calls")
	}
}

func TestDefaultWithNodeIsValid(t *testing.T) {
	c := Default()
	c.Nodes = []Node{DefaultNode("http://127.0.0.1:11435/")}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.Nodes[0].Name != "127.0.0.1:11435" {
		t.Errorf("name = %q, want 127.0.0.1:11435", c.Nodes[0].Name)
	}
	if c.Nodes[0].URL != "http://127.0.0.1:11435" {
		t.Errorf("url = %q, want the trailing slash removed", c.Nodes[0].URL)
	}
}

func TestClassRank(t *testing.T) {
	tests := []struct {
		class string
		want  int
	}{
		{ClassPriority, 0},
		{ClassStandard, 1},
		{ClassBatch, 2},
		{"urgent", -1},
		{"", -1},
	}
	for _, tt := range tests {
		t.Run(tt.class, func(t *testing.T) {
			if got := ClassRank(tt.class); got != tt.want {
				t.Errorf("ClassRank(%q) = %d, want %d", tt.class, got, tt.want)
			}
		})
	}
}
