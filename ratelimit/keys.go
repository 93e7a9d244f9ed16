package ratelimit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/llmproxy/llmproxy/config"
)

// Errors returned by Authenticate. The proxy responds to both with 401.
var (
	// ErrMissingKey means the request carries no key and auth.required is set.
	ErrMissingKey = errors.New("missing API key")
	// ErrUnknownKey means the request carries a key that matches no
	// configured key.
	ErrUnknownKey = errors.New("unknown API key")
)

// Queue classes a key's requests go to. A key without a priority gets
// ClassStandard.
const (
	ClassPriority = "priority"
	ClassStandard = "standard"
	ClassBatch    = "batch"
)

// Key is one configured API key. Keys are created by New and never change, so
// a *Key is safe to share between goroutines and to keep after the request.
type Key struct {
	// Name identifies the key in metrics, logs and usage records.
	Name string
	// Priority is the default queue class of the key's requests:
	// ClassPriority, ClassStandard or ClassBatch.
	Priority string

	limits KeyLimits
	rate   rate
	models modelPatterns
}

// KeyLimits lists the limits of one key as configured. Zero means no limit.
type KeyLimits struct {
	RequestsPerSec  float64 `json:"requests_per_second"`
	Burst           int     `json:"burst"`
	TokensPerMinute int64   `json:"tokens_per_minute"`
	MaxConcurrent   int     `json:"max_concurrent"`
	MonthlyTokens   int64   `json:"monthly_tokens"`
	MonthlyRequests int64   `json:"monthly_requests"`
}

// Limits returns the key's configured limits.
func (k *Key) Limits() KeyLimits { return k.limits }

// Allows reports whether the key may use model. A key without allowed_models
// may use every model. Names compare as Ollama compares them: case-insensitive,
// a name without a tag means its ":latest" tag, and the default
// registry.ollama.ai/library/ prefix is optional. An allowed_models entry
// ending in "*" matches every name that starts with the rest of the entry,
// so "llama3*" allows llama3:8b and llama3.1:70b, and "*" allows every model.
func (k *Key) Allows(model string) bool { return k.models.match(model) }

// keyring maps the SHA-256 digest of each key to its Key.
type keyring struct {
	required bool
	// rejectUnknown rejects a key that matches none while required is
	// false (auth.unknown_keys: reject).
	rejectUnknown bool
	byDigest      map[[sha256.Size]byte]*Key
	ordered       []*Key
}

// newKeyring builds the keyring from auth.keys, reading keys given by
// environment variable through lookupEnv. It reports every invalid entry.
func newKeyring(auth config.Auth, lookupEnv func(string) (string, bool)) (*keyring, error) {
	kr := &keyring{
		required:      auth.Required,
		rejectUnknown: auth.UnknownKeys == config.UnknownKeysReject,
		byDigest:      make(map[[sha256.Size]byte]*Key, len(auth.Keys)),
	}
	names := make(map[string]bool, len(auth.Keys))
	var errs []error
	for i, ck := range auth.Keys {
		k, digest, err := newKey(ck, lookupEnv)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("auth.keys[%d]: %w", i, err))
			continue
		case names[k.Name]:
			errs = append(errs, fmt.Errorf("auth.keys[%d]: duplicate name %q", i, k.Name))
			continue
		case kr.byDigest[digest] != nil:
			errs = append(errs, fmt.Errorf("auth.keys[%d] %q: duplicate key, the same as %q",
				i, k.Name, kr.byDigest[digest].Name))
			continue
		}
		names[k.Name] = true
		kr.byDigest[digest] = k
		kr.ordered = append(kr.ordered, k)
	}
	return kr, errors.Join(errs...)
}

