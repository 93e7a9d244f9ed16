package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestRetryRules(t *testing.T) {
	busy := []byte(`{"error":"server busy, please try again.  maximum pending requests exceeded"}`)
	// withSignature fills in the signature that try computes from a body.
	withSignature := func(a attempt) attempt {
		a.signature = errorSignature(a.status, a.body)
		return a
	}
	cases := []struct {
		name      string
		a         attempt
		retry     bool
		failure   string
		deferred  bool
		uncounted string
		warm      bool
	}{
		{name: "connect refused", a: attempt{err: fmt.Errorf("dial: %w", errConnect)},
			retry: true, failure: reasonConnect},
		{name: "reset before headers", a: attempt{err: errors.New("connection reset")},
			retry: true, failure: reasonReset},
		{name: "first byte timeout, model loaded", a: attempt{err: errFirstByteTimeout},
			retry: true, failure: reasonTimeout},
		{name: "first byte timeout during a load", a: attempt{err: errFirstByteTimeout, coldLoad: true},
			retry: true, failure: reasonTimeout, warm: true},
		{name: "request body not taken", a: attempt{err: errBodyNotTaken},
			retry: true, failure: reasonTimeout},
		{name: "slow non-streamed response",
			a:     attempt{err: errFirstByteTimeout, probe: probePassed},
			retry: false, uncounted: uncountedSlow, warm: true},
		{name: "slow non-streamed response during a load",
			a:     attempt{err: errFirstByteTimeout, probe: probePassed, coldLoad: true},
			retry: true, uncounted: uncountedSlow, warm: true},
		{name: "no response and a failed probe during a load",
			a:     attempt{err: errFirstByteTimeout, probe: probeFailed, coldLoad: true},
			retry: true, failure: reasonTimeout},
		{name: "body cut by the node", a: attempt{err: fmt.Errorf("%w: %w", errBodyCut, io.ErrUnexpectedEOF)},
			retry: true, failure: reasonMidStream},
		{name: "node silent within the body", a: attempt{err: errIdleTimeout},
			retry: true, failure: reasonTimeout},
		{name: "node marked down before the head",
			a:     attempt{err: fmt.Errorf("node n1: %w", errNodeMarkedDown), coldLoad: true},
			retry: true, uncounted: uncountedNodeDown},
		{name: "client went away", a: attempt{err: errClientGone}},
		{name: "request deadline", a: attempt{err: context.DeadlineExceeded}},
		{name: "400 from the node", a: attempt{status: 400, body: []byte(`{"error":"bad"}`)}},
		{name: "404 from the node", a: attempt{status: 404, body: []byte(`{"error":"gone"}`)}},
		{name: "500 with a message", a: withSignature(attempt{status: 500, body: []byte(`{"error":"x"}`)}),
			retry: true, failure: reasonStatus5xx, deferred: true},
		{name: "500 without a message", a: withSignature(attempt{status: 500, body: []byte(`<html>`)}),
			retry: true, failure: reasonStatus5xx},
		{name: "502", a: withSignature(attempt{status: 502, body: []byte(`bad gateway`)}),
			retry: true, failure: reasonStatus5xx},
		{name: "504 with a message", a: withSignature(attempt{status: 504, body: []byte(`{"error":"x"}`)}),
			retry: true, failure: reasonStatus5xx},
		{name: "503 server busy", a: withSignature(attempt{status: 503, body: busy}), retry: true},
		{name: "503 other", a: withSignature(attempt{status: 503, body: []byte(`{"error":"shutting down"}`)}),
			retry: true, failure: reasonStatus5xx, deferred: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := judge(tc.a)
			if v.retry != tc.retry {
				t.Errorf("retry = %v, want %v", v.retry, tc.retry)
			}
			if v.failure != tc.failure {
				t.Errorf("failure = %q, want %q", v.failure, tc.failure)
			}
			if v.deferred != tc.deferred {
				t.Errorf("deferred = %v, want %v", v.deferred, tc.deferred)
			}
			if v.uncounted != tc.uncounted {
				t.Errorf("uncounted = %q, want %q", v.uncounted, tc.uncounted)
			}
			if v.warm != tc.warm {
				t.Errorf("warm = %v, want %v", v.warm, tc.warm)
			}
		})
	}
}

func TestErrorSignature(t *testing.T) {
	cases := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"Ollama shape", 500, `{"error":"template: unexpected EOF"}`, "500 template: unexpected EOF"},
		{"OpenAI shape", 500, `{"error":{"message":"unexpected EOF","type":"api_error"}}`,
			"500 unexpected EOF"},
		{"figures masked", 500, `{"error":"requires 41.2 GiB, 30 GiB free"}`,
			"500 requires #.# GiB, # GiB free"},
		{"status kept", 503, `{"error":"x"}`, "503 x"},
		{"empty message", 500, `{"error":""}`, ""},
		{"plain text", 500, `internal error`, ""},
		{"no error field", 500, `{"message":"x"}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorSignature(tc.status, []byte(tc.body)); got != tc.want {
				t.Errorf("errorSignature(%d, %s) = %q, want %q", tc.status, tc.body, got, tc.want)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	const base = 50 * time.Millisecond
	for n := 1; n <= 10; n++ {
		var longest time.Duration
		for i := 0; i < 100; i++ {
			d := backoff(n, base, time.Second)
			if d < 0 || d > time.Second {
				t.Fatalf("backoff(%d) = %s, outside [0, 1s]", n, d)
			}
			if n == 2 && d > base {
				t.Fatalf("second backoff %s over its base", d)
			}
			longest = max(longest, d)
		}
		if n == 1 && longest != 0 {
			t.Fatalf("first retry waits up to %s, want no wait", longest)
		}
		if n >= 2 && longest == 0 {
			t.Errorf("retry %d never waits in 100 draws", n)
		}
	}
	if backoff(3, 0, time.Second) != 0 {
		t.Error("zero base must not wait")
	}
}
