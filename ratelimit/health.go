package ratelimit

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/metrics"
)

// redisRetryInterval is how long the Limiter decides locally after a failed
// Redis call before it tries Redis again, by the injected clock. It keeps a
// Redis that times out from adding redis.timeout to every request.
const redisRetryInterval = time.Second

// defaultCheckInterval is the interval of the periodic Redis check when
// redis.check_interval is zero, as in config's defaults.
const defaultCheckInterval = 5 * time.Second

// Redis states of redisHealth.
const (
	redisUnknown int32 = iota
	redisUp
	redisDown
)

// redisHealth tracks whether Redis responds, logs and exports each change,
// and lets one caller per redisRetryInterval try Redis while it is down.
type redisHealth struct {
	log     *slog.Logger
	metrics *metrics.Metrics

	state   atomic.Int32
	retryAt atomic.Int64 // Unix nanoseconds; meaningful while down
}

// shouldTry reports whether a caller at now may use Redis. While Redis is
// down it returns true to a single caller once retryAt has passed, and moves
// retryAt on, so that only that caller waits for the probe.
func (h *redisHealth) shouldTry(now time.Time) bool {
	if h.state.Load() != redisDown {
		return true
	}
	at := h.retryAt.Load()
	if now.UnixNano() < at {
		return false
	}
	return h.retryAt.CompareAndSwap(at, now.Add(redisRetryInterval).UnixNano())
}

// isUp reports whether the last Redis call worked.
func (h *redisHealth) isUp() bool { return h.state.Load() == redisUp }

// succeeded records a Redis call that worked, and reports whether Redis
// was down until then. It sets llmproxy_redis_up at every call, because
// the cache sets the gauge too.
func (h *redisHealth) succeeded() bool {
	if h.metrics != nil {
		h.metrics.SetRedisUp(metrics.RedisRateLimit, true)
	}
	old := h.state.Swap(redisUp)
	if old == redisDown {
		h.log.Info("redis reachable again, rate limits are shared")
	}
	return old == redisDown
}

// failed records a Redis call that failed at now with err.
func (h *redisHealth) failed(now time.Time, err error) {
	if h.metrics != nil {
		h.metrics.SetRedisUp(metrics.RedisRateLimit, false)
	}
	h.retryAt.Store(now.Add(redisRetryInterval).UnixNano())
	if h.state.Swap(redisDown) == redisDown {
		return
	}
	h.log.Warn("redis unreachable, rate limits are counted per instance", "error", err)
}

// checkLoop checks Redis at once and then every interval of wall time
// until ctx ends, and reconciles every key when a request's call finds
// Redis reachable again. Tests call checkRedis directly.
func (l *Limiter) checkLoop(ctx context.Context, interval time.Duration) {
	defer l.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	l.checkRedis(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.checkRedis(ctx)
		case <-l.recovered:
			l.reconcile(ctx)
		}
	}
}

// checkRedis reads Redis's clock, which shows whether Redis responds
// without any request calling it, and runs a script that writes, because
// a Redis that responds may still reject the limit scripts: a read-only
// replica, a full Redis under maxmemory-policy noeviction, or a user
// whose ACL forbids scripts. When Redis responds, it reconciles the
// keys that this instance counted without Redis, and restores the months
// it has read when Redis has lost its data since the last check.
func (l *Limiter) checkRedis(ctx context.Context) {
	now := l.now()
	err := l.redis.measureClock(ctx)
	if err == nil {
		err = l.redis.checkWrite(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			l.health.failed(now, err)
		}
		return
	}
	l.health.succeeded()
	l.reconcile(ctx)
	if err := l.checkDataLoss(ctx); err != nil && ctx.Err() == nil {
		l.health.failed(l.now(), err)
	}
}
