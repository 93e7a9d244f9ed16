package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/metrics"
)

// Errors returned by Store and StoreEmbeddings. Each gives the reason a
// response was not stored, and none needs more than a debug log.
var (
	// ErrNotCacheable is returned for a plan of the wrong Kind.
	ErrNotCacheable = errors.New("request is not cacheable")
	// ErrIncomplete is returned for a response that was cut or cancelled:
	// the proxy reported it, or the stream lacks its final line or [DONE].
	ErrIncomplete = errors.New("response incomplete")
	// ErrInvalidResponse is returned for a response that is not valid JSON of
	// the route's format, carries an error, reports a model load, or contains
	// a number of embeddings other than the number of inputs.
	ErrInvalidResponse = errors.New("invalid response")
	// ErrTooLarge is returned for a response larger than l1.max_bytes.
	ErrTooLarge = errors.New("response too large to cache")
)

// Defaults applied to zero configuration values.
const (
	DefaultL1MaxBytes   = 256 << 20
	DefaultL1TTL        = time.Hour
	DefaultL2TTL        = 24 * time.Hour
	DefaultRedisTimeout = 200 * time.Millisecond
	// DefaultCheckInterval is the interval of the periodic Redis check.
	DefaultCheckInterval = 5 * time.Second
)

// Metric label values of CacheRequests.
const (
	tierL1         = "l1"
	tierL2         = "l2"
	outcomeHit     = "hit"
	outcomeMiss    = "miss"
	outcomeBypass  = "bypass"
	outcomeError   = "error"
	redisComponent = metrics.RedisCache
)

// Cache is the two-tier response cache. All methods are safe for
// concurrent use.
type Cache struct {
	// Fixed at construction.
	enabled       bool
	generateNever bool
	perKey        bool
	maxEntryBytes int64
	l1            *l1Tier
	l2            *l2Tier // nil when there is no Redis or l2 is disabled
	m             *metrics.Metrics
	log           *slog.Logger
	now           func() time.Time // the clock of Redis retries

	flightsMu sync.Mutex
	flights   map[string]*flight // guarded by flightsMu

	purgeMu sync.Mutex // serializes Purge and the purges of other instances
	epochs  purgeEpochs
}

// New returns a cache configured by cfg. rdb is the shared Redis client, or
// nil for an L1-only cache. The cache uses rcfg.Timeout, rcfg.KeyPrefix and
// rcfg.CheckInterval, where a negative CheckInterval turns the periodic
// check of Redis off, and never closes rdb. m receives the cache metrics (nil: a private
// registry), and log receives the Redis state changes (nil: slog.Default).
// Zero sizes, TTLs and timeouts take the Default values. New rejects a
// negative value or an unknown cache.generate, listing every problem.
//
// With L2, New also subscribes to the purge channel of other instances,
// waiting at most redis.timeout for Redis. It succeeds while Redis is
// down, and the subscription is then made when Redis is back.
func New(
	cfg config.Cache,
	rdb *redis.Client,
	rcfg config.Redis,
	m *metrics.Metrics,
	log *slog.Logger,
) (*Cache, error) {
	if err := validate(cfg, rcfg); err != nil {
		return nil, err
	}
	if m == nil {
		m = metrics.New()
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Cache{
		enabled:       cfg.Enabled == nil || *cfg.Enabled,
		generateNever: cfg.Generate == "never",
		perKey:        cfg.PerKey,
		maxEntryBytes: orDefault(cfg.L1.MaxBytes, DefaultL1MaxBytes),
		m:             m,
		log:           log.With("component", "cache"),
		now:           time.Now,
		flights:       make(map[string]*flight),
	}
	l1, err := newL1(c.maxEntryBytes, orDefault(cfg.L1.TTL, DefaultL1TTL),
		m.CacheBytes.WithLabelValues(tierL1), m.CacheEvictions)
	if err != nil {
		return nil, err
	}
	c.l1 = l1
	if rdb != nil && (cfg.L2.Enabled == nil || *cfg.L2.Enabled) {
		prefix := rcfg.KeyPrefix + "cache:"
		c.l2 = &l2Tier{
			rdb:          rdb,
			prefix:       prefix,
			ttl:          orDefault(cfg.L2.TTL, DefaultL2TTL),
			timeout:      orDefault(rcfg.Timeout, DefaultRedisTimeout),
			purgeChannel: purgeChannelName(prefix, rdb.Options().DB),
			instanceID:   newInstanceID(),
		}
		c.startPurgeSubscriber()
		c.startRedisCheck(rcfg.CheckInterval)
	}
	return c, nil
}

func validate(cfg config.Cache, rcfg config.Redis) error {
	var errs []error
	switch cfg.Generate {
	case "", "deterministic", "never":
	default:
		errs = append(errs, fmt.Errorf(
			"cache.generate: invalid value %q, want deterministic or never", cfg.Generate))
	}
	if cfg.L1.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("cache.l1.max_bytes: %d is negative", cfg.L1.MaxBytes))
	}
	if cfg.L1.TTL < 0 {
		errs = append(errs, fmt.Errorf("cache.l1.ttl: %s is negative", cfg.L1.TTL))
	}
	if cfg.L2.TTL < 0 {
		errs = append(errs, fmt.Errorf("cache.l2.ttl: %s is negative", cfg.L2.TTL))
	}
	if rcfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("redis.timeout: %s is negative", rcfg.Timeout))
	}
	return errors.Join(errs...)
}

