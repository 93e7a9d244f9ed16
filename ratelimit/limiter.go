package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/metrics"
)

// AnonymousLabel is the key label of llmproxy_ratelimited_total and
// llmproxy_tokens_total for requests without a key. Limits per client
// address are all counted under it, so that label values stay bounded. No
// key may take this name.
const AnonymousLabel = "anonymous"

// Options configures New.
type Options struct {
	// Auth holds auth.required and auth.keys.
	Auth config.Auth
	// RateLimit holds the limits per client address, the trusted proxies
	// and the default token estimate, with the defaults of config applied.
	// A PerAddress of zero means no limit per address. A
	// DefaultTokenEstimate of zero reserves nothing for a request that sets
	// no token limit.
	RateLimit config.RateLimit
	// Redis is the shared store; an empty Addr keeps every limit per
	// instance. A zero Timeout means 200ms. A zero CheckInterval means 5s,
	// and a negative one turns the periodic check of Redis off, which
	// leaves llmproxy_redis_up and reconciliation to the calls of
	// requests.
	Redis config.Redis
	// Metrics receives the rate limit, token and Redis metrics; nil records
	// none.
	Metrics *metrics.Metrics
	// Logger receives the Redis outage and recovery messages; nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock of every limit, passed to Redis too; nil means
	// time.Now.
	Now func() time.Time
	// LookupEnv reads the keys that auth.keys gives by environment
	// variable, in New and in each Reconfigure; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// LeaseTTL is how long a concurrency slot in Redis outlives the last
	// renewal by its instance, so it bounds how long the slots of a dead
	// instance stay taken. Leases are renewed every LeaseTTL/3 of wall
	// time. Zero means 30s.
	LeaseTTL time.Duration
}

// Limiter authenticates keys and enforces every limit. It is safe for
// concurrent use. Close it to stop lease renewal and close Redis.
type Limiter struct {
	// settings is replaced by Reconfigure. Each call reads it once.
	settings atomic.Pointer[settings]
	// reconfigureMu serializes Reconfigure, so that the key states of
	// local and the keys of settings change in the same order.
	reconfigureMu sync.Mutex
	lookupEnv     func(string) (string, bool)

	// Fixed at New.
	leaseTTL   time.Duration
	now        func() time.Time
	metrics    *metrics.Metrics
	instanceID string
	local      *localStore
	redis      *redisStore // nil without Redis
	health     *redisHealth

	leases leaseSet
	seq    atomic.Uint64
	// recovered wakes the health check to reconcile every key when a call
	// finds Redis reachable again.
	recovered chan struct{}
	// marker is the marker of Redis's data set, a string, at the last
	// check that read it (see checkDataLoss).
	marker atomic.Value

	// ctx ends at Close; it bounds settlements, which outlive the request
	// context, and the renewal and health check goroutines, which wg
	// waits for.
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New builds a Limiter from the configuration. It reads the keys given by
// environment variable and reports every invalid key, trusted proxy and
// limit in one error. With Redis configured it starts lease renewal and
// the periodic check of Redis in the background, so New succeeds while
// Redis is down.
func New(opts Options) (*Limiter, error) {
	opts = withDefaults(opts)

	set, err := newSettings(opts.Auth, opts.RateLimit, opts.LookupEnv)
	if err != nil {
		return nil, err
	}
	id, err := newInstanceID()
	if err != nil {
		return nil, err
	}

	log := opts.Logger.With("component", "ratelimit")
	l := &Limiter{
		lookupEnv:  opts.LookupEnv,
		leaseTTL:   opts.LeaseTTL,
		now:        opts.Now,
		metrics:    opts.Metrics,
		instanceID: id,
		local:      newLocalStore(opts.Redis.Addr != ""),
		health:     &redisHealth{log: log, metrics: opts.Metrics},
		leases:     leaseSet{byID: make(map[string]string)},
		recovered:  make(chan struct{}, 1),
	}
	l.local.setKeys(set.keys.ordered)
	l.settings.Store(set)
	l.ctx, l.cancel = context.WithCancel(context.Background())

	if opts.Redis.Addr != "" {
		l.redis = newRedisStore(opts.Redis, opts.LeaseTTL)
		l.wg.Add(1)
		go l.renewLoop(l.ctx)
		if opts.Redis.CheckInterval > 0 {
			l.wg.Add(1)
			go l.checkLoop(l.ctx, opts.Redis.CheckInterval)
		}
	}
	return l, nil
}

// settings is the part of a Limiter built from the auth and rate_limit
// sections.
type settings struct {
	keys            *keyring
	proxies         trustedProxies
	anonRate        rate
	defaultEstimate int64
}

// newSettings validates auth and rl and reports every invalid key, trusted
// proxy and limit in one error.
func newSettings(auth config.Auth, rl config.RateLimit,
	lookupEnv func(string) (string, bool)) (*settings, error) {
	keys, keysErr := newKeyring(auth, lookupEnv)
	proxies, proxiesErr := parseTrustedProxies(rl.TrustedProxies)
	err := errors.Join(keysErr, proxiesErr, validateRateLimit(rl))
	if err != nil {
		return nil, fmt.Errorf("invalid rate limit configuration: %w", err)
	}
	return &settings{
		keys:            keys,
		proxies:         proxies,
		anonRate:        newRate(rl.PerAddress, rl.Burst),
		defaultEstimate: rl.DefaultTokenEstimate,
	}, nil
}

// Reconfigure applies new auth and rate_limit sections to the requests
// that Authenticate and Admit see from now on. It validates them as New
// does and changes nothing when they are invalid.
//
// The limit state stays. A key is identified by its name, as in the Redis
// keys of its state. So a key that keeps its name keeps its rate, token
// window, requests in flight and monthly counts, even when its secret
// changes. Its new limits apply to them at once. The local state of a
// removed key is dropped, and a renamed key starts from zero. With Redis,
// a key added back under its old name continues from its counts there.
// The state of client addresses stays, under the new
// rate_limit.per_address. Requests admitted before settle against the
// state they took their share of. The redis section stays as New got it.
func (l *Limiter) Reconfigure(auth config.Auth, rl config.RateLimit) error {
	set, err := newSettings(auth, rl, l.lookupEnv)
	if err != nil {
		return err
	}
	l.reconfigureMu.Lock()
	defer l.reconfigureMu.Unlock()
	// New keys get their state before Authenticate can return them.
	l.local.setKeys(set.keys.ordered)
	l.settings.Store(set)
	return nil
}

func withDefaults(opts Options) Options {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = defaultLeaseTTL
	}
	if opts.Redis.CheckInterval == 0 {
		opts.Redis.CheckInterval = defaultCheckInterval
	}
	return opts
}

