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
	// signature identifies the error of a 5xx body that carries a message,
	// see errorSignature. It is "" for any other body.
	signature string
	// coldLoad is set when the node did not have the model loaded, so a
	// long wait for the first byte was probably a load in progress.
	coldLoad bool
	// probe is the result of the probe that follows a first-byte timeout of
	// a non-streamed response (Server.probeAfterTimeout).
	probe probeResult
}

// probeResult is the outcome of probing a node after a first-byte timeout.
type probeResult int

const (
	notProbed probeResult = iota
	probePassed
	probeFailed
)

// Failure reasons counted against a node.
const (
	reasonConnect   = "connect"
	reasonTimeout   = "timeout"
	reasonStatus5xx = "status_5xx"
	reasonReset     = "reset"
	reasonMidStream = "midstream"
	reasonBusy      = "busy"
	reasonNodeDown  = "node_down"
)

// Reasons of node errors that count against no node, the reason label of
// llmproxy_uncounted_node_errors_total.
const (
	uncountedRequest     = "request_error"
	uncountedUnconfirmed = "unconfirmed_5xx"
	uncountedSlow        = "slow_response"
	uncountedNodeDown    = "node_down"
)

// verdict is the decision of the retry rules on one attempt.
type verdict struct {
	// retry sends the request to another node.
	retry bool
	// failure names why the attempt counts against the node. It is "" when
	// the node is not at fault (a 4xx, a busy node, a client that went away).
	failure string
	// deferred holds the failure back until the request ends, when its
	// other attempts show whose fault it was (errorLedger).
	deferred bool
	// uncounted names why an error of the node counts against no node, ""
	// unless it does.
	uncounted string
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
// went away, the end of upstream.total, or the proxy's shutdown.
//
// A 5xx with an error message is retried, but whether it counts against
// the node waits for the request's other attempts (errorLedger), because
// Ollama also sends 500 for errors that the request causes. A 502 or 504,
// the statuses of a gateway in front of the node, counts at once like a
// failed connection.
func judge(a attempt) verdict {
	switch {
	case a.err != nil && (errors.Is(a.err, errClientGone) || errors.Is(a.err, errShuttingDown)):
		return verdict{}
	case a.err != nil && errors.Is(a.err, errNodeMarkedDown):
		// The failed probes that took the node down have counted already.
		return verdict{retry: true, uncounted: uncountedNodeDown, reason: reasonNodeDown}
	case a.err != nil && errors.Is(a.err, errFirstByteTimeout):
		return judgeFirstByteTimeout(a)
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
		deferred := a.signature != "" && a.status != 502 && a.status != 504
		return verdict{retry: true, failure: reasonStatus5xx, reason: reasonStatus5xx, deferred: deferred}
	}
	return verdict{}
}

// judgeFirstByteTimeout judges a response head that did not come within
// upstream.first_byte.
//
// Ollama sends the head of a non-streamed response only when generation
// ends, because GenerateHandler and ChatHandler (server/routes.go) collect
// every chunk and then write the response. Such a timeout alone is no
// evidence against the node, since the generation may just be long. The
// proxy therefore probes the node at once. A node that fails the probe is broken: the
// timeout counts, and the request goes to any other node, whatever the
// node had loaded. A node that passes is slow: the timeout counts against
// no node, and the request does not go to another node, which would only
// generate the same response again from the start. The one exception is a
// node that was loading the model, because the load may explain the wait:
// then the request goes to a node that has the model loaded, as below.
//
// A streamed response's head comes with its first token, so its timeout
// counts without a probe, as does a request body that the node stopped
// reading (errBodyNotTaken). After one on a node that was loading the
// model, the retry goes only to a node that has the model loaded, because
// a second cold load elsewhere would take as long. The caller skips the
// retry when no such node is left.
func judgeFirstByteTimeout(a attempt) verdict {
	switch a.probe {
	case probePassed:
		return verdict{retry: a.coldLoad, warm: true, uncounted: uncountedSlow, reason: reasonTimeout}
	case probeFailed:
		return verdict{retry: true, failure: reasonTimeout, reason: reasonTimeout}
	}
	return verdict{retry: true, failure: reasonTimeout, reason: reasonTimeout, warm: a.coldLoad}
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
