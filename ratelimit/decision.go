package ratelimit

import (
	"strconv"
	"time"
)

// Limit names one of the limits a request is checked against. Its value is
// the limit label of llmproxy_ratelimited_total.
type Limit string

// Limits, in the order Admit reports ties.
const (
	LimitRequests        Limit = "requests"
	LimitTokens          Limit = "tokens"
	LimitConcurrency     Limit = "concurrency"
	LimitMonthlyTokens   Limit = "monthly_tokens"
	LimitMonthlyRequests Limit = "monthly_requests"
)

// Indexes of the limits in an outcome; the Lua scripts use the same order.
const (
	slotRequests = iota
	slotTokens
	slotConcurrency
	slotMonthlyTokens
	slotMonthlyRequests
	numSlots
)

var slotLimits = [numSlots]Limit{
	LimitRequests, LimitTokens, LimitConcurrency, LimitMonthlyTokens, LimitMonthlyRequests,
}

// concurrencyRetry is the Retry-After of a request rejected for
// concurrency. No store can tell when a request in flight will end, so this
// is a hint, short because streams often end within seconds.
const concurrencyRetry = time.Second

// Decision is the result of Admit.
type Decision struct {
	// Allowed reports whether the request was admitted.
	Allowed bool
	// Limit is the limit that rejected the request. When several rejected
	// it, Limit is the one with the longest RetryAfter, because retrying
	// earlier would fail. For an admitted request Limit is the limit with
	// the smallest share left, which the X-RateLimit-* headers describe.
	// Empty when no limit applies to the request.
	Limit Limit
	// Quota is the size of Limit: the burst of a request rate, the tokens
	// per minute, the requests in flight or the monthly quota.
	Quota int64
	// Remaining is the part of Quota left after this request, or before it
	// when the request was rejected.
	Remaining int64
	// Reset is the time until Limit is back to its full Quota: the bucket
	// refilled, the token window emptied, or the next month begun. Zero for
	// concurrency, which frees only as requests end.
	Reset time.Duration
	// RetryAfter is the time until the request could be admitted, for a
	// rejected request, and zero otherwise.
	RetryAfter time.Duration
}

// Header is one response header of a Decision.
type Header struct {
	Name, Value string
}

// VisitHeaders calls set for each header the response carries:
// X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset when a
// limit applies, and Retry-After when the request was rejected. Reset and
// Retry-After are in whole seconds, rounded up, and Retry-After is at least
// 1. X-RateLimit-Reset is left out for concurrency, which has no reset time.
// set may be fasthttp's ResponseHeader.Set.
func (d Decision) VisitHeaders(set func(name, value string)) {
	if d.Limit == "" {
		return
	}
	set("X-RateLimit-Limit", strconv.FormatInt(d.Quota, 10))
	set("X-RateLimit-Remaining", strconv.FormatInt(d.Remaining, 10))
	if d.Limit != LimitConcurrency {
		set("X-RateLimit-Reset", strconv.FormatInt(ceilSeconds(d.Reset), 10))
	}
	if !d.Allowed {
		set("Retry-After", strconv.FormatInt(max(1, ceilSeconds(d.RetryAfter)), 10))
	}
}

// AppendHeaders appends the headers of VisitHeaders to dst and returns the
// extended slice.
func (d Decision) AppendHeaders(dst []Header) []Header {
	d.VisitHeaders(func(name, value string) {
		dst = append(dst, Header{Name: name, Value: value})
	})
	return dst
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// status is the state of one limit after a check, with times in
// microseconds. The in-memory store and the Lua script fill it alike.
type status struct {
	on        bool
	exceeded  bool
	remaining int64
	reset     int64
	retry     int64
}

// outcome is the result of one admission check in a store.
type outcome struct {
	allowed bool
	slots   [numSlots]status
	// month is the key's counts for the month after the check. Only Redis
	// fills its generation and version.
	month monthRead
}

func (o *outcome) anyExceeded() bool {
	for _, st := range o.slots {
		if st.exceeded {
			return true
		}
	}
	return false
}

// decide turns the outcome of a store into the Decision reported to the
// caller, filling in the values that depend only on the configuration.
func decide(a *admission, out *outcome) Decision {
	var best Decision
	found := false
	for i, st := range out.slots {
		if !st.on || (!out.allowed && !st.exceeded) {
			continue
		}
		d := slotDecision(a, i, st, out.allowed)
		if !found || tighter(d, best) {
			best, found = d, true
		}
	}
	if !found {
		return Decision{Allowed: out.allowed}
	}
	return best
}

// tighter reports whether d should be reported instead of other: for a
// rejection the longer wait, for an admission the smaller share left.
func tighter(d, other Decision) bool {
	if !d.Allowed {
		return d.RetryAfter > other.RetryAfter
	}
	return float64(d.Remaining)*float64(other.Quota) < float64(other.Remaining)*float64(d.Quota)
}

func slotDecision(a *admission, slot int, st status, allowed bool) Decision {
	d := Decision{
		Allowed:   allowed,
		Limit:     slotLimits[slot],
		Remaining: max(0, st.remaining),
		Reset:     microseconds(st.reset),
	}
	if st.exceeded {
		d.RetryAfter = microseconds(st.retry)
	}
	toMonthEnd := a.monthEnd.Sub(a.now)
	switch slot {
	case slotRequests:
		d.Quota = a.rate.burst
	case slotTokens:
		d.Quota = a.tpm
		if !st.exceeded {
			d.Reset = tokenWindowLength
		}
	case slotConcurrency:
		d.Quota = a.concurrency
		d.Reset = 0
		if st.exceeded {
			d.RetryAfter = concurrencyRetry
		}
	case slotMonthlyTokens, slotMonthlyRequests:
		d.Quota = a.monthTokens
		if slot == slotMonthlyRequests {
			d.Quota = a.monthRequests
		}
		d.Reset = toMonthEnd
		if st.exceeded {
			d.RetryAfter = toMonthEnd
		}
	}
	return d
}

func microseconds(us int64) time.Duration { return time.Duration(us) * time.Microsecond }