func validateRateLimit(rl config.RateLimit) error {
	var errs []error
	if rl.PerAddress < 0 {
		errs = append(errs, fmt.Errorf("rate_limit.per_address %v is negative", rl.PerAddress))
	}
	if rl.Burst < 0 {
		errs = append(errs, fmt.Errorf("rate_limit.burst %d is negative", rl.Burst))
	}
	if rl.DefaultTokenEstimate < 0 {
		errs = append(errs, fmt.Errorf("rate_limit.default_token_estimate %d is negative",
			rl.DefaultTokenEstimate))
	}
	return errors.Join(errs...)
}

// newInstanceID returns a random ID that makes this instance's reservation
// IDs unique among all instances sharing Redis.
func newInstanceID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate instance ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Close stops lease renewal and the health check and closes the Redis
// client. While Redis is up it first adds to Redis what this instance
// counted during an outage and has not reconciled yet, which is otherwise
// lost. Leases still held expire after LeaseTTL. Calls made after Close
// decide with local state. Closing twice returns the first result.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		if l.redis != nil && l.health.isUp() {
			l.reconcile(l.ctx)
		}
		l.cancel()
		l.wg.Wait()
		if l.redis == nil {
			return
		}
		if err := l.redis.close(); err != nil {
			l.closeErr = fmt.Errorf("close redis client: %w", err)
		}
	})
	return l.closeErr
}

// Authenticate returns the key a request presents in "Authorization:
// Bearer KEY" or, when that header carries no bearer token, in X-API-Key.
// It compares the SHA-256 of the presented key with the configured digests.
//
// It returns (nil, nil) for a request without a key when auth.required is
// false, which Admit then limits by client address. It returns
// ErrMissingKey for a request without a key when auth.required is true, and
// ErrUnknownKey for a presented key that matches none when auth.required
// is true or auth.unknown_keys is reject. Otherwise a key that matches
// none is served as no key, as Ollama ignores keys: OpenAI and Anthropic
// clients always send one, and Ollama's documentation has their users set
// a placeholder such as "ollama".
func (l *Limiter) Authenticate(authorization, xAPIKey []byte) (*Key, error) {
	return l.settings.Load().keys.authenticate(authorization, xAPIKey)
}

// Keys returns the configured keys in configuration order.
func (l *Limiter) Keys() []*Key { return append([]*Key(nil), l.settings.Load().keys.ordered...) }

