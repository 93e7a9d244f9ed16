package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// l2Tier is the Redis tier shared by every proxy instance. Each record is a
// string key holding its envelope with a TTL, and each model has a sorted
// set of its record keys, scored by expiry time, for Purge. The tier's size
// is not tracked in CacheBytes: Redis reports it (INFO memory).
type l2Tier struct {
	rdb     *redis.Client
	prefix  string // redis.key_prefix followed by "cache:"
	ttl     time.Duration
	timeout time.Duration // of one Redis call

	// purgeChannel is the pub/sub channel of purges, named by
	// purgeChannelName.
	purgeChannel string
	// instanceID identifies this cache's own purge messages.
	instanceID     string
	subscription   *redis.PubSub // subscribed to purgeChannel
	subscriberDone chan struct{} // closed when receivePurges returns

	healthMu sync.Mutex
	down     bool      // guarded by healthMu: the last call failed
	retryAt  time.Time // guarded by healthMu: when a call may try again

	// stopCheck ends checkRedisLoop, and checkDone is closed when it has
	// returned; both nil without a periodic check.
	stopCheck context.CancelFunc
	checkDone chan struct{}
}

// redisRetryInterval is how long the cache stops calling Redis after a
// failure, so that requests do not each wait out redis.timeout while Redis
// is unreachable. One call then probes it.
const redisRetryInterval = time.Second

// purgeBatch is the number of keys read by one SCAN or ZSCAN and removed by
// one UNLINK during Purge.
const purgeBatch = 500

func (t *l2Tier) entryKey(key string) string   { return t.prefix + "entry:" + key }
func (t *l2Tier) modelKey(model string) string { return t.prefix + "model:" + model }

// redisUsable reports whether a call may go to Redis now: always while it is up,
// once per redisRetryInterval while it is down.
func (c *Cache) redisUsable() bool {
	t := c.l2
	t.healthMu.Lock()
	defer t.healthMu.Unlock()
	if !t.down {
		return true
	}
	now := c.now()
	if now.Before(t.retryAt) {
		return false
	}
	t.retryAt = now.Add(redisRetryInterval)
	return true
}

// redisFailed records a failed Redis call, unless it failed because ctx,
// the caller's context, ended. It logs once per outage.
func (c *Cache) redisFailed(ctx context.Context, op string, err error) {
	if ctx.Err() != nil {
		return
	}
	c.countFallback()
	c.markRedisDown(op, err)
}

// markRedisDown records that Redis failed the call op with err, and logs
// the first failure of an outage.
func (c *Cache) markRedisDown(op string, err error) {
	c.m.SetRedisUp(redisComponent, false)
	t := c.l2
	t.healthMu.Lock()
	wasDown := t.down
	t.down = true
	t.retryAt = c.now().Add(redisRetryInterval)
	t.healthMu.Unlock()
	if !wasDown {
		c.log.Warn("redis unavailable, cache continues with l1 only",
			"op", op, "retry_interval", redisRetryInterval, "error", err)
	}
}

func (c *Cache) redisSucceeded() {
	c.m.SetRedisUp(redisComponent, true)
	t := c.l2
	t.healthMu.Lock()
	wasDown := t.down
	t.down = false
	t.healthMu.Unlock()
	if wasDown {
		c.log.Info("redis reachable again, cache l2 resumed")
	}
}

func (c *Cache) countFallback() {
	c.m.RedisFallback.WithLabelValues(redisComponent).Inc()
}

// startRedisCheck starts checkRedisLoop, unless interval is negative.
// Zero means DefaultCheckInterval.
func (c *Cache) startRedisCheck(interval time.Duration) {
	if interval < 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.l2.stopCheck = cancel
	c.l2.checkDone = make(chan struct{})
	go c.checkRedisLoop(ctx, orDefault(interval, DefaultCheckInterval))
}

// stopRedisCheck stops checkRedisLoop and waits for it to return.
func (c *Cache) stopRedisCheck() {
	if c.l2.stopCheck == nil {
		return
	}
	c.l2.stopCheck()
	<-c.l2.checkDone
}

// checkRedisLoop checks Redis (see checkRedis) every interval of wall time until ctx
// ends, so that a Redis outage and its end show in llmproxy_redis_up and
// the log without waiting for a request to call Redis. L1 hits never call
// it. After a successful check L2 is used again at once.
func (c *Cache) checkRedisLoop(ctx context.Context, interval time.Duration) {
	defer close(c.l2.checkDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.checkRedis(ctx)
		}
	}
}

// checkRedis writes one short-lived key and records the result. It writes
// instead of sending PING, because a Redis that replies to PING may still
// reject the cache's writes, as a read-only replica or a full Redis under
// maxmemory-policy noeviction does. A failed check counts no fallback, because
// no operation fell back.
func (c *Cache) checkRedis(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, c.l2.timeout)
	defer cancel()
	err := c.l2.rdb.Set(cctx, c.l2.prefix+"write-check", "1", time.Minute).Err()
	if err != nil {
		if ctx.Err() == nil {
			c.markRedisDown("write check", err)
		}
		return
	}
	c.redisSucceeded()
}

// redisCall runs one Redis call under redis.timeout and records its
// outcome. It returns false when Redis is down or the call failed; a
// redis.Nil reply is a success.
func (c *Cache) redisCall(ctx context.Context, op string, call func(context.Context) error) bool {
	if !c.redisUsable() {
		c.countFallback()
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, c.l2.timeout)
	defer cancel()
	if err := call(cctx); err != nil && !errors.Is(err, redis.Nil) {
		c.redisFailed(ctx, op, err)
		return false
	}
	c.redisSucceeded()
	return true
}

