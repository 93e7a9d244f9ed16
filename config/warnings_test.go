package config

import (
	"strings"
	"testing"
	"time"
)

func TestWarnings(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"unbounded queue", func(c *Config) {
			c.Queue.Classes[ClassBatch] = QueueClass{MaxWait: time.Minute}
		}, "queue.classes.batch.max_length: 0 leaves the class unbounded"},
		{"open listener", func(c *Config) { c.Listen = "0.0.0.0:11434"; c.Admin.Token = "t" },
			"listen: 0.0.0.0:11434 is reachable from other hosts"},
		{"all interfaces", func(c *Config) { c.Listen = ":11434"; c.Admin.Token = "t" },
			"listen: :11434 is reachable"},
		{"open admin", func(c *Config) { c.Auth.Required = true; c.Admin.Listen = "10.0.0.1:9000" },
			"admin.token: empty while admin routes are served on 10.0.0.1:9000"},
		{"any origin", func(c *Config) { c.CORS.AllowedOrigins = []string{"*"} },
			"cors.allowed_origins: * with auth.required false"},
		{"trust everyone", func(c *Config) { c.RateLimit.TrustedProxies = []string{"0.0.0.0/0"} },
			"rate_limit.trusted_proxies[0]: 0.0.0.0/0 trusts X-Forwarded-For from every client"},
		{"keys not required", func(c *Config) { c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA}} },
			"auth.required: false while 1 keys are configured, so requests without a key, " +
				"or with an unknown one, bypass"},
		{"keys not required, unknown rejected", func(c *Config) {
			c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA}}
			c.Auth.UnknownKeys = UnknownKeysReject
		}, "auth.required: false while 1 keys are configured, so requests without a key bypass"},
		{"required without keys", func(c *Config) { c.Auth.Required = true },
			"auth.required: true with no auth.keys"},
		{"slow probes", func(c *Config) { c.Health.Timeout = c.Health.Interval },
			"health.timeout: 5s is not below health.interval (5s)"},
		{"short total", func(c *Config) { c.Upstream.Total = time.Minute },
			"upstream.total: 1m0s is below upstream.first_byte (5m0s)"},
		{"tiny write timeout", func(c *Config) { c.WriteTimeout = time.Nanosecond },
			"write_timeout: 1ns is under a second"},
		{"short idle", func(c *Config) { c.Upstream.Idle = 200 * time.Millisecond },
			"upstream.idle: 200ms is under a second"},
		{"short read timeout", func(c *Config) { c.ReadTimeout = 500 * time.Millisecond },
			"read_timeout: 500ms is under a second"},
		{"unused password", func(c *Config) { c.Redis.Password = "p" },
			"redis.password: set while redis.addr is empty"},
		{"local quota", func(c *Config) {
			c.Auth.Required = true
			c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA, MonthlyTokens: 10}}
		}, "auth.keys[0]: monthly quotas without redis.addr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := baseConfig(t)
			if w := c.Warnings(); len(w) != 0 {
				t.Fatalf("base config warns: %v", w)
			}
			tt.change(c)
			w := c.Warnings()
			found := false
			for _, s := range w {
				found = found || strings.HasPrefix(s, tt.want)
			}
			if !found {
				t.Errorf("warnings = %q, want one starting %q", w, tt.want)
			}
		})
	}
}

func TestWarningsQuietCases(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
	}{
		{"localhost", func(c *Config) { c.Listen = "localhost:11434" }},
		{"ipv6 loopback", func(c *Config) { c.Listen = "[::1]:11434" }},
		{"keys required", func(c *Config) {
			c.Auth.Required = true
			c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA}}
		}},
		{"quota with redis", func(c *Config) {
			c.Auth.Required = true
			c.Redis.Addr = "127.0.0.1:6379"
			c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA, MonthlyRequests: 10}}
		}},
		{"one-second timeouts", func(c *Config) {
			c.ReadTimeout, c.WriteTimeout = time.Second, time.Second
			c.Upstream.Connect, c.Upstream.FirstByte, c.Upstream.Idle = time.Second, time.Second, time.Second
		}},
		{"narrow trust", func(c *Config) { c.RateLimit.TrustedProxies = []string{"10.0.0.0/8"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := baseConfig(t)
			tt.change(c)
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("warnings = %q, want none", w)
			}
		})
	}
}
