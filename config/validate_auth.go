package config

import (
	"encoding/hex"
	"fmt"
	"strings"
)

func (v *validator) keys(keys []Key) {
	names := map[string]int{}
	digests := map[[32]byte]int{}
	for i := range keys {
		k := &keys[i]
		path := fmt.Sprintf("auth.keys[%d]", i)
		v.keyName(path, k.Name, names, i)
		if v.keySecret(path, k) {
			d, _ := k.Digest()
			if first, dup := digests[d]; dup {
				v.add(path, "same key as auth.keys[%d], each key may appear once", first)
			} else {
				digests[d] = i
			}
		}
		v.oneOf(path+".priority", k.Priority, Classes)
		v.rate(path+".requests_per_second", path+".burst", k.RequestsPerSec, k.Burst)
		nonNegative(v, path+".tokens_per_minute", k.TokensPerMinute)
		nonNegative(v, path+".max_concurrent", k.MaxConcurrent)
		nonNegative(v, path+".monthly_tokens", k.MonthlyTokens)
		nonNegative(v, path+".monthly_requests", k.MonthlyRequests)
		for j, m := range k.AllowedModels {
			if msg := modelNameProblem(m); msg != "" {
				v.add(fmt.Sprintf("%s.allowed_models[%d]", path, j), "%s", msg)
			}
		}
	}
}

func (v *validator) keyName(path, name string, names map[string]int, i int) {
	if name == "" {
		v.add(path+".name", "missing, each key needs a name for logs and usage records")
		return
	}
	if first, dup := names[name]; dup {
		v.add(path+".name", "duplicate name %q, also auth.keys[%d]", name, first)
		return
	}
	names[name] = i
}

// keySecret checks that exactly one of sha256 and env is set and usable.
// It reports whether the key has a digest.
func (v *validator) keySecret(path string, k *Key) bool {
	switch {
	case k.SHA256 != "" && k.Env != "":
		v.add(path, "sets both sha256 and env, want exactly one")
	case k.SHA256 == "" && k.Env == "":
		v.add(path, "sets neither sha256 nor env, want exactly one")
	case k.SHA256 != "":
		if msg := sha256Problem(k.SHA256); msg != "" {
			v.add(path+".sha256", "%s", msg)
			return false
		}
		return true
	case k.envDigest == nil:
		v.add(path+".env", "environment variable %s is empty or unset, but "+
			"it must contain the key when the config is loaded", k.Env)
	default:
		return true
	}
	return false
}

// sha256Problem checks a hex SHA-256 digest without echoing it.
func sha256Problem(s string) string {
	if len(s) != 64 {
		return fmt.Sprintf("want 64 hex digits, the SHA-256 of the key, got %d characters "+
			"(printf %%s \"$KEY\" | sha256sum prints it)", len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		i := strings.IndexFunc(s, func(r rune) bool { return !strings.ContainsRune(hexDigits, r) })
		return fmt.Sprintf("want 64 hex digits, got a non-hex character at position %d", i+1)
	}
	return ""
}

const hexDigits = "0123456789abcdefABCDEF"