// ClientAddr returns the address that limits a request without a key. It is
// the peer address, unless the peer is one of rate_limit.trusted_proxies:
// then it is the right-most X-Forwarded-For address that is not a trusted
// proxy, because every address left of it was written by the client itself.
// xForwardedFor holds every X-Forwarded-For header of the request, joined
// with commas. IPv4-mapped IPv6 addresses are returned as IPv4. It returns
// "" for a nil peer, which puts all such requests under one limit.
func (l *Limiter) ClientAddr(peer net.IP, xForwardedFor []byte) string {
	return l.settings.Load().proxies.clientAddr(peer, xForwardedFor)
}

// Request describes one request to Admit.
type Request struct {
	// Key is the key from Authenticate; nil for a request without a key.
	Key *Key
	// Addr is the client address from ClientAddr. It limits requests
	// without a key and is unused for requests with one.
	Addr string
	// Tokens is the number of tokens the request may generate, from
	// num_predict or max_tokens. Zero or less means
	// rate_limit.default_token_estimate. A reservation larger than
	// tokens_per_minute or monthly_tokens is cut to that limit, so that a
	// request is never rejected forever; settling charges the real count.
	Tokens int64
	// InputTokens is an estimate of the prompt's tokens, which the
	// request reserves on top of Tokens, since the node charges them too.
	InputTokens int64
	// Model is the model label of llmproxy_tokens_total, already bounded by
	// the caller; empty means metrics.OtherModel.
	Model string
	// Uncounted marks a request that runs no model, such as /api/show or
	// a model pull. It reserves no tokens and does not count towards
	// monthly_requests, but the request rate and max_concurrent apply.
	Uncounted bool
}

// admission is one Admit call with every value the stores need.
type admission struct {
	now       time.Time
	nowMicros int64
	key       *Key      // nil without a key
	state     *localKey // local state of key; nil without a key
	subject   string    // names the state: "k:" + key name or "a:" + address
	label     string    // key label of the metrics
	model     string
	id        string // reservation ID, unique across instances; keys only

	rate          rate
	tpm           int64 // tokens_per_minute; 0: no limit
	tpmNeed       int64 // tokens reserved in the token window
	concurrency   int64 // max_concurrent; 0: no limit
	monthTokens   int64 // monthly_tokens; 0: no limit
	monthRequests int64 // monthly_requests; 0: no limit
	monthNeed     int64 // tokens reserved in the month
	requestNeed   int64 // 1 when the request counts towards monthly_requests, else 0
	month         string
	monthEnd      time.Time
}

func (l *Limiter) newAdmission(req Request) *admission {
	now := l.now()
	set := l.settings.Load()
	a := &admission{now: now, nowMicros: now.UnixMicro(), key: req.Key, model: req.Model}
	a.month, a.monthEnd = monthOf(now)
	if a.model == "" {
		a.model = metrics.OtherModel
	}
	if req.Key == nil {
		a.subject, a.label, a.rate = addrSubject(req.Addr), AnonymousLabel, set.anonRate
		return a
	}
	k := req.Key
	need := req.Tokens
	if need <= 0 {
		need = set.defaultEstimate
	}
	need += max(req.InputTokens, 0)
	if req.Uncounted {
		need = 0
	} else {
		a.requestNeed = 1
	}
	// The key's name names its state, here and in Redis, so that the
	// state outlives a Reconfigure.
	a.subject, a.label, a.rate = "k:"+k.Name, k.Name, k.rate
	a.state = l.local.state(k.Name)
	a.id = l.instanceID + "-" + strconv.FormatUint(l.seq.Add(1), 36)
	a.tpm = k.limits.TokensPerMinute
	a.tpmNeed = capAt(need, a.tpm)
	a.concurrency = int64(k.limits.MaxConcurrent)
	a.monthTokens, a.monthRequests = k.limits.MonthlyTokens, k.limits.MonthlyRequests
	a.monthNeed = capAt(need, a.monthTokens)
	return a
}

// capAt returns n, cut to limit when limit is set.
func capAt(n, limit int64) int64 {
	if limit > 0 {
		return min(n, limit)
	}
	return n
}

// addrSubject names the state of a client address. IPv6 addresses share
// the state of their /64.
func addrSubject(addr string) string {
	a, err := netip.ParseAddr(addr)
	if err == nil && a.Is6() && !a.Is4In6() {
		p, _ := a.WithZone("").Prefix(64)
		return "a:" + p.String()
	}
	return "a:" + addr
}

