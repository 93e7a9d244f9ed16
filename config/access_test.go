package config

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"testing"
)

func TestNodeByName(t *testing.T) {
	c := baseConfig(t)
	n, ok := c.NodeByName("b")
	if !ok || n.URL != "http://127.0.0.1:2" {
		t.Errorf("NodeByName(b) = %+v, %v, want the node at http://127.0.0.1:2", n, ok)
	}
	if _, ok := c.NodeByName("missing"); ok {
		t.Errorf("NodeByName(missing) found a node")
	}
}

func TestKeyByName(t *testing.T) {
	c := baseConfig(t)
	c.Auth.Keys = []Key{{Name: "k", SHA256: goodSHA}}
	if k, ok := c.KeyByName("k"); !ok || k.SHA256 != goodSHA {
		t.Errorf("KeyByName(k) = %+v, %v", k, ok)
	}
	if _, ok := c.KeyByName("x"); ok {
		t.Errorf("KeyByName(x) found a key")
	}
}

func TestKeyDigest(t *testing.T) {
	sum := sha256.Sum256([]byte("secret"))
	tests := []struct {
		name   string
		key    Key
		ok     bool
		secret string
	}{
		{"lower hex", Key{SHA256: hex.EncodeToString(sum[:])}, true, "secret"},
		{"upper hex", Key{SHA256: "E5AE8E9946581D38F09ED9A83454AE912998223740A685D66526E0C4D567E581"},
			true, "replace-this-example-key"},
		{"short", Key{SHA256: "abcd"}, false, ""},
		{"env not loaded", Key{Env: "X"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ok := tt.key.Digest()
			if ok != tt.ok {
				t.Fatalf("Digest ok = %v, want %v", ok, tt.ok)
			}
			if tt.ok && !tt.key.Matches(tt.secret) {
				t.Errorf("Matches(%q) = false, want true", tt.secret)
			}
			if tt.key.Matches("wrong") {
				t.Errorf("Matches(wrong) = true")
			}
		})
	}
}

func TestKeyAllowsModel(t *testing.T) {
	k := Key{AllowedModels: []string{"llama3", "qwen2.5:7b", "host:5000/team/m"}}
	tests := []struct {
		model string
		want  bool
	}{
		{"llama3", true},
		{"llama3:latest", true},
		{"llama3:8b", false},
		{"qwen2.5:7b", true},
		{"qwen2.5", false},
		{"host:5000/team/m:latest", true},
		{"mistral", false},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			if got := k.AllowsModel(tt.model); got != tt.want {
				t.Errorf("AllowsModel(%q) = %v, want %v", tt.model, got, tt.want)
			}
		})
	}
	if !(&Key{}).AllowsModel("anything") {
		t.Errorf("key without allowed_models rejects a model")
	}
}

func TestLogSlogLevel(t *testing.T) {
	tests := []struct {
		level string
		want  slog.Level
	}{
		{"debug", slog.LevelDebug},
		{"info", slog.LevelInfo},
		{"warn", slog.LevelWarn},
		{"error", slog.LevelError},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			got, err := (&Log{Level: tt.level}).SlogLevel()
			if err != nil || got != tt.want {
				t.Errorf("SlogLevel = %v, %v, want %v", got, err, tt.want)
			}
		})
	}
	if _, err := (&Log{Level: "loud"}).SlogLevel(); err == nil {
		t.Errorf("SlogLevel(loud) succeeded")
	}
}

func TestTrustedPrefixes(t *testing.T) {
	r := RateLimit{TrustedProxies: []string{"10.1.2.3/8", "192.0.2.7", "fd00::/8"}}
	got, err := r.TrustedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("fd00::/8"),
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("prefix %d = %v, want %v", i, got[i], want[i])
		}
	}
	r.TrustedProxies = []string{"fe80::1%eth0"}
	if _, err := r.TrustedPrefixes(); err == nil {
		t.Errorf("zoned address accepted")
	}
}
