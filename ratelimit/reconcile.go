package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// A reconciliation adds to Redis what this instance counted of a key while
// Redis was unreachable. That is the admissions beyond the request rate
// state in Redis, the reservations in the token window, leases for the
// requests still in flight, the end of the leases of requests settled
// meanwhile, and each month's counts. Redis adds them to what the other instances
// counted, in one script call per key, and the instance then continues
// from Redis's totals. The health check runs it for every key soon after
// Redis answers again, and Admit runs it for the request's key before the
// key's first admission in Redis.

// syncPayload is the batch that sync.lua decodes; see there for the fields.
type syncPayload struct {
	Instance     string      `json:"instance"`
	Now          int64       `json:"now"`
	Rate         *syncRate   `json:"rate,omitempty"`
	WindowLength int64       `json:"window_length"`
	Window       []syncEntry `json:"window,omitempty"`
	LeaseTTL     int64       `json:"lease_ttl"`
	Leases       []string    `json:"leases,omitempty"`
	Released     []string    `json:"released,omitempty"`
	Months       []syncMonth `json:"months,omitempty"`
	Gen          int64       `json:"gen"`
}

type syncRate struct {
	Interval int64 `json:"interval"`
	Burst    int64 `json:"burst"`
	TAT      int64 `json:"tat"`
	Synced   int64 `json:"synced"`
}

type syncEntry struct {
	ID     string `json:"id"`
	At     int64  `json:"at"`
	Amount int64  `json:"amount"`
}

type syncMonth struct {
	Counted syncCounts `json:"counted"`
	Stored  syncCounts `json:"stored"`
	Shared  syncRead   `json:"shared"`
	TTL     int64      `json:"ttl"`
}

type syncRead struct {
	Tokens   int64 `json:"tokens"`
	Requests int64 `json:"requests"`
	Gen      int64 `json:"gen"`
	Version  int64 `json:"version"`
}

type syncCounts struct {
	Tokens   int64 `json:"tokens"`
	Requests int64 `json:"requests"`
}

func toSyncCounts(c monthCounts) syncCounts {
	return syncCounts{Tokens: c.tokens, Requests: c.requests}
}

// syncBatch is one reconciliation of a key: the payload, and what the
// acknowledgement needs to mark as stored.
type syncBatch struct {
	payload  syncPayload
	months   []string       // month of each payload.Months entry
	entries  []*windowEntry // entry of each payload.Window entry
	released int            // leading entries of the key's released leases sent
	changes  uint64         // the key's changes that the batch covers
}

// syncReply is the reply of sync.lua.
type syncReply struct {
	tat    int64
	months []monthRead // in the order of the batch's months
}

// prepareSync returns the batch that reconciles k at now, or nil when
// Redis has everything. r is the key's request rate. The caller holds
// k.syncMu until it has acknowledged the batch, so that the months in the
// batch stay in k.months.
func (s *localStore) prepareSync(k *localKey, r rate, now time.Time, leaseTTL time.Duration) *syncBatch {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.changes == k.syncedChanges {
		return nil
	}
	nowMicros := now.UnixMicro()
	b := &syncBatch{changes: k.changes, payload: syncPayload{
		Gen:          newGeneration(),
		Now:          nowMicros,
		WindowLength: tokenWindowMicros,
		LeaseTTL:     leaseTTL.Microseconds(),
	}}
	p := &b.payload
	if r.on() && k.tat > max(k.syncedTAT, nowMicros) {
		p.Rate = &syncRate{Interval: r.interval, Burst: r.burst, TAT: k.tat, Synced: k.syncedTAT}
	}
	for _, e := range k.window.unsynced(nowMicros) {
		p.Window = append(p.Window, syncEntry{ID: e.id, At: e.at, Amount: e.amount})
		b.entries = append(b.entries, e)
	}
	for id := range k.unleased {
		p.Leases = append(p.Leases, id)
	}

	// Leases past their TTL have expired in Redis already.
	n := 0
	for n < len(k.released) && k.released[n].at <= nowMicros-leaseTTL.Microseconds() {
		n++
	}
	k.released = k.released[n:]
	for _, l := range k.released {
		p.Released = append(p.Released, l.id)
	}
	b.released = len(k.released)

	for name, m := range k.months {
		if m.pending() == (monthCounts{}) {
			if name < k.month {
				delete(k.months, name)
			}
			continue
		}
		ttl := monthKeyTTL(now, monthEndOf(name))
		if ttl <= 0 {
			// Redis no longer keeps the month.
			delete(k.months, name)
			continue
		}
		p.Months = append(p.Months, syncMonth{
			Counted: toSyncCounts(m.counted),
			Stored:  toSyncCounts(m.stored),
			Shared: syncRead{
				Tokens:   m.shared.tokens,
				Requests: m.shared.requests,
				Gen:      m.gen,
				Version:  m.version,
			},
			TTL: ttl,
		})
		b.months = append(b.months, name)
	}
	return b
}