// l2Get returns the record of key from L2, or nil. It copies the record
// into L1 as fillL1 does, with model and epoch from the request's plan.
func (c *Cache) l2Get(ctx context.Context, key, model string, epoch uint64) *record {
	if c.l2 == nil {
		return nil
	}
	var b []byte
	ok := c.redisCall(ctx, "get", func(ctx context.Context) error {
		var err error
		b, err = c.l2.rdb.Get(ctx, c.l2.entryKey(key)).Bytes()
		return err
	})
	rec := c.decodeL2(key, b, ok)
	if rec != nil {
		c.fillL1(model, epoch, rec)
	}
	return rec
}

// l2GetMany returns the records of keys found in L2, by key, and copies
// them into L1 as fillL1 does, with model and epoch from the request's
// plan.
func (c *Cache) l2GetMany(ctx context.Context, keys []string, model string,
	epoch uint64) map[string]*record {
	if c.l2 == nil {
		return nil
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = c.l2.entryKey(k)
	}
	var vals []any
	ok := c.redisCall(ctx, "mget", func(ctx context.Context) error {
		var err error
		vals, err = c.l2.rdb.MGet(ctx, full...).Result()
		return err
	})

	found := make(map[string]*record)
	var fill []*record
	for i, k := range keys {
		var b []byte
		if ok && i < len(vals) {
			if s, isString := vals[i].(string); isString {
				b = []byte(s)
			}
		}
		if rec := c.decodeL2(k, b, ok); rec != nil {
			found[k] = rec
			fill = append(fill, rec)
		}
	}
	if len(fill) > 0 {
		c.fillL1(model, epoch, fill...)
	}
	return found
}

// decodeL2 counts one L2 lookup and decodes what it returned. An entry that
// cannot be read, such as one of another envelope version, is a miss.
func (c *Cache) decodeL2(key string, b []byte, ok bool) *record {
	switch {
	case !ok:
		c.count(tierL2, outcomeError)
		return nil
	case b == nil:
		c.count(tierL2, outcomeMiss)
		return nil
	}
	rec, err := decodeRecord(key, b)
	if err != nil {
		c.log.Debug("l2 entry not readable, treated as a miss", "key", key, "error", err)
		c.count(tierL2, outcomeMiss)
		return nil
	}
	c.count(tierL2, outcomeHit)
	return rec
}

// l2Put writes the records to L2 in one pipeline and adds each to its
// model's index, from which expired members are trimmed on the way.
func (c *Cache) l2Put(ctx context.Context, recs []*record) {
	if c.l2 == nil || len(recs) == 0 {
		return
	}
	values := make([][]byte, len(recs))
	for i, r := range recs {
		var err error
		if values[i], err = encodeRecord(r); err != nil {
			c.log.Debug("cache entry not written to l2", "key", r.key, "error", err)
			return
		}
	}
	now := c.now()
	expiry := float64(now.Add(c.l2.ttl).Unix())
	c.redisCall(ctx, "put", func(ctx context.Context) error {
		_, err := c.l2.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			models := make(map[string]bool)
			for i, r := range recs {
				p.Set(ctx, c.l2.entryKey(r.key), values[i], c.l2.ttl)
				p.ZAdd(ctx, c.l2.modelKey(r.model), redis.Z{Score: expiry, Member: r.key})
				models[r.model] = true
			}
			for m := range models {
				p.ZRemRangeByScore(ctx, c.l2.modelKey(m), "-inf", strconv.FormatInt(now.Unix(), 10))
				p.Expire(ctx, c.l2.modelKey(m), c.l2.ttl)
			}
			return nil
		})
		return err
	})
}

// l2Purge removes every L2 record, or those of one model. Each Redis call
// has its own timeout, so a large purge is not cut short by redis.timeout.
func (c *Cache) l2Purge(ctx context.Context, model string) error {
	if model == "" {
		return c.l2Scan(ctx, func(ctx context.Context, cursor uint64) ([]string, uint64, error) {
			return c.l2.rdb.Scan(ctx, cursor, escapeGlob(c.l2.prefix)+"*", purgeBatch).Result()
		}, func(k string) string { return k })
	}
	index := c.l2.modelKey(model)
	err := c.l2Scan(ctx, func(ctx context.Context, cursor uint64) ([]string, uint64, error) {
		pairs, next, err := c.l2.rdb.ZScan(ctx, index, cursor, "", purgeBatch).Result()
		members := make([]string, 0, len(pairs)/2)
		for i := 0; i < len(pairs); i += 2 {
			members = append(members, pairs[i])
		}
		return members, next, err
	}, c.l2.entryKey)
	if err != nil {
		return err
	}
	return c.l2Unlink(ctx, []string{index})
}

// l2Scan walks a SCAN-like cursor and unlinks the key that name returns
// for each item found.
func (c *Cache) l2Scan(
	ctx context.Context,
	scan func(context.Context, uint64) ([]string, uint64, error),
	name func(string) string,
) error {
	var cursor uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, c.l2.timeout)
		items, next, err := scan(cctx, cursor)
		cancel()
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = name(it)
		}
		if err := c.l2Unlink(ctx, keys); err != nil {
			return err
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

func (c *Cache) l2Unlink(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, c.l2.timeout)
	defer cancel()
	if err := c.l2.rdb.Unlink(cctx, keys...).Err(); err != nil {
		return fmt.Errorf("unlink: %w", err)
	}
	return nil
}

// escapeGlob escapes the characters that SCAN's MATCH pattern treats
// specially, so that a key prefix matches only itself.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\', '^', '-':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
