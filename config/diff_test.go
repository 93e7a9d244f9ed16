package config

import (
	"reflect"
	"slices"
	"testing"
	"time"
)

// baseConfig returns a loaded config with two nodes, for changing in tests.
func baseConfig(t *testing.T) *Config {
	t.Helper()
	return mustParse(t, "nodes:\n  - {name: a, url: http://127.0.0.1:1}\n"+
		"  - {name: b, url: http://127.0.0.1:2}\n")
}

func nodeNames(nodes []Node) []string {
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

func TestDiffNodes(t *testing.T) {
	tests := []struct {
		name    string
		change  func(c *Config)
		added   []string
		removed []string
		updated []string
	}{
		{"none", func(c *Config) {}, nil, nil, nil},
		{"reordered", func(c *Config) { slices.Reverse(c.Nodes) }, nil, nil, nil},
		{"added", func(c *Config) {
			c.Nodes = append(c.Nodes, Node{Name: "c", URL: "http://127.0.0.1:3"})
		}, []string{"c"}, nil, nil},
		{"removed", func(c *Config) { c.Nodes = c.Nodes[1:] }, nil, []string{"a"}, nil},
		{"weight", func(c *Config) { c.Nodes[1].Weight = 2 }, nil, nil, []string{"b"}},
		{"url", func(c *Config) { c.Nodes[0].URL = "http://127.0.0.1:9" }, nil, nil, []string{"a"}},
		{"renamed", func(c *Config) { c.Nodes[0].Name = "z" }, []string{"z"}, []string{"a"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev, next := baseConfig(t), baseConfig(t)
			tt.change(next)
			ch := Diff(prev, next)
			if got := nodeNames(ch.Added); !slices.Equal(got, tt.added) {
				t.Errorf("added = %v, want %v", got, tt.added)
			}
			if got := nodeNames(ch.Removed); !slices.Equal(got, tt.removed) {
				t.Errorf("removed = %v, want %v", got, tt.removed)
			}
			var updated []string
			for _, u := range ch.Updated {
				updated = append(updated, u.New.Name)
			}
			if !slices.Equal(updated, tt.updated) {
				t.Errorf("updated = %v, want %v", updated, tt.updated)
			}
			if len(ch.Settings) != 0 {
				t.Errorf("settings = %v, want none", ch.Settings)
			}
		})
	}
}

func TestDiffSettings(t *testing.T) {
	tests := []struct {
		name     string
		change   func(c *Config)
		settings []string
		restart  []string
	}{
		{"listen", func(c *Config) { c.Listen = "127.0.0.1:1" },
			[]string{"listen"}, []string{"listen"}},
		{"admin listen", func(c *Config) { c.Admin.Listen = "127.0.0.1:2" },
			[]string{"admin.listen"}, []string{"admin.listen"}},
		{"header size", func(c *Config) { c.MaxHeaderBytes = 16 << 10 },
			[]string{"max_header_bytes"}, []string{"max_header_bytes"}},
		{"body size", func(c *Config) { c.MaxBodyBytes = 1 << 20 },
			[]string{"max_body_bytes"}, []string{"max_body_bytes"}},
		{"write timeout", func(c *Config) { c.WriteTimeout = time.Second },
			[]string{"write_timeout"}, nil},
		{"admin token", func(c *Config) { c.Admin.Token = "t" }, []string{"admin.token"}, nil},
		{"redis", func(c *Config) { c.Redis.Addr = "127.0.0.1:6379"; c.Redis.Timeout = time.Second },
			[]string{"redis.addr", "redis.timeout"}, []string{"redis.addr", "redis.timeout"}},
		{"redis credentials", func(c *Config) { c.Redis.Password = "p"; c.Redis.DB = 2 },
			[]string{"redis.db", "redis.password"}, []string{"redis.db", "redis.password"}},
		{"redis key prefix", func(c *Config) { c.Redis.KeyPrefix = "other:" },
			[]string{"redis.key_prefix"}, []string{"redis.key_prefix"}},
		{"queue class", func(c *Config) {
			c.Queue.Classes[ClassBatch] = QueueClass{MaxLength: 5, MaxWait: time.Minute}
		}, []string{"queue.classes.batch"}, nil},
		{"queue class removed", func(c *Config) { delete(c.Queue.Classes, ClassBatch) },
			[]string{"queue.classes.batch"}, nil},
		{"retry", func(c *Config) { c.Retry.Attempts = 5 }, []string{"retry.attempts"}, nil},
		{"cache switch", func(c *Config) { c.Cache.Enabled = boolPtr(false) },
			[]string{"cache.enabled"}, []string{"cache.enabled"}},
		{"cache generate", func(c *Config) { c.Cache.Generate = "never" },
			[]string{"cache.generate"}, []string{"cache.generate"}},
		{"cache tiers", func(c *Config) {
			c.Cache.L1.MaxBytes = 1 << 20
			c.Cache.L1.TTL = time.Minute
			c.Cache.L2.Enabled = boolPtr(false)
			c.Cache.L2.TTL = time.Hour
		}, []string{"cache.l1.max_bytes", "cache.l1.ttl", "cache.l2.enabled", "cache.l2.ttl"},
			[]string{"cache.l1.max_bytes", "cache.l1.ttl", "cache.l2.enabled", "cache.l2.ttl"}},
		{"cache and retry", func(c *Config) { c.Cache.L1.TTL = time.Minute; c.Retry.Attempts = 5 },
			[]string{"cache.l1.ttl", "retry.attempts"}, []string{"cache.l1.ttl"}},
		{"log", func(c *Config) { c.Log.Level = "debug"; c.Log.Format = "json" },
			[]string{"log.format", "log.level"}, []string{"log.format", "log.level"}},
		{"keys", func(c *Config) { c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA}} },
			[]string{"auth.keys"}, nil},
		{"origins", func(c *Config) { c.CORS.AllowedOrigins = []string{"*"} },
			[]string{"cors.allowed_origins"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev, next := baseConfig(t), baseConfig(t)
			tt.change(next)
			ch := Diff(prev, next)
			if !slices.Equal(ch.Settings, tt.settings) {
				t.Errorf("settings = %v, want %v", ch.Settings, tt.settings)
			}
			if !slices.Equal(ch.Restart, tt.restart) {
				t.Errorf("restart = %v, want %v", ch.Restart, tt.restart)
			}
			if ch.NeedsRestart() != (len(tt.restart) > 0) {
				t.Errorf("NeedsRestart = %v with restart %v", ch.NeedsRestart(), tt.restart)
			}
			if ch.Empty() {
				t.Errorf("Empty = true, want false")
			}
		})
	}
}

