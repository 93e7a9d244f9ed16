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
// continues from that state instead of starting with full buckets. It also
// records what the instance counts of a key while Redis is unreachable,
// which a reconciliation adds to Redis once Redis responds again.
type localStore struct {
	// shared is set when Redis is configured, so that the counts made
	// without it are kept for reconciliation.
	shared bool
	// keys maps each configured key name to its state. setKeys replaces
	// the map and carries the state of the names it keeps.
	keys atomic.Pointer[map[string]*localKey]

	addrsMu sync.Mutex
	addrs   map[string]int64 // GCRA time by client subject
	sweepAt int64            // next sweep of addrs, microseconds
}

// localKey is the state of one key. mu guards every field but syncMu.
type localKey struct {
	// syncMu serializes the reconciliations of the key. It is held during
	// the Redis call, and taken before mu.
	syncMu sync.Mutex

	mu       sync.Mutex
	tat      int64
	window   tokenLog
	inflight int64
	month    string // the latest month admitted in, "2006-01"
	// months holds the counts of the current month and of earlier months
	// whose counts made without Redis have not reached Redis yet.
	months map[string]*monthLedger

	// Counts made without Redis, kept only when Redis is configured.
	//
	// syncedTAT is the GCRA time of the last Redis decision or
	// reconciliation; tat beyond it counts admissions Redis has not seen.
	syncedTAT int64
	// unleased maps the ID of each request admitted without Redis and not
	// yet settled to its reservation, which has no lease in Redis.
	unleased map[string]*Reservation
	// released lists the leases in Redis of requests settled while Redis
	// was unreachable, oldest first.
	released []releasedLease
	// changes counts the changes made without Redis, and syncedChanges
	// the changes that the last reconciliation covered.
	changes, syncedChanges uint64
}

// monthLedger is one month's counts of a key. Without Redis, counted is
// the whole count. With Redis, shared is the count of the latest read of
// the month hash, and counted − stored is what this instance counted while
// Redis was unreachable and has not yet added to Redis. counted and stored
// only accumulate over the life of the instance, so that a reconciliation
// sent twice adds its counts once (see sync.lua).
type monthLedger struct {
	shared, counted, stored monthCounts
	// gen and version are those of the month hash at the read of shared,
	// gen 0 when Redis had none. With shared they restore the month when
	// Redis loses it (see month.lua).
	gen, version int64
}

// lastRead returns the latest read of the month hash.
func (m *monthLedger) lastRead() monthRead {
	return monthRead{counts: m.shared, gen: m.gen, version: m.version}
}

// setRead records r as the latest read of the month hash, unless the
// ledger holds a later read of the same hash, which a reply that arrived
// out of order would otherwise replace.
func (m *monthLedger) setRead(r monthRead) {
	if !r.newer(m.lastRead()) {
		return
	}
	m.shared, m.gen, m.version = r.counts, r.gen, r.version
}

// total returns the month's counts: the last ones from Redis plus those
// not yet added to Redis.
func (m *monthLedger) total() monthCounts {
	p := m.pending()
	return monthCounts{
		tokens:   max(0, m.shared.tokens+p.tokens),
		requests: max(0, m.shared.requests+p.requests),
	}
}

// pending returns the counts not yet added to Redis.
func (m *monthLedger) pending() monthCounts {
	return monthCounts{
		tokens:   m.counted.tokens - m.stored.tokens,
		requests: m.counted.requests - m.stored.requests,
	}
}

// releasedLease is a lease in Redis whose request ended while Redis was
// unreachable.
type releasedLease struct {
	id string
	at int64 // settlement time, microseconds
}

func newLocalStore(shared bool) *localStore {
	s := &localStore{shared: shared, addrs: make(map[string]int64)}
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
	s.rollMonthLocked(k, a.month)
	month := k.ledgerLocked(a.month)
	counts := month.total()
	checkMonthly(a, &out, counts.tokens, counts.requests)
	out.allowed = !out.anyExceeded()
	if !out.allowed {
		out.month.counts = counts
		return out, nil
	}

	// Every limit passed: consume.
	var entry *windowEntry
	k.tat = tat
	if a.tpm > 0 {
		entry = k.window.add(a.id, a.nowMicros, a.tpmNeed, false)
	}
	k.inflight++
	month.counted.tokens += a.monthNeed
	month.counted.requests += a.requestNeed
	k.changes++
	counts = month.total()
	out.month.counts = counts
	return out, entry
}

// addUnleased records r, which this instance admitted without Redis, so
// that a reconciliation gives it a lease in Redis while it is in flight.
func (s *localStore) addUnleased(r *Reservation) {
	if !s.shared {
		return
	}
	k := r.state
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.unleased == nil {
		k.unleased = make(map[string]*Reservation)
	}
	k.unleased[r.id] = r
	k.changes++
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
// current one. Without Redis it drops the earlier months. With Redis,
// prepareSync drops those that Redis has every count of, because it runs
// while no reconciliation is in flight.
func (s *localStore) rollMonthLocked(k *localKey, month string) {
	if month <= k.month {
		return
	}
	k.month = month
	if s.shared {
		return
	}
	for name := range k.months {
		if name < month {
			delete(k.months, name)
		}
	}
}

// ledgerLocked returns the counts of month, which it creates empty.
func (k *localKey) ledgerLocked(month string) *monthLedger {
	if k.months == nil {
		k.months = make(map[string]*monthLedger)
	}
	m := k.months[month]
	if m == nil {
		m = &monthLedger{}
		k.months[month] = m
	}
	return m
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
		k.tat, k.syncedTAT = mergeTAT(k.tat, a, out)
	}
	var entry *windowEntry
	if a.tpm > 0 {
		entry = k.window.mirror(a, out)
	}
	if out.allowed {
		k.inflight++
	}
	s.setSharedMonthLocked(k, a.month, out.month)
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
	tat, _ := mergeTAT(s.addrs[a.subject], a, out)
	s.addrs[a.subject] = tat
}

