package app_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// limitsSetup is a proxy on one simulated node, with the keys that keys()
// returns and its limit state in memory or on a private redis-server.
type limitsSetup struct {
	t     *testing.T
	a     *app.App
	sim   *ollamasim.Running
	redis *testredis.Server // nil in memory
	keys  func() []config.Key
	// perAddress is rate_limit.per_address, with a burst of 1.
	perAddress float64
	// redisStopped is set once stopRedis has stopped the redis-server.
	redisStopped bool
}

// withRedis reports whether the subtest name is "redis".
func withRedis(name string) bool { return name == "redis" }

// startLimits starts a proxy with the keys that keys() returns and, when
// perAddress is set, that rate per client address.
func startLimits(t *testing.T, shared bool, sim *ollamasim.Running, perAddress float64,
	keys func() []config.Key) *limitsSetup {
	t.Helper()
	s := &limitsSetup{t: t, sim: sim, keys: keys, perAddress: perAddress}
	if shared {
		s.redis = testredis.Start(t)
	}
	s.a, _ = startApp(t, s.config(nil))
	return s
}

// config returns the configuration of s with tune applied to its keys.
func (s *limitsSetup) config(tune func(keys []config.Key)) *config.Config {
	cfg := testenv.Config(s.t, s.sim)
	cfg.Auth.Keys = s.keys()
	if tune != nil {
		tune(cfg.Auth.Keys)
	}
	if s.perAddress > 0 {
		cfg.RateLimit.PerAddress = s.perAddress
		cfg.RateLimit.Burst = 1
	}
	if s.redis != nil {
		cfg.Redis.Addr = s.redis.Addr
	}
	return cfg
}

// stopRedis stops the redis-server, so that the proxy decides with its
// own state.
func (s *limitsSetup) stopRedis() {
	s.redis.Stop()
	s.redisStopped = true
}

// reload reloads the proxy with its keys changed by tune. While Redis
// runs, it checks that the reload left the rate limit keys in Redis as
// they were.
func (s *limitsSetup) reload(tune func(keys []config.Key)) {
	s.t.Helper()
	checkRedis := s.redis != nil && !s.redisStopped
	var before []string
	if checkRedis {
		before = redisKeys(s.t, s.redis.Addr, "llmproxy:rl:*")
	}
	reload(s.t, s.a, s.config(tune))
	if !checkRedis {
		return
	}
	after := redisKeys(s.t, s.redis.Addr, "llmproxy:rl:*")
	slices.Sort(before)
	slices.Sort(after)
	if !slices.Equal(before, after) {
		s.t.Errorf("rate limit keys in Redis changed on reload: before %v, after %v", before, after)
	}
}

// keyOf returns a key named name, given by the SHA-256 of secretFor(name).
func keyOf(name string) config.Key {
	sum := sha256.Sum256([]byte(secretFor(name)))
	return config.Key{Name: name, SHA256: hex.EncodeToString(sum[:]), Priority: "standard"}
}

func secretFor(name string) string { return "sk-reload-" + name }

// send posts body to path with the key named key, or without a key when
// key is empty, and returns the status and the response body.
func (s *limitsSetup) send(path, key, body string) (int, string) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.a.URL()+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+secretFor(key))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// quick sends a short generation with the key named key.
func (s *limitsSetup) quick(key string) (int, string) {
	s.t.Helper()
	return s.send("/api/generate", key,
		`{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":2}}`)
}

// expect sends a short generation with the key named key and checks its
// status, and for a 429 that the message names the limit in wording.
func (s *limitsSetup) expect(step, key string, status int, wording string) {
	s.t.Helper()
	got, body := s.quick(key)
	if got != status {
		s.t.Fatalf("%s: status %d, want %d; body %s", step, got, status, body)
	}
	if wording != "" && !strings.Contains(body, wording) {
		s.t.Errorf("%s: body %s, want it to name %q", step, body, wording)
	}
}

