package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
)

// step is one action of a rule scenario at a time after its start.
type step struct {
	at time.Duration
	// settle, when set, ends the reservation of the admit step with that
	// index (counted from 1) with prompt and tokens as the reported counts,
	// instead of admitting.
	settle int
	prompt int64
	key    string // key name; "" for a request without a key from addr
	addr   string
	tokens int64
	// input is the request's InputTokens.
	input int64

	allowed bool
	// limit, when set, is the expected Decision.Limit, and remaining the
	// expected Decision.Remaining.
	limit     Limit
	remaining int64
	// retry is the expected RetryAfter of a rejected request.
	retry time.Duration
}

// scenario is one case of a rule table.
type scenario struct {
	name  string
	start time.Time // zero means testStart
	keys  []config.Key
	rl    config.RateLimit
	steps []step
}

// runScenarios runs every scenario on the in-memory store and on Redis.
func runScenarios(t *testing.T, scenarios []scenario) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) { runScenario(t, b, sc) })
			}
		})
	}
}

func runScenario(t *testing.T, b backend, sc scenario) {
	start := sc.start
	if start.IsZero() {
		start = testStart
	}
	clock := newFakeClock(start)
	l := b.newLimiter(t, Options{
		Auth:      config.Auth{Keys: sc.keys},
		RateLimit: sc.rl,
		Now:       clock.Now,
	})
	reservations := map[int]*Reservation{}
	for i, s := range sc.steps {
		clock.Set(start.Add(s.at))
		if s.settle > 0 {
			reservations[s.settle].Settle(s.prompt, s.tokens)
			continue
		}
		var key *Key
		if s.key != "" {
			key = keyNamed(l, s.key)
		}
		d, r := l.Admit(context.Background(), Request{Key: key, Addr: s.addr, Tokens: s.tokens, InputTokens: s.input})
		reservations[i+1] = r
		checkStep(t, i+1, s, d, r)
	}
}

func checkStep(t *testing.T, n int, s step, d Decision, r *Reservation) {
	t.Helper()
	if d.Allowed != s.allowed {
		t.Fatalf("step %d at %s: allowed = %v (limit %s), want %v", n, s.at, d.Allowed, d.Limit, s.allowed)
	}
	if (r != nil) != s.allowed {
		t.Errorf("step %d: reservation = %v, want one only when admitted", n, r)
	}
	if s.limit != "" && (d.Limit != s.limit || d.Remaining != s.remaining) {
		t.Errorf("step %d at %s: limit %s remaining %d, want %s remaining %d",
			n, s.at, d.Limit, d.Remaining, s.limit, s.remaining)
	}
	if !s.allowed && d.RetryAfter != s.retry {
		t.Errorf("step %d at %s: retry after = %s, want %s", n, s.at, d.RetryAfter, s.retry)
	}
}

// keyWith returns a hashed key named name with the limits set by set.
func keyWith(name string, set func(*config.Key)) config.Key {
	k := hashedKey(name, name+"-secret")
	set(&k)
	return k
}

func TestRuleRequestRate(t *testing.T) {
	k := keyWith("k", func(k *config.Key) { k.RequestsPerSec, k.Burst = 2, 3 })
	other := keyWith("other", func(k *config.Key) { k.RequestsPerSec, k.Burst = 2, 1 })
	const req = LimitRequests
	runScenarios(t, []scenario{
		{
			name: "burst then refill",
			keys: []config.Key{k},
			steps: []step{
				{key: "k", allowed: true, limit: req, remaining: 2},
				{key: "k", allowed: true, limit: req, remaining: 1},
				{key: "k", allowed: true, limit: req, remaining: 0},
				{key: "k", limit: req, retry: 500 * time.Millisecond},
				{at: 499 * time.Millisecond, key: "k", limit: req, retry: time.Millisecond},
				{at: 500 * time.Millisecond, key: "k", allowed: true, limit: req, remaining: 0},
				{at: 500 * time.Millisecond, key: "k", limit: req, retry: 500 * time.Millisecond},
				{at: 3 * time.Second, key: "k", allowed: true, limit: req, remaining: 2},
			},
		},
		{
			name: "keys are separate",
			keys: []config.Key{k, other},
			steps: []step{
				{key: "other", allowed: true, limit: req, remaining: 0},
				{key: "other", limit: req, retry: 500 * time.Millisecond},
				{key: "k", allowed: true, limit: req, remaining: 2},
			},
		},
		{
			name: "key without limits",
			keys: []config.Key{hashedKey("free", "x")},
			steps: []step{
				{key: "free", allowed: true}, {key: "free", allowed: true}, {key: "free", allowed: true},
			},
		},
	})
}

