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
	cases := []struct {
		name    string
		a       attempt
		retry   bool
		failure string
	}{
		{"connect refused", attempt{err: fmt.Errorf("dial: %w", errConnect)}, true, reasonConnect},
		{"reset before headers", attempt{err: errors.New("connection reset")}, true, reasonReset},
		{"first byte timeout, model loaded", attempt{err: errFirstByteTimeout}, true, reasonTimeout},
		{"first byte timeout during a load", attempt{err: errFirstByteTimeout, coldLoad: true}, true, reasonTimeout},
		{"body cut by the node", attempt{err: fmt.Errorf("%w: %w", errBodyCut, io.ErrUnexpectedEOF)}, true, reasonMidStream},
		{"node silent within the body", attempt{err: errIdleTimeout}, true, reasonTimeout},
		{"client went away", attempt{err: errClientGone}, false, ""},
		{"request deadline", attempt{err: context.DeadlineExceeded}, false, ""},
		{"400 from the node", attempt{status: 400, body: []byte(`{"error":"bad"}`)}, false, ""},
		{"404 from the node", attempt{status: 404, body: []byte(`{"error":"gone"}`)}, false, ""},
		{"500", attempt{status: 500, body: []byte(`{"error":"x"}`)}, true, reasonStatus5xx},
		{"502", attempt{status: 502, body: []byte(`bad gateway`)}, true, reasonStatus5xx},
		{"503 server busy", attempt{status: 503, body: busy}, true, ""},
		{"503 other", attempt{status: 503, body: []byte(`{"error":"shutting down"}`)}, true, reasonStatus5xx},
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
			if v.warm != tc.a.coldLoad {
				t.Errorf("warm = %v, want %v", v.warm, tc.a.coldLoad)
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
