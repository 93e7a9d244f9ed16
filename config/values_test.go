package config

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"1024", 1024},
		{"512k", 512_000},
		{"512K", 512_000},
		{"512KiB", 512 << 10},
		{"512ki", 512 << 10},
		{"64MiB", 64 << 20},
		{"64 MiB", 64 << 20},
		{"64MB", 64_000_000},
		{"1GB", 1_000_000_000},
		{"1GiB", 1 << 30},
		{"1.5GiB", 3 << 29},
		{"2TiB", 2 << 40},
		{"10B", 10},
		{" 7 ", 7},
		{"9223372036854775807", math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if err != nil {
				t.Fatalf("ParseByteSize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseByteSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseByteSizeRejects(t *testing.T) {
	tests := []struct {
		in, msg string
	}{
		{"", "want a number"},
		{"MiB", "want a number"},
		{"-1", "want a number"},
		{".5k", "want a number"},
		{"1.2.3", "malformed number"},
		{"12XB", `unknown unit "XB"`},
		{"1e6", "malformed number"},
		{"1_000k", "malformed number"},
		{"0x10", "malformed number"},
		{"0.5", "not a whole number"},
		{"1.0000001k", "not a whole number"},
		{"9223372036854775808", "out of range, larger than 9223372036854775807 bytes"},
		{"9EiB", "unknown unit"},
		{"10000000TiB", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseByteSize(tt.in)
			if err == nil {
				t.Fatalf("ParseByteSize(%q) succeeded, want an error", tt.in)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error = %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}

func TestParseSizeValues(t *testing.T) {
	tests := []struct {
		value string
		want  int64
	}{
		{"1048576", 1 << 20},
		{"0x100000", 1 << 20},
		{"64MiB", 64 << 20},
		{`"1GB"`, 1_000_000_000},
		{"512k", 512_000},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			c := mustParse(t, nodeYAML+"max_body_bytes: "+tt.value+"\n")
			if c.MaxBodyBytes != tt.want {
				t.Errorf("max_body_bytes = %d, want %d", c.MaxBodyBytes, tt.want)
			}
		})
	}
}

func TestParseDurationValues(t *testing.T) {
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"5m", 5 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"1.5s", 1500 * time.Millisecond},
		{"250ms", 250 * time.Millisecond},
		{`"45s"`, 45 * time.Second},
		{"0", 0},
		{"0s", 0},
		{"0.0", 0},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			c := mustParse(t, nodeYAML+"upstream:\n  total: "+tt.value+"\n")
			if c.Upstream.Total != tt.want {
				t.Errorf("upstream.total = %v, want %v", c.Upstream.Total, tt.want)
			}
		})
	}
}

func TestParseKeepsUnsetDefaults(t *testing.T) {
	c := mustParse(t, nodeYAML+"queue:\n  classes:\n    batch:\n      max_wait: 1h\n"+
		"upstream:\n  idle: 30s\n")
	if got := c.Queue.Classes[ClassBatch]; got != (QueueClass{MaxLength: 1000, MaxWait: time.Hour}) {
		t.Errorf("batch = %+v, want max_length kept at 1000 and max_wait 1h", got)
	}
	if got := c.Queue.Classes[ClassPriority]; got != Default().Queue.Classes[ClassPriority] {
		t.Errorf("priority = %+v, want the default", got)
	}
	if c.Upstream.Connect != 3*time.Second || c.Upstream.Idle != 30*time.Second {
		t.Errorf("upstream = %+v, want connect 3s kept and idle 30s", c.Upstream)
	}
}

func TestParseNullAndEmpty(t *testing.T) {
	doc := nodeYAML + "cors:\n  allowed_origins:\n  # - https://a.example\nqueue:\n  classes:\n" +
		"health:\nmodels: {}\n"
	c := mustParse(t, doc)
	if c.CORS.AllowedOrigins != nil {
		t.Errorf("allowed_origins = %v, want nil", c.CORS.AllowedOrigins)
	}
	if len(c.Queue.Classes) != 3 {
		t.Errorf("classes = %v, want the three defaults", c.Queue.Classes)
	}
	if c.Health != Default().Health {
		t.Errorf("health = %+v, want the defaults", c.Health)
	}
}

func TestParseEmptyFile(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "---\n"} {
		ps := problemsOf(t, doc, nil)
		if len(ps) != 1 || ps[0].Path != "nodes" {
			t.Errorf("%q: problems = %v, want only nodes missing", doc, ps)
		}
	}
}

func TestParseMergeKeys(t *testing.T) {
	doc := "defaults: &node {max_concurrent: 8, weight: 2}\n" +
		"nodes:\n  - {<<: *node, url: http://127.0.0.1:1}\n  - {<<: *node, url: http://127.0.0.1:2, weight: 3}\n"
	// defaults is no setting, so it is reported, but the merges apply.
	ps := problemsOf(t, doc, nil)
	if len(ps) != 1 || ps[0].Path != "defaults" {
		t.Fatalf("problems = %v, want only the unknown key defaults", ps)
	}
	doc = "nodes:\n  - &n {url: http://127.0.0.1:1, max_concurrent: 8, weight: 2}\n" +
		"  - {<<: *n, url: http://127.0.0.1:2, weight: 3}\n"
	c := mustParse(t, doc)
	if got := c.Nodes[1]; got.MaxConcurrent != 8 || got.Weight != 3 || got.URL != "http://127.0.0.1:2" {
		t.Errorf("nodes[1] = %+v, want max_concurrent 8 merged, weight 3 and its own url", got)
	}
}

func TestParseStringScalars(t *testing.T) {
	c := mustParse(t, nodeYAML+"redis:\n  password: 0123\n  key_prefix: \"\"\n")
	if c.Redis.Password != "0123" {
		t.Errorf("password = %q, want the text 0123", c.Redis.Password)
	}
	if c.Redis.KeyPrefix != "" {
		t.Errorf("key_prefix = %q, want empty", c.Redis.KeyPrefix)
	}
}

func TestParseCacheSwitches(t *testing.T) {
	c := mustParse(t, nodeYAML+"cache:\n  enabled: false\n  l2:\n    enabled: false\n")
	if c.Cache.IsEnabled() {
		t.Errorf("cache enabled, want off")
	}
	if c.Cache.L2.IsEnabled() {
		t.Errorf("l2 enabled, want off")
	}
	if (&Cache{}).IsEnabled() != true {
		t.Errorf("nil enabled reads as off, want on")
	}
}
