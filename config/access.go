package config

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// NodeByName returns the node named name and true, or false when c has
// no such node.
func (c *Config) NodeByName(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// KeyByName returns the key named name and true, or false when c has no
// such key.
func (c *Config) KeyByName(name string) (Key, bool) {
	for _, k := range c.Auth.Keys {
		if k.Name == name {
			return k, true
		}
	}
	return Key{}, false
}

// Digest returns the SHA-256 of the key: SHA256 decoded, or the digest of
// the Env variable's value as read when the config was loaded or
// validated. It returns false when SHA256 is not valid hex of the right
// length, or when an Env key was not loaded or its variable was empty.
func (k *Key) Digest() ([sha256.Size]byte, bool) {
	var d [sha256.Size]byte
	if k.SHA256 != "" {
		n, err := hex.Decode(d[:], []byte(k.SHA256))
		return d, err == nil && n == sha256.Size && len(k.SHA256) == 2*sha256.Size
	}
	if k.envDigest != nil {
		return *k.envDigest, true
	}
	return d, false
}

// Matches reports whether secret is this key, comparing digests in
// constant time. A key without a digest matches nothing.
func (k *Key) Matches(secret string) bool {
	want, ok := k.Digest()
	if !ok {
		return false
	}
	got := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(want[:], got[:]) == 1
}

// AllowsModel reports whether the key may use model. An empty
// AllowedModels allows every model. Names compare as wire.ModelKey does,
// so "Llama3" and "llama3:latest" are the same model.
func (k *Key) AllowsModel(model string) bool {
	if len(k.AllowedModels) == 0 {
		return true
	}
	key := wire.ModelKey(model)
	for _, m := range k.AllowedModels {
		if wire.ModelKey(m) == key {
			return true
		}
	}
	return false
}

// IsEnabled reports whether the cache is on. A nil Enabled counts as true.
func (c *Cache) IsEnabled() bool {
	return c.Enabled == nil || *c.Enabled
}

// IsEnabled reports whether the L2 tier is turned on. A nil Enabled counts
// as true. The tier is used only when redis.addr is also set.
func (c *CacheL2) IsEnabled() bool {
	return c.Enabled == nil || *c.Enabled
}

// SlogLevel returns Level as a slog.Level. A Level that validation would
// reject returns an error.
func (l *Log) SlogLevel() (slog.Level, error) {
	switch l.Level {
	case LogLevelDebug:
		return slog.LevelDebug, nil
	case LogLevelInfo:
		return slog.LevelInfo, nil
	case LogLevelWarn:
		return slog.LevelWarn, nil
	case LogLevelError:
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", l.Level)
}

// TrustedPrefixes returns TrustedProxies parsed, a single address as a
// prefix of its full length. It returns an error for the first entry that
// is neither, which a validated config does not have.
func (r *RateLimit) TrustedPrefixes() ([]netip.Prefix, error) {
	prefixes := make([]netip.Prefix, 0, len(r.TrustedProxies))
	for _, s := range r.TrustedProxies {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, p)
	}
	return prefixes, nil
}

// parsePrefix parses a CIDR or a single address and masks the host bits,
// so that 10.1.2.3/8 becomes 10.0.0.0/8.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: want a range such as "+
				"10.0.0.0/8 or fd00::/8, or one address", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid address %q: want a CIDR such as "+
			"10.0.0.0/8, or one address such as 10.0.0.1", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