func TestRulePerAddress(t *testing.T) {
	rl := config.RateLimit{PerAddress: 1, Burst: 2}
	const req = LimitRequests
	runScenarios(t, []scenario{
		{
			name: "addresses are separate",
			rl:   rl,
			steps: []step{
				{addr: "198.51.100.1", allowed: true, limit: req, remaining: 1},
				{addr: "198.51.100.1", allowed: true, limit: req, remaining: 0},
				{addr: "198.51.100.1", limit: req, retry: time.Second},
				{addr: "198.51.100.2", allowed: true, limit: req, remaining: 1},
				{at: time.Second, addr: "198.51.100.1", allowed: true, limit: req, remaining: 0},
			},
		},
		{
			name: "ipv6 shares its /64",
			rl:   rl,
			steps: []step{
				{addr: "2001:db8:0:1::1", allowed: true},
				{addr: "2001:db8:0:1::2", allowed: true},
				{addr: "2001:db8:0:1::3", limit: req, retry: time.Second},
				{addr: "2001:db8:0:2::1", allowed: true},
			},
		},
		{
			name: "zero rate is no limit",
			steps: []step{
				{addr: "198.51.100.1", allowed: true}, {addr: "198.51.100.1", allowed: true},
				{addr: "198.51.100.1", allowed: true}, {addr: "198.51.100.1", allowed: true},
			},
		},
	})
}

func TestRuleTokensPerMinute(t *testing.T) {
	k := keyWith("k", func(k *config.Key) { k.TokensPerMinute = 1000 })
	keys := []config.Key{k}
	const tok = LimitTokens
	runScenarios(t, []scenario{
		{
			name: "fourth waits for the window",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 300, allowed: true, limit: tok, remaining: 700},
				{at: 10 * time.Second, key: "k", tokens: 300, allowed: true, limit: tok, remaining: 400},
				{at: 20 * time.Second, key: "k", tokens: 300, allowed: true, limit: tok, remaining: 100},
				{at: 30 * time.Second, key: "k", tokens: 300, limit: tok, remaining: 100,
					retry: 30 * time.Second},
				{at: 59 * time.Second, key: "k", tokens: 300, limit: tok, remaining: 100,
					retry: time.Second},
				{at: 60 * time.Second, key: "k", tokens: 300, allowed: true, limit: tok, remaining: 100},
			},
		},
		{
			name: "prompt estimate reserved with the output",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 100, input: 500, allowed: true, limit: tok, remaining: 400},
				{key: "k", tokens: 100, input: 500, limit: tok, remaining: 400,
					retry: time.Minute},
				{key: "k", tokens: 100, input: 300, allowed: true, limit: tok, remaining: 0},
			},
		},
		{
			name: "retry waits for enough to free",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 100, allowed: true},
				{at: 10 * time.Second, key: "k", tokens: 800, allowed: true},
				{at: 20 * time.Second, key: "k", tokens: 500, limit: tok, remaining: 100,
					retry: 50 * time.Second},
			},
		},
		{
			name: "settle refunds",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 300, allowed: true},
				{at: 10 * time.Second, key: "k", tokens: 300, allowed: true},
				{at: 20 * time.Second, key: "k", tokens: 300, allowed: true},
				{at: 25 * time.Second, settle: 1, prompt: 40, tokens: 60},
				{at: 30 * time.Second, key: "k", tokens: 300, allowed: true, limit: tok, remaining: 0},
			},
		},
		{
			name: "settle charges extra",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 300, allowed: true},
				{at: 5 * time.Second, settle: 1, prompt: 400, tokens: 500},
				{at: 10 * time.Second, key: "k", tokens: 300, limit: tok, remaining: 100,
					retry: 50 * time.Second},
			},
		},
		{
			name: "settle after the window charges from then",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 100, allowed: true},
				{at: 90 * time.Second, settle: 1, prompt: 500, tokens: 500},
				{at: 91 * time.Second, key: "k", tokens: 300, limit: tok, remaining: 100,
					retry: 59 * time.Second},
			},
		},
		{
			name: "reservation cut to the limit",
			keys: keys,
			steps: []step{
				{key: "k", tokens: 5000, allowed: true, limit: tok, remaining: 0},
				{at: time.Second, key: "k", tokens: 1, limit: tok, remaining: 0, retry: 59 * time.Second},
			},
		},
		{
			name: "default estimate",
			keys: keys,
			rl:   config.RateLimit{DefaultTokenEstimate: 400},
			steps: []step{
				{key: "k", allowed: true, limit: tok, remaining: 600},
				{key: "k", tokens: -5, allowed: true, limit: tok, remaining: 200},
			},
		},
	})
}