// usage returns the /admin/usage entry of the key named name.
func (s *limitsSetup) usage(name string) ratelimit.KeyUsage {
	s.t.Helper()
	resp, err := http.Get(s.a.URL() + "/admin/usage")
	if err != nil {
		s.t.Fatalf("GET /admin/usage: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Keys []ratelimit.KeyUsage `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		s.t.Fatalf("decode /admin/usage: %v", err)
	}
	for _, u := range body.Keys {
		if u.Name == name {
			return u
		}
	}
	s.t.Fatalf("/admin/usage lists no key %q: %+v", name, body.Keys)
	return ratelimit.KeyUsage{}
}

// waitSettled waits until the key named name has no request in flight.
func (s *limitsSetup) waitSettled(name string) ratelimit.KeyUsage {
	s.t.Helper()
	var u ratelimit.KeyUsage
	testenv.WaitFor(s.t, 5*time.Second, "key "+name+" to have no request in flight", func() bool {
		u = s.usage(name)
		return u.InFlight == 0
	})
	return u
}

// TestReloadKeepsKeyQuota uses up a monthly request quota, then reloads
// changes to the keys: the counts stay, and changed quotas apply to them.
func TestReloadKeepsKeyQuota(t *testing.T) {
	for _, name := range []string{"local", "redis"} {
		t.Run(name, func(t *testing.T) {
			sim := testenv.Sim(t, "m", ollamasim.Config{})
			s := startLimits(t, withRedis(name), sim, 0, func() []config.Key {
				one, two := keyOf("one"), keyOf("two")
				one.MaxConcurrent = 1
				two.MonthlyRequests = 3
				return []config.Key{one, two}
			})
			const quota = "monthly request quota of key"
			for i := range 3 {
				s.expect("request "+string(rune('1'+i)), "two", http.StatusOK, "")
			}
			s.expect("fourth request", "two", http.StatusTooManyRequests, quota)
			before := s.waitSettled("two")
			if before.MonthlyRequests != 3 || before.MonthlyTokens == 0 {
				t.Fatalf("usage before the reload %+v, want 3 requests and some tokens", before)
			}

			// A change to another key only.
			s.reload(func(keys []config.Key) { keys[0].MaxConcurrent = 2 })
			after := s.usage("two")
			if after.MonthlyRequests != 3 || after.MonthlyTokens != before.MonthlyTokens {
				t.Errorf("usage after the reload %+v, want the %d requests and %d tokens of before",
					after, before.MonthlyRequests, before.MonthlyTokens)
			}
			s.expect("after reloading another key", "two", http.StatusTooManyRequests, quota)

			// A raised quota counts on from the used requests.
			s.reload(func(keys []config.Key) { keys[1].MonthlyRequests = 4 })
			s.expect("after raising the quota to 4", "two", http.StatusOK, "")
			s.expect("fifth request", "two", http.StatusTooManyRequests, quota)
			if u := s.waitSettled("two"); u.MonthlyRequests != 4 || u.Limits.MonthlyRequests != 4 {
				t.Errorf("usage after the raise %+v, want 4 of 4 requests", u)
			}

			// A quota lowered below the used requests rejects at once.
			s.reload(func(keys []config.Key) { keys[1].MonthlyRequests = 2 })
			s.expect("after lowering the quota to 2", "two", http.StatusTooManyRequests, quota)

			if s.redis == nil {
				return
			}
			// Without Redis the proxy decides with its own counts, which
			// a reload must keep too.
			s.reload(func(keys []config.Key) { keys[0].MaxConcurrent = 3 })
			s.stopRedis()
			s.expect("after a reload, with Redis stopped", "two", http.StatusTooManyRequests, quota)
			if u := s.usage("two"); u.Shared || u.MonthlyRequests != 4 {
				t.Errorf("usage with Redis stopped %+v, want this instance's 4 requests", u)
			}
		})
	}
}

// openStream starts a streaming chat with the key named key, reads its
// first line and returns the response, whose body the caller closes.
func (s *limitsSetup) openStream(key string) *http.Response {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.a.URL()+"/api/chat", strings.NewReader(
		`{"model":"m","messages":[{"role":"user","content":"count"}],"options":{"num_predict":400}}`))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secretFor(key))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("chat: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.t.Fatalf("chat: status %d, body %s", resp.StatusCode, b)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		resp.Body.Close()
		s.t.Fatalf("first line of the stream: %v", err)
	}
	return resp
}