// Admit checks a request against every limit that applies to it, before it
// is queued. When the request is admitted, it takes its share of each
// limit, and the returned Reservation must be settled with Settle or
// Release once the response ends. When it is rejected, it takes nothing
// and the Reservation is nil. The Decision carries the header values for
// either case.
//
// With Redis the check is one script call, bounded by redis.timeout. If
// Redis fails, or ctx ends first, the local state decides, so a Redis
// failure never rejects a request by itself.
func (l *Limiter) Admit(ctx context.Context, req Request) (Decision, *Reservation) {
	a := l.newAdmission(req)
	var (
		out    outcome
		entry  *windowEntry
		shared bool
	)
	if a.key == nil && !a.rate.on() {
		out.allowed = true
	} else {
		out, entry, shared = l.check(ctx, a)
	}
	d := decide(a, &out)
	if !d.Allowed {
		l.countRejected(a.label, d.Limit)
		return d, nil
	}
	return d, l.reserve(a, entry, shared)
}

// check runs the admission in Redis when it is available and in the local
// store otherwise; shared reports whether Redis decided. It returns the
// local token window entry of an admitted request in either case.
func (l *Limiter) check(ctx context.Context, a *admission) (outcome, *windowEntry, bool) {
	if l.useRedis(a.now) {
		out, entry, err := l.admitShared(ctx, a)
		if err == nil {
			return out, entry, true
		}
		// The failed call may have taken up to redis.timeout: judge the
		// request at the time it falls back, not when it arrived, or it
		// would count as older than requests admitted locally meanwhile.
		a.now = l.now()
		a.nowMicros = a.now.UnixMicro()
		l.redisFailed(ctx, a.now, err)
	}
	out, entry := l.local.admit(a)
	return out, entry, false
}

// admitShared runs the admission in Redis, after reconciling the key when
// this instance has counted some of it without Redis, and mirrors the
// decision locally.
//
// NOTE: a request of the key that another goroutine decides locally
// between the reconciliation and the admission, because its own Redis call
// failed or came before Redis was back, is missing from this admission's
// counts. The next reconciliation adds it.
func (l *Limiter) admitShared(ctx context.Context, a *admission) (outcome, *windowEntry, error) {
	if a.key != nil && a.state.dirty() {
		if _, err := l.syncKey(ctx, a.key, a.state); err != nil {
			return outcome{}, nil, err
		}
	}
	knownTAT, knownMonth := l.local.known(a)
	out, err := l.redis.admit(ctx, a, knownTAT, knownMonth)
	if err != nil {
		return outcome{}, nil, err
	}
	l.redisSucceeded()
	return out, l.local.mirror(a, &out), nil
}

// redisSucceeded records a Redis call that worked, and wakes the health
// check to reconcile the other keys when Redis was down until then.
func (l *Limiter) redisSucceeded() {
	if !l.health.succeeded() {
		return
	}
	select {
	case l.recovered <- struct{}{}:
	default:
	}
}

// useRedis reports whether a call at now should go to Redis, and counts a
// fallback when Redis is configured but down.
func (l *Limiter) useRedis(now time.Time) bool {
	if l.redis == nil || l.ctx.Err() != nil {
		return false
	}
	if l.health.shouldTry(now) {
		return true
	}
	l.countFallback()
	return false
}

// redisFailed records a failed Redis call and its fallback, unless the call
// failed because ctx ended or the Limiter closed, which is no sign of a
// Redis failure.
func (l *Limiter) redisFailed(ctx context.Context, now time.Time, err error) {
	if ctx.Err() != nil || l.ctx.Err() != nil {
		return
	}
	l.health.failed(now, err)
	l.countFallback()
}

func (l *Limiter) reserve(a *admission, entry *windowEntry, shared bool) *Reservation {
	r := &Reservation{
		l:         l,
		key:       a.key,
		state:     a.state,
		label:     a.label,
		model:     a.model,
		id:        a.id,
		month:     a.month,
		tpmNeed:   a.tpmNeed,
		monthNeed: a.monthNeed,
		requests:  a.requestNeed,
		shared:    shared,
		entry:     entry,
	}
	switch {
	case a.key == nil:
	case shared:
		l.leases.add(a.id, l.redis.leaseKey(a.key))
	default:
		l.local.addUnleased(r)
	}
	return r
}

func (l *Limiter) countRejected(label string, limit Limit) {
	if l.metrics != nil {
		l.metrics.RateLimited.WithLabelValues(label, string(limit)).Inc()
	}
}

func (l *Limiter) countFallback() {
	if l.metrics != nil {
		l.metrics.RedisFallback.WithLabelValues(metrics.RedisRateLimit).Inc()
	}
}
