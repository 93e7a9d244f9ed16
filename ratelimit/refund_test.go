package ratelimit

import (
	"context"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

func TestSettleUnservedRefundsRequest(t *testing.T) {
	k := keyWith("k", func(k *config.Key) {
		k.MonthlyRequests, k.MonthlyTokens, k.MaxConcurrent = 2, 1000, 1
	})
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			clock := newFakeClock(testStart)
			l := b.newLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{k}}, Now: clock.Now})
			usage := func() KeyUsage { return l.Usage(context.Background())[0] }

			r := mustAdmit(t, l, "k", 300)
			r.SettleUnserved(0, 0)
			r.SettleUnserved(0, 0) // later calls do nothing
			r.Settle(0, 0)
			if u := usage(); u.MonthlyRequests != 0 || u.MonthlyTokens != 0 || u.InFlight != 0 {
				t.Errorf("after an unserved request: %+v, want nothing used", u)
			}

			// An unserved request is still charged the tokens it used.
			mustAdmit(t, l, "k", 300).SettleUnserved(5, 7)
			if u := usage(); u.MonthlyRequests != 0 || u.MonthlyTokens != 12 {
				t.Errorf("after an unserved request with tokens: %+v, want 0 requests, 12 tokens", u)
			}

			mustAdmit(t, l, "k", 10).Settle(1, 1)
			mustAdmit(t, l, "k", 10).Release()
			if d := mustReject(t, l, "k", 10); d.Limit != LimitMonthlyRequests {
				t.Errorf("third served request rejected by %s, want monthly_requests", d.Limit)
			}
			if u := usage(); u.MonthlyRequests != 2 || u.InFlight != 0 {
				t.Errorf("after two served requests: %+v, want 2 requests, none in flight", u)
			}
		})
	}
}

func TestUncountedRequestSkipsQuotas(t *testing.T) {
	k := keyWith("k", func(k *config.Key) {
		k.MonthlyRequests, k.MonthlyTokens, k.MaxConcurrent = 1, 100, 1
	})
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			clock := newFakeClock(testStart)
			l := b.newLimiter(t, Options{Auth: config.Auth{Keys: []config.Key{k}}, Now: clock.Now})
			uncounted := Request{Key: keyNamed(l, "k"), Uncounted: true}

			mustAdmit(t, l, "k", 100).Settle(60, 40) // both quotas used up
			d, r := l.Admit(context.Background(), uncounted)
			if !d.Allowed {
				t.Fatalf("uncounted request rejected by %s, want admitted", d.Limit)
			}
			if d, _ := l.Admit(context.Background(), uncounted); d.Allowed || d.Limit != LimitConcurrency {
				t.Errorf("second uncounted request: allowed %v by %s, want rejected by concurrency",
					d.Allowed, d.Limit)
			}
			r.Settle(0, 0)
			u := l.Usage(context.Background())[0]
			if u.MonthlyRequests != 1 || u.MonthlyTokens != 100 || u.InFlight != 0 {
				t.Errorf("usage %+v, want only the counted request", u)
			}
		})
	}
}

// TestSettleUnservedSeenByOtherInstances checks that the refund reaches
// Redis, not only the instance that settles.
func TestSettleUnservedSeenByOtherInstances(t *testing.T) {
	srv := testredis.Start(t)
	key := keyWith("k", func(k *config.Key) { k.MonthlyRequests = 1 })
	c := newCluster(t, srv, 2, key)
	a, b := c.instances[0], c.instances[1]

	mustAdmit(t, a, "k", 10).SettleUnserved(0, 0)
	mustAdmit(t, b, "k", 10).Settle(1, 1)
	if d := mustReject(t, a, "k", 10); d.Limit != LimitMonthlyRequests {
		t.Errorf("rejected by %s, want monthly_requests", d.Limit)
	}
	if u := a.Usage(context.Background())[0]; !u.Shared || u.MonthlyRequests != 1 {
		t.Errorf("usage %+v, want 1 shared request", u)
	}
}