// TestReloadKeepsKeyInFlight reloads while a key's only slot is taken: the
// slot stays taken, and the request frees it when it ends.
func TestReloadKeepsKeyInFlight(t *testing.T) {
	for _, name := range []string{"local", "redis"} {
		t.Run(name, func(t *testing.T) {
			// 20 tokens per second: a stream of 400 tokens outlasts the test.
			sim := testenv.Sim(t, "m", ollamasim.Config{
				TokensPerSec: 20, MinTokens: 400, MaxTokens: 400,
			})
			s := startLimits(t, withRedis(name), sim, 0, func() []config.Key {
				one, two := keyOf("one"), keyOf("two")
				one.MaxConcurrent = 1
				two.MaxConcurrent = 1
				return []config.Key{one, two}
			})
			stream := s.openStream("one")
			defer stream.Body.Close()

			s.reload(func(keys []config.Key) { keys[1].MaxConcurrent = 2 })
			if u := s.usage("one"); u.InFlight != 1 {
				t.Errorf("in flight after the reload: %d, want the open stream", u.InFlight)
			}
			if s.redis != nil {
				// Without Redis the proxy decides with its own count of
				// requests in flight, which a reload must keep too.
				s.stopRedis()
			}
			const slots = "concurrent requests of key"
			s.expect("while the stream is open", "one", http.StatusTooManyRequests, slots)

			stream.Body.Close()
			if u := s.waitSettled("one"); u.InFlight != 0 {
				t.Errorf("in flight after the stream ended: %d, want 0", u.InFlight)
			}
			s.reload(func(keys []config.Key) { keys[1].MaxConcurrent = 3 })
			if u := s.usage("one"); u.InFlight != 0 {
				t.Errorf("in flight after a second reload: %d, want 0", u.InFlight)
			}
			// The freed slot is free again, once: a short generation
			// takes it and gives it back.
			s.expect("after the stream ended", "one", http.StatusOK, "")
			if u := s.waitSettled("one"); u.InFlight != 0 {
				t.Errorf("in flight after a short request: %d, want 0", u.InFlight)
			}
		})
	}
}

// TestReloadKeepsRates spends the request rate of a key and of a client
// address and the tokens per minute of a key, then reloads a change to
// another key: each limit still rejects.
func TestReloadKeepsRates(t *testing.T) {
	for _, name := range []string{"local", "redis"} {
		t.Run(name, func(t *testing.T) {
			sim := testenv.Sim(t, "m", ollamasim.Config{})
			// One request per 100 seconds with a burst of 1: the second
			// request within the test is over the rate.
			s := startLimits(t, withRedis(name), sim, 0.01, func() []config.Key {
				rps, tpm, other := keyOf("rps"), keyOf("tpm"), keyOf("other")
				rps.RequestsPerSec, rps.Burst = 0.01, 1
				tpm.TokensPerMinute = 1000
				other.MaxConcurrent = 1
				return []config.Key{rps, tpm, other}
			})
			// The first request reserves the whole minute's tokens and
			// settles at its real count, so a second one does not fit.
			const fullMinute = `{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":1000}}`
			if status, body := s.send("/api/generate", "tpm", fullMinute); status != http.StatusOK {
				t.Fatalf("first tpm request: status %d, body %s", status, body)
			}
			s.expect("first rps request", "rps", http.StatusOK, "")
			s.expect("first request without a key", "", http.StatusOK, "")
			s.waitSettled("tpm")

			check := func(step string) {
				t.Helper()
				status, body := s.send("/api/generate", "tpm", fullMinute)
				if status != http.StatusTooManyRequests || !strings.Contains(body, "tokens per minute") {
					t.Errorf("%s: tpm request: status %d, body %s; want 429 for tokens per minute",
						step, status, body)
				}
				status, body = s.quick("rps")
				if status != http.StatusTooManyRequests || !strings.Contains(body, "request rate of key") {
					t.Errorf("%s: rps request: status %d, body %s; want 429 for the request rate",
						step, status, body)
				}
				status, body = s.quick("")
				if status != http.StatusTooManyRequests ||
					!strings.Contains(body, "request rate of this client address") {
					t.Errorf("%s: request without a key: status %d, body %s; "+
						"want 429 for the request rate", step, status, body)
				}
			}
			check("before the reload")
			s.reload(func(keys []config.Key) { keys[2].MaxConcurrent = 2 })
			check("after the reload")
		})
	}
}
