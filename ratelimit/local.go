package ratelimit

import (
	"sync"
	"sync/atomic"
)

// addrSweepMicros is how often the per-address states whose bucket is full
// again are dropped, so that the map stays as small as the set of recent
// clients.
const addrSweepMicros = 60_000_000

// localStore holds the limits of one instance in memory. It decides alone
// without Redis and during a Redis outage. With Redis it mirrors every
// decision Redis makes for this instance: the request rate, the token
// window, the requests in flight and the monthly counts. So a fallback
// continues from that state instead of starting with full buckets.
type localStore struct {
	// keys maps each configured key name to its state. setKeys replaces
	// the map and carries the state of the names it keeps.
	keys atomic.Pointer[map[string]*localKey]

	addrsMu sync.Mutex
	addrs   map[string]int64 // GCRA time by client subject
	sweepAt int64            // next sweep of addrs, microseconds
}

// localKey is the state of one key.
type localKey struct {
	mu            sync.Mutex
	tat           int64
	window        tokenLog
	inflight      int64
	month         string // month of monthTokens and monthRequests, "2006-01"
	monthTokens   int64
	monthRequests int64
}

func newLocalStore() *localStore {
	s := &localStore{addrs: make(map[string]int64)}
	s.keys.Store(&map[string]*localKey{})
	return s
}

// setKeys makes keys the configured keys. A key whose name was configured
// before keeps its state, a new name starts with none, and the state of a
// name no longer configured is dropped. Callers serialize setKeys.
func (s *localStore) setKeys(keys []*Key) {
	old := *s.keys.Load()
	next := make(map[string]*localKey, len(keys))
	for _, k := range keys {
		st := old[k.Name]
		if st == nil {
			st = &localKey{}
		}
		next[k.Name] = st
	}
	s.keys.Store(&next)
}

// state returns the state of the key named name. For a name that is not
// configured, because a reload removed the key after Authenticate returned
// it, it returns a new state that no later request shares.
func (s *localStore) state(name string) *localKey {
	if k := (*s.keys.Load())[name]; k != nil {
		return k
	}
	return &localKey{}
}

// admit checks and, when every limit passes, consumes the request's share.
// It returns the token window entry of the reservation, if any.
func (s *localStore) admit(a *admission) (outcome, *windowEntry) {
	if a.key == nil {
		return s.admitAddr(a), nil
	}
	k := a.state
	k.mu.Lock()
	defer k.mu.Unlock()

	var out outcome
	tat := k.tat
	if a.rate.on() {
		tat, out.slots[slotRequests] = a.rate.check(k.tat, a.nowMicros)
	}
	if a.tpm > 0 {
		out.slots[slotTokens] = k.window.check(a.tpm, a.tpmNeed, a.nowMicros)
	}
	if a.concurrency > 0 {
		out.slots[slotConcurrency] = concurrencyStatus(k.inflight, a.concurrency)
	}
	k.rollMonthLocked(a.month)
	checkMonthly(a, &out, k.monthTokens, k.monthRequests)
	out.allowed = !out.anyExceeded()
	if !out.allowed {
		out.monthTokens, out.monthRequests = k.monthTokens, k.monthRequests
		return out, nil
	}

	// Every limit passed: consume.
	var entry *windowEntry
	k.tat = tat
	if a.tpm > 0 {
		entry = k.window.add(a.nowMicros, a.tpmNeed)
	}
	k.inflight++
	k.monthTokens += a.monthNeed
	k.monthRequests += a.requestNeed
	out.monthTokens, out.monthRequests = k.monthTokens, k.monthRequests
	return out, entry
}

// checkMonthly fills the monthly slots of out from the month's counts.
func checkMonthly(a *admission, out *outcome, tokens, requests int64) {
	if a.monthTokens > 0 {
		out.slots[slotMonthlyTokens] = quotaStatus(tokens, a.monthNeed, a.monthTokens)
	}
	if a.monthRequests > 0 {
		out.slots[slotMonthlyRequests] = quotaStatus(requests, a.requestNeed, a.monthRequests)
	}
}

// rollMonthLocked starts a new month's counts when month is later than the
// stored one.
func (k *localKey) rollMonthLocked(month string) {
	if month > k.month {
		k.month, k.monthTokens, k.monthRequests = month, 0, 0
	}
}

func (s *localStore) admitAddr(a *admission) outcome {
	s.addrsMu.Lock()
	defer s.addrsMu.Unlock()
	s.sweepLocked(a.nowMicros)
	tat, st := a.rate.check(s.addrs[a.subject], a.nowMicros)
	if !st.exceeded {
		s.addrs[a.subject] = tat
	}
	out := outcome{allowed: !st.exceeded}
	out.slots[slotRequests] = st
	return out
}