// newKey validates one configured key and returns it with its digest.
func newKey(ck config.Key, lookupEnv func(string) (string, bool)) (*Key, [sha256.Size]byte, error) {
	var digest [sha256.Size]byte
	switch ck.Name {
	case "":
		return nil, digest, errors.New("missing name")
	case AnonymousLabel:
		return nil, digest, fmt.Errorf("name %q is reserved for requests without a key",
			AnonymousLabel)
	}
	digest, err := keyDigest(ck, lookupEnv)
	if err != nil {
		return nil, digest, fmt.Errorf("%q: %w", ck.Name, err)
	}
	k := &Key{Name: ck.Name, Priority: ck.Priority, limits: limitsOf(ck)}
	if k.Priority == "" {
		k.Priority = ClassStandard
	}
	if err := k.validate(); err != nil {
		return nil, digest, fmt.Errorf("%q: %w", ck.Name, err)
	}
	k.rate = newRate(ck.RequestsPerSec, ck.Burst)
	k.models = newModelPatterns(ck.AllowedModels)
	return k, digest, nil
}

func limitsOf(ck config.Key) KeyLimits {
	return KeyLimits{
		RequestsPerSec:  ck.RequestsPerSec,
		Burst:           ck.Burst,
		TokensPerMinute: ck.TokensPerMinute,
		MaxConcurrent:   ck.MaxConcurrent,
		MonthlyTokens:   ck.MonthlyTokens,
		MonthlyRequests: ck.MonthlyRequests,
	}
}

func (k *Key) validate() error {
	var errs []error
	switch k.Priority {
	case ClassPriority, ClassStandard, ClassBatch:
	default:
		errs = append(errs, fmt.Errorf("priority %q is invalid, want %s, %s or %s",
			k.Priority, ClassPriority, ClassStandard, ClassBatch))
	}
	l := k.limits
	if l.RequestsPerSec < 0 || l.Burst < 0 || l.TokensPerMinute < 0 || l.MaxConcurrent < 0 ||
		l.MonthlyTokens < 0 || l.MonthlyRequests < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	return errors.Join(errs...)
}

// keyDigest returns the SHA-256 of the key, from the sha256 field or from the
// environment variable named by env.
func keyDigest(ck config.Key, lookupEnv func(string) (string, bool)) ([sha256.Size]byte, error) {
	var digest [sha256.Size]byte
	switch {
	case ck.SHA256 != "" && ck.Env != "":
		return digest, errors.New("both sha256 and env are set, want exactly one")
	case ck.SHA256 != "":
		b, err := hex.DecodeString(ck.SHA256)
		if err != nil || len(b) != sha256.Size {
			return digest, errors.New("sha256 must be 64 hexadecimal digits")
		}
		copy(digest[:], b)
		return digest, nil
	case ck.Env != "":
		v, ok := lookupEnv(ck.Env)
		if !ok || v == "" {
			return digest, fmt.Errorf("environment variable %s is unset or empty", ck.Env)
		}
		return sha256.Sum256([]byte(v)), nil
	default:
		return digest, errors.New("missing sha256 or env")
	}
}

// authenticate returns the key the request presents. See Limiter.Authenticate.
func (kr *keyring) authenticate(authorization, xAPIKey []byte) (*Key, error) {
	if len(kr.byDigest) == 0 && !kr.required {
		return nil, nil
	}
	secret := presentedKey(authorization, xAPIKey)
	if len(secret) == 0 {
		if kr.required {
			return nil, ErrMissingKey
		}
		return nil, nil
	}
	// The lookup compares digests, not keys. Its timing can reveal at most
	// how many leading bytes of a digest match, and finding a key whose
	// digest matches more bytes takes SHA-256 preimage work.
	k := kr.byDigest[sha256.Sum256(secret)]
	if k == nil && (kr.required || kr.rejectUnknown) {
		return nil, ErrUnknownKey
	}
	return k, nil
}

// presentedKey extracts the key from "Authorization: Bearer KEY", or else
// from X-API-Key. Another Authorization scheme, such as Basic, carries no key.
func presentedKey(authorization, xAPIKey []byte) []byte {
	const scheme = "bearer "
	a := bytes.TrimSpace(authorization)
	if len(a) > len(scheme) && bytes.EqualFold(a[:len(scheme)], []byte(scheme)) {
		if k := bytes.TrimSpace(a[len(scheme):]); len(k) > 0 {
			return k
		}
	}
	return bytes.TrimSpace(xAPIKey)
}