func TestDiffKeyFromEnvChanges(t *testing.T) {
	doc := nodeYAML + "auth:\n  keys:\n    - {name: app, env: APP_KEY}\n"
	prev, err := ParseEnv([]byte(doc), "f.yaml", envOf(map[string]string{"APP_KEY": "one"}))
	if err != nil {
		t.Fatal(err)
	}
	next, err := ParseEnv([]byte(doc), "f.yaml", envOf(map[string]string{"APP_KEY": "two"}))
	if err != nil {
		t.Fatal(err)
	}
	if ch := Diff(prev, next); !slices.Equal(ch.Settings, []string{"auth.keys"}) {
		t.Errorf("settings = %v, want auth.keys after the variable changed", ch.Settings)
	}
}

func TestDiffUnchanged(t *testing.T) {
	ch := Diff(baseConfig(t), baseConfig(t))
	if !ch.Empty() {
		t.Errorf("Diff of equal configs = %+v, want empty", ch)
	}
}

func TestDiffNil(t *testing.T) {
	ch := Diff(nil, baseConfig(t))
	if len(ch.Added) != 2 {
		t.Errorf("added = %v, want both nodes", nodeNames(ch.Added))
	}
	if !ch.NeedsRestart() {
		t.Errorf("NeedsRestart = false, want true since listen is set")
	}
}

func TestChangeChanged(t *testing.T) {
	ch := Change{Settings: []string{"queue.classes.batch", "retry.attempts"}}
	tests := []struct {
		path string
		want bool
	}{
		{"queue", true},
		{"queue.classes", true},
		{"queue.classes.batch", true},
		{"queue.aging", false},
		{"retry", true},
		{"ret", false},
		{"health", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := ch.Changed(tt.path); got != tt.want {
				t.Errorf("Changed(%q) = %v, want %v", tt.path, got, tt.want)
			}
		})
	}
}

func TestRestartPathsNameSettings(t *testing.T) {
	cfg := reflect.ValueOf(Default())
	for _, path := range restartPaths {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("restart path %q names no setting: %v", path, r)
				}
			}()
			settingAt(cfg, path)
		}()
	}
}

func TestKeepRestartSettings(t *testing.T) {
	running := baseConfig(t)
	running.Redis.Addr = "127.0.0.1:6379"
	next := baseConfig(t)
	next.Listen = "127.0.0.1:1"
	next.Admin.Listen = "127.0.0.1:2"
	next.MaxHeaderBytes = 16 << 10
	next.Redis.Addr = "127.0.0.1:6380"
	next.Redis.KeyPrefix = "other:"
	next.Cache.Enabled = boolPtr(false)
	next.Cache.L1.TTL = time.Minute
	next.Retry.Attempts = 5
	next.Admin.Token = "t"
	next.Nodes = next.Nodes[:1]

	got := KeepRestartSettings(running, next)

	applied := Diff(running, got)
	if !slices.Equal(applied.Settings, []string{"admin.token", "retry.attempts"}) {
		t.Errorf("settings changed from running = %v, want only admin.token and retry.attempts",
			applied.Settings)
	}
	if removed := nodeNames(applied.Removed); !slices.Equal(removed, []string{"b"}) {
		t.Errorf("removed nodes = %v, want [b] as in next", removed)
	}
	kept := Diff(got, next)
	wantKept := []string{"admin.listen", "cache.enabled", "cache.l1.ttl", "listen",
		"max_header_bytes", "redis.addr", "redis.key_prefix"}
	if !slices.Equal(kept.Settings, wantKept) {
		t.Errorf("settings kept from running = %v, want %v", kept.Settings, wantKept)
	}
	if next.Redis.Addr != "127.0.0.1:6380" {
		t.Errorf("next.Redis.Addr = %q, want it unmodified", next.Redis.Addr)
	}
	if next.Cache.IsEnabled() {
		t.Errorf("next.Cache.Enabled = true, want it unmodified")
	}
}
