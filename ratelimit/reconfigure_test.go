package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// usageOf returns the Usage entry of the key named name.
func usageOf(t *testing.T, l *Limiter, name string) KeyUsage {
	t.Helper()
	for _, u := range l.Usage(context.Background()) {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("Usage lists no key %q", name)
	return KeyUsage{}
}

func mustReconfigure(t *testing.T, l *Limiter, keys ...config.Key) {
	t.Helper()
	if err := l.Reconfigure(config.Auth{Keys: keys}, config.RateLimit{}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
}

// TestReconfigureKeepsStateByName reconfigures a key with a new secret and
// new limits: its slot and monthly count stay, and the new limits apply
// to them at once.
func TestReconfigureKeepsStateByName(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			limited := func(secret string, monthly int64) config.Key {
				k := hashedKey("a", secret)
				k.MaxConcurrent, k.MonthlyRequests = 1, monthly
				return k
			}
			l := b.newLimiter(t, Options{
				Auth: config.Auth{Keys: []config.Key{limited("first", 3)}},
				Now:  newFakeClock(testStart).Now,
			})
			held := mustAdmit(t, l, "a", 10)

			mustReconfigure(t, l, limited("second", 3), hashedKey("b", "b-secret"))
			if k, err := l.Authenticate([]byte("Bearer first"), nil); k != nil || err != nil {
				t.Errorf("old secret: key %v, error %v; want no key", k, err)
			}
			if k, err := l.Authenticate([]byte("Bearer second"), nil); err != nil || k.Name != "a" {
				t.Fatalf("new secret: key %v, error %v; want key a", k, err)
			}
			if d := mustReject(t, l, "a", 10); d.Limit != LimitConcurrency {
				t.Errorf("while the slot is held: rejected by %s, want %s", d.Limit, LimitConcurrency)
			}
			if u := usageOf(t, l, "a"); u.InFlight != 1 || u.MonthlyRequests != 1 {
				t.Errorf("usage after the reconfigure %+v, want 1 in flight and 1 request", u)
			}

			held.Release()
			mustAdmit(t, l, "a", 10).Release()
			mustReconfigure(t, l, limited("second", 2))
			if d := mustReject(t, l, "a", 10); d.Limit != LimitMonthlyRequests {
				t.Errorf("over the lowered quota: rejected by %s, want %s", d.Limit, LimitMonthlyRequests)
			}
			if u := usageOf(t, l, "a"); u.InFlight != 0 || u.MonthlyRequests != 2 {
				t.Errorf("usage at the end %+v, want none in flight and 2 requests", u)
			}
		})
	}
}

// TestReconfigureDropsRemovedKey removes a key with a request in flight and
// adds it back: the request settles without a trace in the new state.
func TestReconfigureDropsRemovedKey(t *testing.T) {
	a := keyWith("a", func(k *config.Key) { k.MaxConcurrent, k.MonthlyRequests = 1, 5 })
	b := hashedKey("b", "b-secret")
	l := newTestLimiter(t, Options{
		Auth: config.Auth{Keys: []config.Key{a, b}},
		Now:  newFakeClock(testStart).Now,
	})
	held := mustAdmit(t, l, "a", 10)
	stale := keyNamed(l, "a")

	mustReconfigure(t, l, b)
	if n := len(l.Keys()); n != 1 {
		t.Fatalf("%d keys after the removal, want 1", n)
	}
	// A request that authenticated before the removal admits against a
	// state of its own.
	d, r := l.Admit(context.Background(), Request{Key: stale, Tokens: 10})
	if !d.Allowed {
		t.Errorf("request of the removed key rejected by %s, want admitted", d.Limit)
	}
	r.Release()

	mustReconfigure(t, l, a, b)
	held.Release()
	if u := usageOf(t, l, "a"); u.InFlight != 0 || u.MonthlyRequests != 0 {
		t.Errorf("usage of the key added back %+v, want none", u)
	}
	mustAdmit(t, l, "a", 10).Release()
	if u := usageOf(t, l, "a"); u.InFlight != 0 || u.MonthlyRequests != 1 {
		t.Errorf("usage after one request %+v, want none in flight and 1 request", u)
	}
}

