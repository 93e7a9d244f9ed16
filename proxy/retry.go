package proxy

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// attempt is the outcome of sending a request to one node, as far as the
// retry rules and the node's health are concerned.
type attempt struct {
	// err is set when no response headers arrived.
	err error
	// status and body are set when the node responded with a 5xx status,
	// whose body was read to decide on a retry.
	status int
	body   []byte
	// coldLoad is set when the node did not have the model loaded, so a
	// long wait for the first byte was probably a load in progress.
	coldLoad bool
}

// Failure reasons counted against a node.
const (
	reasonConnect   = "connect"
	reasonTimeout   = "timeout"
	reasonStatus5xx = "status_5xx"
	reasonReset     = "reset"
	reasonMidStream = "midstream"
	reasonBusy      = "busy"
)

// verdict is the decision of the retry rules on one attempt.
type verdict struct {
	// retry sends the request to another node.
	retry bool
	// failure names why the attempt counts against the node. It is "" when
	// the node is not at fault (a 4xx, a busy node, a client that went away).
	failure string
	// reason labels the retry in metrics.
	reason string
	// warm limits the retry, and every later try of the request, to nodes
	// that need no cold load of the model (balancer.Request.Warm).
	warm bool
}

// judge applies the retry rules. A request is retried only while nothing
// has reached the client, so judge is never asked about a stream that
// started. It never retries a 4xx, because the request itself is at fault
// and would fail the same way anywhere. Nor does it retry a client that
// went away, the end of upstream.total, or the proxy's shutdown. After a
// first-byte timeout on a node that was loading the model, the retry goes
// only to a node that has the model loaded, because a second cold load
// elsewhere would take as long. The caller skips the retry when no such
// node is left.
func judge(a attempt) verdict {
	switch {
	case a.err != nil && (errors.Is(a.err, errClientGone) || errors.Is(a.err, errShuttingDown)):
		return verdict{}
	case a.err != nil && errors.Is(a.err, errFirstByteTimeout):
		return verdict{retry: true, failure: reasonTimeout, reason: reasonTimeout, warm: a.coldLoad}
	case a.err != nil && errors.Is(a.err, context.DeadlineExceeded):
		return verdict{}
	case a.err != nil && errors.Is(a.err, errConnect):
		return verdict{retry: true, failure: reasonConnect, reason: reasonConnect}
	case a.err != nil && errors.Is(a.err, errIdleTimeout):
		return verdict{retry: true, failure: reasonTimeout, reason: reasonTimeout}
	case a.err != nil && errors.Is(a.err, errBodyCut):
		return verdict{retry: true, failure: reasonMidStream, reason: reasonMidStream}
	case a.err != nil:
		return verdict{retry: true, failure: reasonReset, reason: reasonReset}
	case a.status == 503 && isBusy(a.body):
		return verdict{retry: true, reason: reasonBusy}
	case a.status >= 500:
		return verdict{retry: true, failure: reasonStatus5xx, reason: reasonStatus5xx}
	}
	return verdict{}
}

// isBusy recognizes Ollama's response when its queue is full
// (OLLAMA_MAX_QUEUE): 503 {"error":"server busy, please try again. ..."}.
func isBusy(body []byte) bool {
	return bytes.Contains(body, []byte("server busy"))
}

// errConnect marks a failure to open a connection to the node: the node
// never saw the request.
var errConnect = errors.New("connect failed")

// backoff returns the wait before retry number n (1 for the first). The
// first retry goes to an untried node at once. Each later one waits with
// full jitter over base·2^(n-2), capped by max, to space out the tries
// when several nodes fail together.
func backoff(n int, base, max time.Duration) time.Duration {
	if base <= 0 || n <= 1 {
		return 0
	}
	bound := base << (n - 2)
	if bound > max || bound <= 0 {
		bound = max
	}
	return time.Duration(rand.Int64N(int64(bound) + 1))
}

// sleepCtx waits for d or until ctx ends, and reports whether ctx is
// still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
