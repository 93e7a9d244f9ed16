package ratelimit

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/metrics"
)

// redisRetryInterval is how long the Limiter decides locally after a failed
// Redis call before it tries Redis again, by the injected clock. It keeps a
// Redis that times out from adding redis.timeout to every request.
const redisRetryInterval = time.Second

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

// succeeded records a Redis call that worked.
func (h *redisHealth) succeeded() {
	old := h.state.Swap(redisUp)
	if old == redisUp {
		return
	}
	if old == redisDown {
		h.log.Info("redis reachable again, rate limits are shared")
	}
	if h.metrics != nil {
		h.metrics.RedisUp.Set(1)
	}
}

// failed records a Redis call that failed at now with err.
func (h *redisHealth) failed(now time.Time, err error) {
	h.retryAt.Store(now.Add(redisRetryInterval).UnixNano())
	if h.state.Swap(redisDown) == redisDown {
		return
	}
	h.log.Warn("redis unreachable, rate limits are counted per instance", "error", err)
	if h.metrics != nil {
		h.metrics.RedisUp.Set(0)
	}
}