// TestReconfigureKeepsAddressState spends the burst of a client address
// and reconfigures the address rate: the spent burst stays.
func TestReconfigureKeepsAddressState(t *testing.T) {
	l := newTestLimiter(t, Options{
		RateLimit: config.RateLimit{PerAddress: 1, Burst: 1},
		Now:       newFakeClock(testStart).Now,
	})
	admitAddr := func() Decision {
		d, r := l.Admit(context.Background(), Request{Addr: "192.0.2.1"})
		r.Release()
		return d
	}
	if d := admitAddr(); !d.Allowed {
		t.Fatalf("first request rejected by %s", d.Limit)
	}
	err := l.Reconfigure(config.Auth{}, config.RateLimit{PerAddress: 0.5, Burst: 1})
	if err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	if d := admitAddr(); d.Allowed {
		t.Error("second request admitted after the reconfigure, want the spent burst to stay")
	}
}

// TestReconfigureRejectsInvalid checks that an invalid configuration
// changes nothing.
func TestReconfigureRejectsInvalid(t *testing.T) {
	l := newTestLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{hashedKey("a", "a-secret")}}})
	bad := config.Key{Name: "b", SHA256: "not hex"}
	err := l.Reconfigure(config.Auth{Keys: []config.Key{bad}}, config.RateLimit{Burst: -1})
	if err == nil {
		t.Fatal("Reconfigure with an invalid key and burst: no error")
	}
	if k, err := l.Authenticate([]byte("Bearer a-secret"), nil); err != nil || k.Name != "a" {
		t.Errorf("key a after the failed reconfigure: key %v, error %v; want key a", k, err)
	}
}

// TestRedisRejectionTakesNoLocalSlot rejects a request in Redis for its
// concurrency, then stops Redis: the instance's own count holds only the
// request it admitted, so it admits again once that one settles.
func TestRedisRejectionTakesNoLocalSlot(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MaxConcurrent = 1 })
	l := backend{name: "redis", redis: srv}.newLimiter(t, Options{
		Auth: config.Auth{Keys: []config.Key{key}},
		Now:  newFakeClock(testStart).Now,
	})
	held := mustAdmit(t, l, "k", 10)
	if d := mustReject(t, l, "k", 10); d.Limit != LimitConcurrency {
		t.Fatalf("second request rejected by %s, want %s", d.Limit, LimitConcurrency)
	}
	held.Release()

	srv.Stop()
	mustAdmit(t, l, "k", 10).Release()
	if u := usageOf(t, l, "k"); u.Shared || u.InFlight != 0 {
		t.Errorf("usage during the outage %+v, want none in flight on this instance", u)
	}
}

// TestReconfigureKeepsTokenWindow fills the token window, reconfigures, and
// settles the request for fewer tokens: the window keeps the reservation
// and then its settled count.
func TestReconfigureKeepsTokenWindow(t *testing.T) {
	clock := newFakeClock(testStart)
	k := keyWith("k", func(k *config.Key) { k.TokensPerMinute = 100 })
	l := newTestLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{k}}, Now: clock.Now})
	held := mustAdmit(t, l, "k", 100)
	mustReconfigure(t, l, k)
	if d := mustReject(t, l, "k", 1); d.Limit != LimitTokens {
		t.Errorf("with the window full: rejected by %s, want %s", d.Limit, LimitTokens)
	}
	held.Settle(10, 10)
	mustReconfigure(t, l, k)
	clock.Advance(time.Second)
	mustAdmit(t, l, "k", 80).Settle(40, 40)
	if d := mustReject(t, l, "k", 1); d.Limit != LimitTokens {
		t.Errorf("with 20 settled and 80 more: rejected by %s, want %s", d.Limit, LimitTokens)
	}
	if u := usageOf(t, l, "k"); u.InFlight != 0 {
		t.Errorf("in flight %d, want 0", u.InFlight)
	}
}
