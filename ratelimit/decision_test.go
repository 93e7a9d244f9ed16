package ratelimit

import (
	"slices"
	"testing"
	"time"
)

func TestDecisionHeaders(t *testing.T) {
	cases := []struct {
		name string
		d    Decision
		want []Header
	}{
		{
			name: "no limit",
			d:    Decision{Allowed: true},
			want: nil,
		},
		{
			name: "admitted",
			d: Decision{Allowed: true, Limit: LimitRequests, Quota: 20, Remaining: 19,
				Reset: 50 * time.Millisecond},
			want: []Header{
				{"X-RateLimit-Limit", "20"}, {"X-RateLimit-Remaining", "19"},
				{"X-RateLimit-Reset", "1"},
			},
		},
		{
			name: "rejected rounds up",
			d: Decision{Limit: LimitTokens, Quota: 1000, Remaining: 100,
				Reset: 50*time.Second + time.Millisecond, RetryAfter: 30*time.Second + time.Microsecond},
			want: []Header{
				{"X-RateLimit-Limit", "1000"}, {"X-RateLimit-Remaining", "100"},
				{"X-RateLimit-Reset", "51"}, {"Retry-After", "31"},
			},
		},
		{
			name: "retry after at least one second",
			d:    Decision{Limit: LimitRequests, Quota: 1, RetryAfter: time.Millisecond},
			want: []Header{
				{"X-RateLimit-Limit", "1"}, {"X-RateLimit-Remaining", "0"},
				{"X-RateLimit-Reset", "0"}, {"Retry-After", "1"},
			},
		},
		{
			name: "concurrency has no reset",
			d:    Decision{Limit: LimitConcurrency, Quota: 2, RetryAfter: time.Second},
			want: []Header{
				{"X-RateLimit-Limit", "2"}, {"X-RateLimit-Remaining", "0"}, {"Retry-After", "1"},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.d.AppendHeaders(nil)
			if !slices.Equal(got, tc.want) {
				t.Errorf("headers = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDecideReportsLongestWait(t *testing.T) {
	a := &admission{now: testStart, rate: rate{interval: 1e6, burst: 1}, tpm: 100}
	a.month, a.monthEnd = monthOf(testStart)
	out := outcome{}
	out.slots[slotRequests] = status{on: true, exceeded: true, retry: 1e6}
	out.slots[slotTokens] = status{on: true, exceeded: true, retry: 40e6, remaining: 10}
	d := decide(a, &out)
	if d.Limit != LimitTokens {
		t.Errorf("limit = %s, want %s", d.Limit, LimitTokens)
	}
	if d.RetryAfter != 40*time.Second {
		t.Errorf("retry after = %s, want 40s", d.RetryAfter)
	}
}

func TestDecideReportsSmallestShare(t *testing.T) {
	a := &admission{now: testStart, rate: rate{interval: 1e5, burst: 10}, tpm: 1000}
	a.month, a.monthEnd = monthOf(testStart)
	out := outcome{allowed: true}
	out.slots[slotRequests] = status{on: true, remaining: 5} // half left
	out.slots[slotTokens] = status{on: true, remaining: 100} // a tenth left
	d := decide(a, &out)
	if d.Limit != LimitTokens || d.Quota != 1000 || d.Remaining != 100 {
		t.Errorf("decision = %+v, want tokens with 100 of 1000 left", d)
	}
	if d.Reset != time.Minute {
		t.Errorf("reset = %s, want the token window, 1m", d.Reset)
	}
}

func TestMonthOf(t *testing.T) {
	cases := []struct {
		at        time.Time
		month     string
		nextStart time.Time
	}{
		{time.Date(2026, 1, 31, 23, 59, 59, 0, time.UTC), "2026-01",
			time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)},
		{time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "2026-12",
			time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		// 2026-03-01 01:00 in UTC+2 is still February in UTC.
		{time.Date(2026, 3, 1, 1, 0, 0, 0, time.FixedZone("", 2*3600)), "2026-02",
			time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tc := range cases {
		month, next := monthOf(tc.at)
		if month != tc.month || !next.Equal(tc.nextStart) {
			t.Errorf("monthOf(%s) = %s, %s, want %s, %s", tc.at, month, next, tc.month, tc.nextStart)
		}
	}
}
