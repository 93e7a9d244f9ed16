package ratelimit

import (
	"sync/atomic"
)

// Reservation is the share of the limits an admitted request holds: a
// concurrency slot and its reserved tokens. Settle or Release it exactly
// once when the response ends; later calls do nothing, so a deferred
// Release after Settle is safe. Methods on a nil Reservation do nothing.
type Reservation struct {
	l         *Limiter
	key       *Key // nil without a key
	label     string
	model     string
	id        string
	month     string // month the tokens were reserved in
	tpmNeed   int64
	monthNeed int64
	requests  int64 // 1 when counted in monthly_requests, else 0
	// shared reports whether Redis admitted the request. One admitted
	// locally gets a lease in Redis from a reconciliation while it is in
	// flight (see localKey.unleased), and then settles as a shared one.
	shared bool
	entry  *windowEntry // local token window entry; nil without tokens_per_minute
	// state is the local state of key that the request took its share of,
	// so that settling frees that slot even after a reload removed the key.
	state *localKey

	done atomic.Bool
}

// Key returns the key of the request, nil for a request without a key.
func (r *Reservation) Key() *Key {
	if r == nil {
		return nil
	}
	return r.key
}

// Settle ends the request with the token counts the node reported, its
// prompt_eval_count and eval_count (or the usage of an OpenAI response),
// for streamed responses the counts of the final chunk. It charges the
// difference between prompt + completion and the reservation to the token
// limits, a refund when fewer were used, frees the concurrency slot, and
// counts llmproxy_tokens_total. Negative counts count as zero. With Redis
// it makes one script call, bounded by redis.timeout.
func (r *Reservation) Settle(prompt, completion int64) {
	if r == nil || !r.done.CompareAndSwap(false, true) {
		return
	}
	r.l.settle(r, max(0, prompt), max(0, completion), false)
}

// SettleUnserved ends a request that the proxy or the nodes failed to
// serve: one that found the queue full or no node in time, whose client
// left before any response byte, or that got a 5xx status from a node. It
// settles the tokens as Settle does and takes the request back out of
// monthly_requests. The request rate stays consumed, so that
// failing requests cannot be retried faster than the rate.
func (r *Reservation) SettleUnserved(prompt, completion int64) {
	if r == nil || !r.done.CompareAndSwap(false, true) {
		return
	}
	r.l.settle(r, max(0, prompt), max(0, completion), true)
}

// Release ends a request that used no tokens, such as one that failed
// before a node responded. It refunds the whole token reservation and frees
// the slot. The request still counts towards the request rate and
// monthly_requests; SettleUnserved refunds the latter.
func (r *Reservation) Release() { r.Settle(0, 0) }

func (l *Limiter) settle(r *Reservation, prompt, completion int64, unserved bool) {
	l.countTokens(r, prompt, completion)
	if r.key == nil {
		return
	}
	actual := prompt + completion
	now := l.now()
	// A request admitted without Redis settles locally, unless a
	// reconciliation has given it a lease in Redis since.
	if !r.shared && l.local.settleUnleased(r, actual, now.UnixMicro(), unserved) {
		return
	}
	l.leases.remove(r.id)
	res := l.settleShared(r, actual, unserved)
	l.local.settleShared(r, actual, now.UnixMicro(), unserved, res)
}

// settleShared settles in Redis a reservation that has a lease there.
// When Redis is down, the local store records the settlement for the next
// reconciliation, and the lease stays taken until then or until it
// expires.
func (l *Limiter) settleShared(r *Reservation, actual int64, unserved bool) sharedSettlement {
	now := l.now()
	if !l.useRedis(now) {
		return sharedSettlement{}
	}
	month, err := l.redis.settle(l.ctx, r, actual, unserved, now, r.state.lastRead(r.month))
	if err != nil {
		l.redisFailed(l.ctx, now, err)
		return sharedSettlement{}
	}
	l.redisSucceeded()
	return sharedSettlement{reached: true, month: month}
}

func (l *Limiter) countTokens(r *Reservation, prompt, completion int64) {
	if l.metrics == nil {
		return
	}
	if prompt <= 0 && completion <= 0 {
		return
	}
	c := l.metrics.TokensOf(r.label, r.model)
	if prompt > 0 {
		c.Prompt.Add(float64(prompt))
	}
	if completion > 0 {
		c.Completion.Add(float64(completion))
	}
}
