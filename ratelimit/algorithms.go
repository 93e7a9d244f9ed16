package ratelimit

import (
	"math"
	"time"
)

// tokenWindowLength is the window of tokens_per_minute.
const tokenWindowLength = time.Minute

var tokenWindowMicros = tokenWindowLength.Microseconds()

// rate is a request rate enforced with GCRA, the generic cell rate
// algorithm, which admits the same requests as a token bucket of size burst
// refilled at the rate, but stores one timestamp instead of a count and a
// time. Times are in microseconds. The zero value means no limit.
type rate struct {
	interval int64 // between two requests at the sustained rate
	burst    int64
}

// newRate returns the rate for perSec requests per second; perSec of zero
// means no limit, and a burst below 1 counts as 1.
func newRate(perSec float64, burst int) rate {
	if perSec <= 0 {
		return rate{}
	}
	r := rate{
		interval: max(1, int64(math.Round(1e6/perSec))),
		burst:    max(1, int64(burst)),
	}
	return r
}

func (r rate) on() bool { return r.interval > 0 }

// check applies GCRA at now to tat, the stored theoretical arrival time (0
// when none is stored), and returns the time to store if the request is
// admitted. Each request moves tat one interval later; a request is
// admitted while tat stays within burst intervals of now.
func (r rate) check(tat, now int64) (int64, status) {
	tat = max(tat, now)
	next := tat + r.interval
	allowAt := next - r.interval*r.burst
	if now < allowAt {
		return tat, status{on: true, exceeded: true, reset: tat - now, retry: allowAt - now}
	}
	return next, status{on: true, remaining: (now - allowAt) / r.interval, reset: next - now}
}

// concurrencyStatus checks one more request against limit with inFlight
// requests already admitted.
func concurrencyStatus(inFlight, limit int64) status {
	if inFlight >= limit {
		return status{on: true, exceeded: true}
	}
	return status{on: true, remaining: limit - inFlight - 1}
}

// quotaStatus checks need more against limit with used already counted.
func quotaStatus(used, need, limit int64) status {
	if used+need > limit {
		return status{on: true, exceeded: true, remaining: max(0, limit-used)}
	}
	return status{on: true, remaining: limit - used - need}
}

// windowEntry is one reservation in a tokenLog.
type windowEntry struct {
	id      string // reservation ID, the member name in Redis's window
	at      int64  // admission time, microseconds
	amount  int64
	expired bool // left the window; amount no longer counts
	// synced reports whether Redis's window holds the entry at this
	// amount. Entries counted while Redis was unreachable are not synced
	// until a reconciliation adds them.
	synced bool
}

// tokenLog is the in-memory sliding window of tokens_per_minute: every
// reservation of the last minute with its current amount, oldest first.
type tokenLog struct {
	entries []*windowEntry
	sum     int64
	// others is the tokens that other instances held in the shared window
	// at the last Redis decision. They count until othersUntil, one window
	// after that decision, because the reply does not carry their times.
	others      int64
	othersUntil int64
}

// expire drops the entries admitted at or before cutoff.
func (w *tokenLog) expire(cutoff int64) {
	n := 0
	for n < len(w.entries) && w.entries[n].at <= cutoff {
		e := w.entries[n]
		e.expired = true
		w.sum -= e.amount
		w.entries[n] = nil
		n++
	}
	w.entries = w.entries[n:]
}

// othersAt returns the tokens of other instances that still count at now.
func (w *tokenLog) othersAt(now int64) int64 {
	if now < w.othersUntil {
		return w.others
	}
	return 0
}

// check tests need more tokens against limit at now. When they do not fit,
// retry is the time until enough of the oldest entries, and the tokens of
// other instances, leave the window.
func (w *tokenLog) check(limit, need, now int64) status {
	w.expire(now - tokenWindowMicros)
	others := w.othersAt(now)
	used := w.sum + others
	if used+need <= limit {
		return status{on: true, remaining: limit - used - need}
	}
	st := status{on: true, exceeded: true, remaining: max(0, limit-used), retry: tokenWindowMicros}
	if n := len(w.entries); n > 0 {
		st.reset = w.entries[n-1].at + tokenWindowMicros - now
	}
	if others > 0 {
		st.reset = max(st.reset, w.othersUntil-now)
	}
	// Free the entries and the tokens of other instances in the order
	// they leave the window, until need fits.
	freed := int64(0)
	othersLeft := others > 0
	for _, e := range w.entries {
		leaves := e.at + tokenWindowMicros
		if othersLeft && w.othersUntil <= leaves {
			othersLeft = false
			freed += others
			if used-freed+need <= limit {
				st.retry = w.othersUntil - now
				return st
			}
		}
		freed += e.amount
		if used-freed+need <= limit {
			st.retry = leaves - now
			return st
		}
	}
	if othersLeft && used-freed-others+need <= limit {
		st.retry = w.othersUntil - now
	}
	return st
}

// mirror records the token window that Redis reported for a at its
// decision. An admitted request gets its own entry, as a local admission
// would, and the rest of the shared window counts as the tokens of other
// instances. It returns the entry of an admitted request.
func (w *tokenLog) mirror(a *admission, out *outcome) *windowEntry {
	w.expire(a.nowMicros - tokenWindowMicros)
	st := out.slots[slotTokens]
	// The tokens in the shared window after the decision. Redis reports
	// the remaining tokens after the request when it was not rejected for
	// tokens, and before it otherwise.
	shared := a.tpm - st.remaining
	var e *windowEntry
	switch {
	case out.allowed:
		e = w.add(a.id, a.nowMicros, a.tpmNeed, true)
	case !st.exceeded:
		shared -= a.tpmNeed
	}
	w.others = max(0, shared-w.sum)
	w.othersUntil = a.nowMicros + tokenWindowMicros
	return e
}

func (w *tokenLog) add(id string, at, amount int64, synced bool) *windowEntry {
	e := &windowEntry{id: id, at: at, amount: amount, synced: synced}
	w.entries = append(w.entries, e)
	w.sum += amount
	return e
}

// adjust corrects the amount of e by delta. When e has already left the
// window, a refund has nothing left to correct, and an extra charge counts
// from now, under the ID that settle.lua gives it. stored reports whether
// Redis's window got the same correction.
func (w *tokenLog) adjust(e *windowEntry, delta, now int64, stored bool) {
	if !e.expired && e.at > now-tokenWindowMicros {
		amount := max(0, e.amount+delta)
		w.sum += amount - e.amount
		e.amount = amount
		e.synced = e.synced && stored
		return
	}
	if delta > 0 {
		w.add(e.id+"+", now, delta, stored)
	}
}

// unsynced returns the entries still in the window at now that Redis does
// not hold at their amount.
func (w *tokenLog) unsynced(now int64) []*windowEntry {
	var out []*windowEntry
	for _, e := range w.entries {
		if !e.synced && !e.expired && e.at > now-tokenWindowMicros {
			out = append(out, e)
		}
	}
	return out
}