// ackSync records that Redis stored b, with reply its totals after the
// call. renew gives each request that got a lease in Redis to the lease
// renewal, before any settlement of it can run.
func (s *localStore) ackSync(k *localKey, b *syncBatch, reply syncReply, renew func(id string)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p := &b.payload
	if p.Rate != nil {
		k.syncedTAT = max(k.syncedTAT, reply.tat)
		k.tat = max(k.tat, reply.tat)
	}
	for i, e := range b.entries {
		// An entry corrected since the batch was made waits for the next.
		if e.amount == p.Window[i].Amount {
			e.synced = true
		}
	}
	for _, id := range p.Leases {
		if k.unleased[id] == nil {
			// Settled meanwhile: its new lease goes with the next batch.
			k.released = append(k.released, releasedLease{id: id, at: p.Now})
			k.changes++
			continue
		}
		delete(k.unleased, id)
		renew(id)
	}
	k.released = k.released[b.released:]
	for i, name := range b.months {
		sent := p.Months[i].Counted
		m := k.months[name]
		m.stored = monthCounts{tokens: sent.Tokens, requests: sent.Requests}
		m.setRead(reply.months[i])
	}
	k.syncedChanges = b.changes
}

// sync runs sync.lua for b on the keys of subject.
func (s *redisStore) sync(ctx context.Context, subject string, b *syncBatch) (syncReply, error) {
	payload, err := json.Marshal(b.payload)
	if err != nil {
		return syncReply{}, fmt.Errorf("encode reconciliation: %w", err)
	}
	names := s.keyNames(subject, "")
	keys := []string{
		names[keyRate], names[keyWindowTimes], names[keyWindowAmounts], names[keyWindowSum],
		names[keyLeases], names[keyRate] + ":sent",
	}
	for _, month := range b.months {
		keys = append(keys, s.keyNames(subject, month)[keyMonth])
	}

	deadline, err := s.deadline(ctx)
	if err != nil {
		return syncReply{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	reply, err := syncScript.Run(ctx, s.client, keys, deadline, payload).Int64Slice()
	if err != nil {
		return syncReply{}, fmt.Errorf("run reconciliation script: %w", err)
	}
	if isLate(reply) {
		return syncReply{}, fmt.Errorf("run reconciliation script: %w", errLate)
	}
	if len(reply) != 2+4*len(b.months) || reply[0] != 1 {
		return syncReply{}, fmt.Errorf("reconciliation script returned %d values: %w",
			len(reply), errBadReply)
	}
	out := syncReply{tat: reply[1], months: make([]monthRead, len(b.months))}
	for i := range out.months {
		out.months[i] = parseMonthRead(reply[2+4*i:])
	}
	return out, nil
}

// syncKey reconciles the key k, whose local state is state, when it has
// changes made without Redis. It returns whether it sent any.
func (l *Limiter) syncKey(ctx context.Context, k *Key, state *localKey) (bool, error) {
	state.syncMu.Lock()
	defer state.syncMu.Unlock()
	b := l.local.prepareSync(state, k.rate, l.now(), l.leaseTTL)
	if b == nil {
		return false, nil
	}
	b.payload.Instance = l.instanceID
	if b.payload.Rate == nil && len(b.payload.Window) == 0 && len(b.payload.Leases) == 0 &&
		len(b.payload.Released) == 0 && len(b.months) == 0 {
		l.local.ackSync(state, b, syncReply{}, nil)
		return false, nil
	}
	reply, err := l.redis.sync(ctx, "k:"+k.Name, b)
	if err != nil {
		return false, fmt.Errorf("reconcile key %s: %w", k.Name, err)
	}
	leaseKey := l.redis.leaseKey(k)
	l.local.ackSync(state, b, reply, func(id string) { l.leases.add(id, leaseKey) })
	return true, nil
}

// reconcile reconciles every configured key that has changes made without
// Redis. It stops at the first failure, which marks Redis down, and logs
// how many keys it sent.
func (l *Limiter) reconcile(ctx context.Context) {
	sent := 0
	for _, k := range l.settings.Load().keys.ordered {
		state := l.local.state(k.Name)
		if !state.dirty() {
			continue
		}
		ok, err := l.syncKey(ctx, k, state)
		if err != nil {
			if ctx.Err() == nil {
				l.health.failed(l.now(), err)
			}
			return
		}
		if ok {
			sent++
		}
	}
	if sent > 0 {
		l.health.log.Info("counts made during the redis outage added to redis", "keys", sent)
	}
}