// mergeTAT returns the GCRA time to store locally after Redis decided a:
// the later of the local time, charged with a when Redis admitted it, and
// the time Redis stored, which it also returns. Both only grow, so the
// later one never admits a request that either would reject.
func mergeTAT(local int64, a *admission, out *outcome) (tat, shared int64) {
	st := out.slots[slotRequests]
	shared = a.nowMicros + st.reset
	if !out.allowed && !st.exceeded {
		// Another limit rejected the request: Redis reported the time
		// after it, which it did not store.
		shared -= a.rate.interval
	}
	tat = max(local, shared)
	if out.allowed {
		tat = max(tat, max(local, a.nowMicros)+a.rate.interval)
	}
	return tat, shared
}

// known returns the local state that the Redis admission of a merges
// with its own: the GCRA time of the key or address, and the latest read
// of the key's month. The counts made without Redis are left out, because
// a reconciliation adds them.
func (s *localStore) known(a *admission) (int64, monthRead) {
	if a.key == nil {
		s.addrsMu.Lock()
		defer s.addrsMu.Unlock()
		return s.addrs[a.subject], monthRead{}
	}
	k := a.state
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tat, k.lastReadLocked(a.month)
}

// lastRead returns the latest read of month, empty when k has none.
func (k *localKey) lastRead(month string) monthRead {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastReadLocked(month)
}

func (k *localKey) lastReadLocked(month string) monthRead {
	if m := k.months[month]; m != nil {
		return m.lastRead()
	}
	return monthRead{}
}

// setSharedMonthLocked records read, a read of month from Redis.
func (s *localStore) setSharedMonthLocked(k *localKey, month string, read monthRead) {
	s.rollMonthLocked(k, month)
	if month == k.month || k.months[month] != nil {
		k.ledgerLocked(month).setRead(read)
	}
}

// setSharedMonth records read, a read of month from Redis.
func (s *localStore) setSharedMonth(k *localKey, month string, read monthRead) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s.setSharedMonthLocked(k, month, read)
}

// settleUnleased settles r, which this instance admitted without Redis.
// It frees the slot and corrects the token window and the month's counts
// of r by the actual tokens used. When unserved is set, it also takes r
// back out of the month's request count. It returns false, and changes
// nothing, when a reconciliation has since given r a lease in Redis, so
// that r settles as one that Redis admitted.
func (s *localStore) settleUnleased(r *Reservation, actual, now int64, unserved bool) bool {
	k := r.state
	k.mu.Lock()
	defer k.mu.Unlock()
	if s.shared {
		if k.unleased[r.id] == nil {
			return false
		}
		delete(k.unleased, r.id)
		k.changes++
	}
	k.inflight--
	if r.entry != nil {
		k.window.adjust(r.entry, actual-r.tpmNeed, now, false)
	}
	s.correctMonthLocked(k, r, actual, unserved, func(m *monthLedger) *monthCounts {
		return &m.counted
	})
	return true
}

// sharedSettlement is how far Redis took the settlement of a reservation
// that it admitted.
type sharedSettlement struct {
	// reached reports whether the settlement script ran, which freed the
	// lease and corrected the token window and the month's counts, which
	// month then holds.
	reached bool
	month   monthRead
}

// settleShared settles r, which Redis admitted, after Redis settled it as
// far as res reports. It frees the slot and corrects the local token
// window and month's counts. What Redis did not store is recorded for
// the next reconciliation.
func (s *localStore) settleShared(
	r *Reservation,
	actual, now int64,
	unserved bool,
	res sharedSettlement,
) {
	k := r.state
	k.mu.Lock()
	defer k.mu.Unlock()
	k.inflight--
	if r.entry != nil {
		k.window.adjust(r.entry, actual-r.tpmNeed, now, res.reached)
	}
	switch {
	case res.reached:
		s.setSharedMonthLocked(k, r.month, res.month)
	default:
		s.correctMonthLocked(k, r, actual, unserved, func(m *monthLedger) *monthCounts {
			return &m.counted
		})
		k.released = append(k.released, releasedLease{id: r.id, at: now})
		k.changes++
	}
}

// correctMonthLocked corrects the counts that part selects in the month
// of r: the tokens by the actual count, and the requests by r when
// unserved is set. Without Redis only the current month is corrected.
func (s *localStore) correctMonthLocked(
	k *localKey,
	r *Reservation,
	actual int64,
	unserved bool,
	part func(*monthLedger) *monthCounts,
) {
	if !s.shared && r.month != k.month {
		return
	}
	c := part(k.ledgerLocked(r.month))
	c.tokens += actual - r.monthNeed
	if unserved {
		c.requests -= r.requests
	}
}

// snapshot returns the in-flight and monthly counts of k for month.
func (k *localKey) snapshot(month string) (inflight, tokens, requests int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if m := k.months[month]; m != nil {
		c := m.total()
		tokens, requests = c.tokens, c.requests
	}
	return k.inflight, tokens, requests
}

// dirty reports whether k has changes made without Redis that no
// reconciliation has covered yet.
func (k *localKey) dirty() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changes != k.syncedChanges
}
