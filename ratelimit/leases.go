package ratelimit

import (
	"context"
	"sync"
	"time"
)

// defaultLeaseTTL is the lease TTL when Options.LeaseTTL is zero. The slots
// of an instance that dies stay taken this long.
const defaultLeaseTTL = 30 * time.Second

// leaseSet is the Redis leases this instance holds, renewed by renewLoop.
type leaseSet struct {
	mu   sync.Mutex
	byID map[string]string // reservation id -> Redis key of its lease set
}

func (s *leaseSet) add(id, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[id] = key
}

func (s *leaseSet) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

func (s *leaseSet) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]string, len(s.byID))
	for id, key := range s.byID {
		m[id] = key
	}
	return m
}

// renewLoop renews the held leases every third of the lease TTL, by the
// wall clock, until ctx ends. Renewal uses the injected clock for the new
// expiry, so tests call renewLeases directly.
func (l *Limiter) renewLoop(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(l.leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.renewLeases(ctx)
		}
	}
}

// renewLeases moves the expiry of every held lease to the lease TTL from now.
func (l *Limiter) renewLeases(ctx context.Context) {
	leases := l.leases.snapshot()
	now := l.now()
	if len(leases) == 0 || !l.health.shouldTry(now) {
		return
	}
	err := l.redis.renew(ctx, leases, now)
	if err != nil {
		if ctx.Err() == nil {
			l.health.failed(now, err)
		}
		return
	}
	l.redisSucceeded()
}
