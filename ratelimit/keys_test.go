package ratelimit

import (
	"errors"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
)

func TestAuthenticate(t *testing.T) {
	env := map[string]string{"TEAM_KEY": "team-secret"}
	lookup := func(name string) (string, bool) { v, ok := env[name]; return v, ok }
	keys := []config.Key{
		hashedKey("alice", "alice-secret"),
		{Name: "team", Env: "TEAM_KEY", Priority: ClassBatch},
	}
	cases := []struct {
		name          string
		required      bool
		unknownKeys   string
		authorization string
		xAPIKey       string
		want          string // key name; "" for anonymous
		wantErr       error
	}{
		{name: "bearer hashed key", authorization: "Bearer alice-secret", want: "alice"},
		{name: "bearer lower case", authorization: "bearer alice-secret", want: "alice"},
		{name: "bearer extra spaces", authorization: "  Bearer   alice-secret ", want: "alice"},
		{name: "x-api-key", xAPIKey: "alice-secret", want: "alice"},
		{name: "env key", authorization: "Bearer team-secret", want: "team"},
		{name: "bearer wins over x-api-key", authorization: "Bearer team-secret",
			xAPIKey: "alice-secret", want: "team"},
		{name: "basic scheme falls to x-api-key", authorization: "Basic YWxpY2U6eA==",
			xAPIKey: "alice-secret", want: "alice"},
		{name: "empty bearer falls to x-api-key", authorization: "Bearer ",
			xAPIKey: "alice-secret", want: "alice"},
		{name: "unknown key served as anonymous", authorization: "Bearer nope", want: ""},
		{name: "placeholder key served as anonymous", authorization: "Bearer ollama", want: ""},
		{name: "unknown key rejected", unknownKeys: config.UnknownKeysReject,
			authorization: "Bearer nope", wantErr: ErrUnknownKey},
		{name: "unknown key required", required: true, xAPIKey: "nope", wantErr: ErrUnknownKey},
		{name: "missing key optional", want: ""},
		{name: "missing key required", required: true, wantErr: ErrMissingKey},
		{name: "basic only required", required: true, authorization: "Basic YWxpY2U6eA==",
			wantErr: ErrMissingKey},
		{name: "key is case sensitive", unknownKeys: config.UnknownKeysReject,
			authorization: "Bearer ALICE-SECRET", wantErr: ErrUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newTestLimiter(t, Options{
				Auth:      config.Auth{Required: tc.required, UnknownKeys: tc.unknownKeys, Keys: keys},
				LookupEnv: lookup,
			})
			k, err := l.Authenticate([]byte(tc.authorization), []byte(tc.xAPIKey))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			got := ""
			if k != nil {
				got = k.Name
			}
			if got != tc.want {
				t.Errorf("key = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAuthenticateWithoutKeys(t *testing.T) {
	l := newTestLimiter(t, Options{})
	k, err := l.Authenticate([]byte("Bearer ollama"), nil)
	if err != nil {
		t.Fatalf("error = %v, want none: without keys a presented key is ignored", err)
	}
	if k != nil {
		t.Errorf("key = %q, want anonymous", k.Name)
	}
}

func TestKeyPriorityDefault(t *testing.T) {
	l := newTestLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{
		hashedKey("plain", "a"),
		func() config.Key { k := hashedKey("fast", "b"); k.Priority = ClassPriority; return k }(),
	}}})
	if p := keyNamed(l, "plain").Priority; p != ClassStandard {
		t.Errorf("priority of a key without one = %q, want %q", p, ClassStandard)
	}
	if p := keyNamed(l, "fast").Priority; p != ClassPriority {
		t.Errorf("priority = %q, want %q", p, ClassPriority)
	}
}

func TestNewRejectsInvalidKeys(t *testing.T) {
	lookup := func(name string) (string, bool) {
		if name == "EMPTY" {
			return "", true
		}
		return "", false
	}
	cases := []struct {
		name string
		key  config.Key
		want string
	}{
		{"missing name", config.Key{SHA256: strings.Repeat("a", 64)}, "missing name"},
		{"reserved name", hashedKey(AnonymousLabel, "x"), "reserved"},
		{"both sources", config.Key{Name: "k", SHA256: strings.Repeat("a", 64), Env: "X"},
			"both sha256 and env"},
		{"no source", config.Key{Name: "k"}, "missing sha256 or env"},
		{"short hash", config.Key{Name: "k", SHA256: "abc"}, "64 hexadecimal"},
		{"bad hex", config.Key{Name: "k", SHA256: strings.Repeat("z", 64)}, "64 hexadecimal"},
		{"unset env", config.Key{Name: "k", Env: "UNSET"}, "UNSET is unset or empty"},
		{"empty env", config.Key{Name: "k", Env: "EMPTY"}, "EMPTY is unset or empty"},
		{"bad priority", func() config.Key { k := hashedKey("k", "x"); k.Priority = "vip"; return k }(),
			`priority "vip" is invalid`},
		{"negative limit", func() config.Key { k := hashedKey("k", "x"); k.MaxConcurrent = -1; return k }(),
			"negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{Auth: config.Auth{Keys: []config.Key{tc.key}}, LookupEnv: lookup})
			if err == nil {
				t.Fatal("New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New(Options{
		Auth: config.Auth{Keys: []config.Key{
			hashedKey("a", "one"),
			hashedKey("a", "two"),
			hashedKey("b", "one"),
		}},
		RateLimit: config.RateLimit{TrustedProxies: []string{"10.0.0.0/33"}, Burst: -1},
	})
	if err == nil {
		t.Fatal("New succeeded, want an error")
	}
	for _, want := range []string{
		`auth.keys[1]: duplicate name "a"`,
		`auth.keys[2] "b": duplicate key, the same as "a"`,
		"rate_limit.trusted_proxies[0]",
		"rate_limit.burst -1 is negative",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %q, want it to contain %q", err, want)
		}
	}
}

func TestNewKeepsNoSecret(t *testing.T) {
	lookup := func(string) (string, bool) { return "very-secret-value", true }
	_, err := New(Options{
		Auth:      config.Auth{Keys: []config.Key{{Name: "k", Env: "K", Priority: "bad"}}},
		LookupEnv: lookup,
	})
	if err == nil {
		t.Fatal("New succeeded, want an error")
	}
	if strings.Contains(err.Error(), "very-secret-value") {
		t.Errorf("error %q contains the key", err)
	}
}

func FuzzPresentedKey(f *testing.F) {
	f.Add([]byte("Bearer abc"), []byte(""))
	f.Add([]byte("Basic abc"), []byte(" key "))
	f.Add([]byte("bearer"), []byte("\x00"))
	f.Fuzz(func(t *testing.T, authorization, xAPIKey []byte) {
		k := presentedKey(authorization, xAPIKey)
		if len(k) > len(authorization)+len(xAPIKey) {
			t.Errorf("presentedKey returned %d bytes from %d", len(k), len(authorization)+len(xAPIKey))
		}
		if len(k) > 0 && (k[0] == ' ' || k[len(k)-1] == ' ') {
			t.Errorf("presentedKey(%q, %q) = %q, not trimmed", authorization, xAPIKey, k)
		}
	})
}