func TestRuleMaxConcurrent(t *testing.T) {
	k := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 2 })
	keys := []config.Key{k}
	const conc = LimitConcurrency
	runScenarios(t, []scenario{
		{
			name: "third waits for a settle",
			keys: keys,
			steps: []step{
				{key: "k", allowed: true, limit: conc, remaining: 1},
				{key: "k", allowed: true, limit: conc, remaining: 0},
				{key: "k", limit: conc, remaining: 0, retry: time.Second},
				{settle: 1, tokens: 10},
				{key: "k", allowed: true, limit: conc, remaining: 0},
				{key: "k", limit: conc, retry: time.Second},
			},
		},
		{
			name: "settling twice frees one slot",
			keys: keys,
			steps: []step{
				{key: "k", allowed: true},
				{key: "k", allowed: true},
				{settle: 1}, {settle: 1},
				{key: "k", allowed: true, limit: conc, remaining: 0},
				{key: "k", limit: conc, retry: time.Second},
			},
		},
	})
}

func TestRuleMonthly(t *testing.T) {
	endOfJanuary := time.Date(2026, 1, 31, 23, 59, 30, 0, time.UTC)
	requests := keyWith("r", func(k *config.Key) { k.MonthlyRequests = 2 })
	tokens := keyWith("t", func(k *config.Key) { k.MonthlyTokens = 1000 })
	const untilFebruary = 30 * time.Second
	runScenarios(t, []scenario{
		{
			name:  "requests reset with the UTC month",
			start: endOfJanuary,
			keys:  []config.Key{requests},
			steps: []step{
				{key: "r", allowed: true, limit: LimitMonthlyRequests, remaining: 1},
				{key: "r", allowed: true, limit: LimitMonthlyRequests, remaining: 0},
				{key: "r", limit: LimitMonthlyRequests, remaining: 0, retry: untilFebruary},
				{at: 29 * time.Second, key: "r", limit: LimitMonthlyRequests, retry: time.Second},
				{at: untilFebruary, key: "r", allowed: true, limit: LimitMonthlyRequests, remaining: 1},
			},
		},
		{
			name:  "tokens settle and reset",
			start: endOfJanuary,
			keys:  []config.Key{tokens},
			steps: []step{
				{key: "t", tokens: 600, allowed: true, limit: LimitMonthlyTokens, remaining: 400},
				{key: "t", tokens: 600, limit: LimitMonthlyTokens, remaining: 400, retry: untilFebruary},
				{settle: 1, prompt: 100, tokens: 100},
				{key: "t", tokens: 600, allowed: true, limit: LimitMonthlyTokens, remaining: 200},
				{at: untilFebruary, key: "t", tokens: 600, allowed: true, limit: LimitMonthlyTokens,
					remaining: 400},
			},
		},
		{
			name:  "settle after the month ends stays in its month",
			start: endOfJanuary,
			keys:  []config.Key{tokens},
			steps: []step{
				{key: "t", tokens: 900, allowed: true},
				{at: untilFebruary, key: "t", tokens: 900, allowed: true},
				{at: untilFebruary, settle: 1, prompt: 5000},
				{at: untilFebruary, key: "t", tokens: 100, allowed: true, limit: LimitMonthlyTokens,
					remaining: 0},
			},
		},
	})
}

func TestRuleRejectedConsumesNothing(t *testing.T) {
	k := keyWith("k", func(k *config.Key) {
		k.RequestsPerSec, k.Burst = 1, 2
		k.TokensPerMinute = 1000
		k.MaxConcurrent = 1
		k.MonthlyRequests = 2
		k.MonthlyTokens = 1000
	})
	runScenarios(t, []scenario{{
		name: "rejections by concurrency",
		keys: []config.Key{k},
		steps: []step{
			{key: "k", tokens: 400, allowed: true},
			{key: "k", tokens: 400, limit: LimitConcurrency, retry: time.Second},
			{key: "k", tokens: 400, limit: LimitConcurrency, retry: time.Second},
			{key: "k", tokens: 400, limit: LimitConcurrency, retry: time.Second},
			{settle: 1, tokens: 400},
			// Had a rejection taken anything, the rate, tokens or monthly
			// quotas would reject this one.
			{key: "k", tokens: 600, allowed: true},
		},
	}})
}

func TestRuleLongestWaitReported(t *testing.T) {
	k := keyWith("k", func(k *config.Key) {
		k.RequestsPerSec, k.Burst = 1, 1
		k.TokensPerMinute = 100
	})
	runScenarios(t, []scenario{{
		name: "tokens outlast the rate",
		keys: []config.Key{k},
		steps: []step{
			{key: "k", tokens: 100, allowed: true},
			{key: "k", tokens: 100, limit: LimitTokens, remaining: 0, retry: time.Minute},
			{at: time.Second, key: "k", tokens: 100, limit: LimitTokens, retry: 59 * time.Second},
		},
	}})
}