func orDefault[T int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Close stops the periodic Redis check and ends the subscription to the
// purge channel, waiting for the goroutines of both, then stops L1's
// goroutines and drops its entries. Call it once, after the last call of
// any other method.
func (c *Cache) Close() {
	if c.l2 != nil {
		c.stopRedisCheck()
		c.stopPurgeSubscriber()
	}
	c.l1.close()
}

func (c *Cache) count(tier, outcome string) {
	c.m.CacheRequests.WithLabelValues(tier, outcome).Inc()
}

// countBypass counts one request that did not consult the cache.
func (c *Cache) countBypass() { c.count(tierL1, outcomeBypass) }

// Lookup returns the cached response of a KindResponse plan from L1, or from
// L2 (which then fills L1), with ResultHitL1 or ResultHitL2. It returns nil
// with ResultMiss when neither contains it, and with ResultBypass when the
// plan is not KindResponse or has NoCache. A Redis failure counts as an L2
// miss. It counts CacheRequests for each tier consulted, or one bypass.
func (c *Cache) Lookup(ctx context.Context, p Plan) (*Entry, Result) {
	if p.Kind != KindResponse || p.NoCache {
		c.countBypass()
		return nil, ResultBypass
	}
	if rec, ok := c.l1.get(p.Key); ok && rec.response.serves(p) {
		c.count(tierL1, outcomeHit)
		return &Entry{route: p.route, response: rec.response}, ResultHitL1
	}
	c.count(tierL1, outcomeMiss)
	if rec := c.l2Get(ctx, p.Key, p.Model, p.epoch); rec != nil && rec.response.serves(p) {
		return &Entry{route: p.route, response: rec.response}, ResultHitL2
	}
	return nil, ResultMiss
}

// serves reports whether rs can serve p. A /v1 response stored from a
// stream sent without stream_options.include_usage has no usage, which a
// non-streamed /v1 response and a stream with include_usage must carry.
// Such a response serves only streams without include_usage, and the
// node's response to any other request replaces it.
func (rs *response) serves(p Plan) bool {
	if rs == nil {
		return false
	}
	needsUsage := p.route.isV1() && (!p.Stream || p.IncludeUsage)
	return !needsUsage || len(rs.Usage) > 0
}

// Store turns the response fed to agg into an Entry and stores it in both
// tiers, unless the plan has NoStore or this instance applied a purge of
// the plan's model since Classify returned the plan (see purgeEpochs),
// because the response may then come from the model that the purge
// dropped. complete is true when the upstream
// response arrived whole with status 200, and false for an error status, a
// cut stream or a cancelled one. Store returns the Entry even with NoStore,
// for the requests coalesced with this one. An error wraps ErrNotCacheable,
// ErrIncomplete, ErrInvalidResponse or ErrTooLarge, and nothing is stored
// then. A Redis failure is not an error, and the entry is then only in L1.
// Store waits for Redis at most redis.timeout, and skips it when ctx has
// ended, so pass a context that outlives the client's connection, such as
// context.WithoutCancel(requestCtx). StoreEmbeddings and Purge use ctx the
// same way.
func (c *Cache) Store(ctx context.Context, p Plan, agg *Aggregator, complete bool) (*Entry, error) {
	if p.Kind != KindResponse || agg.route != p.route {
		return nil, ErrNotCacheable
	}
	if !complete {
		agg.finished = true
		return nil, ErrIncomplete
	}
	ans, err := agg.finish()
	if err != nil {
		return nil, err
	}
	if !p.NoStore {
		c.putUnlessPurged(ctx, p.Model, p.epoch, newResponseRecord(p.Key, p.Model, ans))
	}
	return &Entry{route: p.route, response: ans}, nil
}

// putUnlessPurged stores recs, the records of model, in L1, then in L2,
// unless a purge of model that this instance applied began after epoch. A
// purge empties the tiers after it records its start, so it removes
// records written before that. Records written while it runs may land
// after it emptied a tier, and putUnlessPurged removes those again.
//
// NOTE: a purge on another instance takes effect here only when its
// pub/sub message arrives. A store that lands between that instance's L2
// purge and the message's arrival stays in L2, and in L1 until the message
// empties it, so that entry may be served until l2.ttl ends.
func (c *Cache) putUnlessPurged(ctx context.Context, model string, epoch uint64, recs ...*record) {
	if c.epochs.purgedSince(model, epoch) {
		return
	}
	c.l1.set(recs...)
	c.l2Put(ctx, recs)
	if c.epochs.purgedSince(model, epoch) {
		c.remove(ctx, recs)
	}
}

// fillL1 copies recs, the records of model read from L2, into L1 unless a
// purge of model that this instance applied began after epoch, as
// putUnlessPurged does for both tiers. The L2 read may have come before
// the purge emptied L2.
func (c *Cache) fillL1(model string, epoch uint64, recs ...*record) {
	if c.epochs.purgedSince(model, epoch) {
		return
	}
	c.l1.set(recs...)
	if c.epochs.purgedSince(model, epoch) {
		c.l1.del(recs)
	}
}

// remove deletes recs from L1 and L2. A Redis failure counts as any failed
// Redis call, and the L2 copies then stay until their TTL ends.
func (c *Cache) remove(ctx context.Context, recs []*record) {
	c.l1.del(recs)
	if c.l2 == nil {
		return
	}
	keys := make([]string, len(recs))
	for i, r := range recs {
		keys[i] = c.l2.entryKey(r.key)
	}
	c.redisCall(ctx, "unlink", func(ctx context.Context) error {
		return c.l2.rdb.Unlink(ctx, keys...).Err()
	})
}

// Purge removes every entry, when model is "", or the entries of one model
// (normalized as NormalizeModel does), from L1 and L2. With L2, it then
// publishes the purge on the Redis purge channel, and every other instance
// that uses the same Redis database and key prefix removes the same entries
// from its own L1. Purge does not wait for them: each applies the message
// asynchronously, after Redis has delivered it, so its clients may still
// get the old entries from L1 until then. Purge and the purges that
// other instances publish also stop the stores of responses to requests
// that were classified before them (see putUnlessPurged), except that an
// entry that another instance stores before the message reaches it may
// remain.
//
// An error means that L2 could not be purged or the purge could not be
// published, but L1 is purged in any case. Purge does not publish when the
// L2 purge fails.
//
// NOTE: after an error, other instances keep their L1 copies until l1.ttl
// ends, unless their own subscription drops and is made again meanwhile
// (as when Redis restarts), which clears their whole L1. Retry the purge
// once Redis is reachable.
func (c *Cache) Purge(ctx context.Context, model string) error {
	c.purgeMu.Lock()
	defer c.purgeMu.Unlock()
	model = NormalizeModel(model)
	c.epochs.bump(model)
	c.purgeL1(model)
	if c.l2 == nil {
		return nil
	}
	if err := c.l2Purge(ctx, model); err != nil {
		c.redisFailed(ctx, "purge", err)
		return fmt.Errorf("purge l2: %w", err)
	}
	if err := c.publishPurge(ctx, model); err != nil {
		c.redisFailed(ctx, "publish", err)
		return fmt.Errorf("publish purge to other instances: %w", err)
	}
	c.redisSucceeded()
	return nil
}