// sweepLocked drops the clients whose bucket is full again, which is the
// same state as no entry.
func (s *localStore) sweepLocked(now int64) {
	if now < s.sweepAt {
		return
	}
	for subject, tat := range s.addrs {
		if tat <= now {
			delete(s.addrs, subject)
		}
	}
	s.sweepAt = now + addrSweepMicros
}

// mirror records a request that Redis decided, so that a fallback
// continues from it. The request rate and the token window take the
// shared state from the reply, and an admitted request also consumes them
// as a local admission would. The month's counts are the shared ones. An
// admitted request holds a slot of this instance, while a rejected one
// holds none because it is never settled. It returns the token window entry of an
// admitted request, which Settle corrects.
func (s *localStore) mirror(a *admission, out *outcome) *windowEntry {
	if a.key == nil {
		s.mirrorAddr(a, out)
		return nil
	}
	k := a.state
	k.mu.Lock()
	defer k.mu.Unlock()
	if a.rate.on() {
		k.tat = mergeTAT(k.tat, a, out)
	}
	var entry *windowEntry
	if a.tpm > 0 {
		entry = k.window.mirror(a, out)
	}
	if out.allowed {
		k.inflight++
	}
	k.setMonthLocked(a.month, out.monthTokens, out.monthRequests)
	return entry
}

// mirrorAddr records the request rate of a client address that Redis
// decided.
func (s *localStore) mirrorAddr(a *admission, out *outcome) {
	if !a.rate.on() {
		return
	}
	s.addrsMu.Lock()
	defer s.addrsMu.Unlock()
	s.sweepLocked(a.nowMicros)
	s.addrs[a.subject] = mergeTAT(s.addrs[a.subject], a, out)
}

// mergeTAT returns the GCRA time to store locally after Redis decided a:
// the later of the local time, charged with a when Redis admitted it, and
// the time Redis stored. Both only grow, so the later one never admits a
// request that either would reject.
func mergeTAT(local int64, a *admission, out *outcome) int64 {
	st := out.slots[slotRequests]
	shared := a.nowMicros + st.reset
	if !out.allowed && !st.exceeded {
		// Another limit rejected the request: Redis reported the time
		// after it, which it did not store.
		shared -= a.rate.interval
	}
	tat := max(local, shared)
	if out.allowed {
		tat = max(tat, max(local, a.nowMicros)+a.rate.interval)
	}
	return tat
}

// known returns the local state that the Redis admission of a merges
// with its own: the GCRA time of the key or address, and the month's
// counts of a key.
func (s *localStore) known(a *admission) (tat, tokens, requests int64) {
	if a.key == nil {
		s.addrsMu.Lock()
		defer s.addrsMu.Unlock()
		return s.addrs[a.subject], 0, 0
	}
	k := a.state
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.month == a.month {
		tokens, requests = k.monthTokens, k.monthRequests
	}
	return k.tat, tokens, requests
}

// mirrorMonth stores the monthly counts that Redis returned for r.
func (s *localStore) mirrorMonth(r *Reservation, tokens, requests int64) {
	k := r.state
	k.mu.Lock()
	defer k.mu.Unlock()
	k.setMonthLocked(r.month, tokens, requests)
}

func (k *localKey) setMonthLocked(month string, tokens, requests int64) {
	k.rollMonthLocked(month)
	if month == k.month {
		k.monthTokens, k.monthRequests = tokens, requests
	}
}

// settle frees the slot of r and corrects its token window entry by the
// actual tokens used. With correctMonth set it also corrects the month's
// token count, and takes r back out of the month's request count when
// unserved is set. A caller that has just stored the shared counts from
// Redis leaves correctMonth unset.
func (s *localStore) settle(r *Reservation, actual, now int64, correctMonth, unserved bool) {
	k := r.state
	k.mu.Lock()
	defer k.mu.Unlock()
	k.inflight--
	if r.entry != nil {
		k.window.adjust(r.entry, actual-r.tpmNeed, now)
	}
	if correctMonth && r.month == k.month {
		k.monthTokens = max(0, k.monthTokens+actual-r.monthNeed)
		if unserved {
			k.monthRequests = max(0, k.monthRequests-r.requests)
		}
	}
}

// snapshot returns the in-flight and monthly counts of k for month.
func (k *localKey) snapshot(month string) (inflight, tokens, requests int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.month == month {
		tokens, requests = k.monthTokens, k.monthRequests
	}
	return k.inflight, tokens, requests
}
