package proxy_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// keyUsage reads the usage of the key named name from /admin/usage.
func keyUsage(t *testing.T, p *app.App, name string) ratelimit.KeyUsage {
	t.Helper()
	resp, err := http.Get(p.URL() + "/admin/usage")
	if err != nil {
		t.Fatalf("GET /admin/usage: %v", err)
	}
	body := readBody(t, resp)
	usage, err := decodeUsage(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range usage {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("no key %s in /admin/usage %s", name, body)
	return ratelimit.KeyUsage{}
}

// expectStatus sends body to path with the key named key and checks the
// status and, when wording is set, that the body contains it.
func expectStatus(t *testing.T, p *app.App, path, key, body string, status int, wording string) {
	t.Helper()
	resp := post(t, p.URL()+path, body, bearer(key)...)
	got := readBody(t, resp)
	if resp.StatusCode != status || !strings.Contains(string(got), wording) {
		t.Errorf("%s: status %d, body %s; want %d with %q", path, resp.StatusCode, got, status, wording)
	}
}

// TestLimitsUnservedNotCounted fails requests of a key in every way the
// proxy and the nodes can, and checks that only served requests and client
// errors count towards its monthly_requests.
func TestLimitsUnservedNotCounted(t *testing.T) {
	inEachStore(t, func(t *testing.T, shared bool) {
		run := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20, MinTokens: 400, MaxTokens: 400})
		sim := run.Server()
		cfg := testenv.Config(t, run)
		cfg.Nodes[0].MaxConcurrent = 1
		cfg.Queue.Classes[config.ClassStandard] = config.QueueClass{MaxLength: 1, MaxWait: time.Second}
		eps := limitKey("eps")
		eps.MonthlyRequests = 1000
		cfg.Auth.Keys = []config.Key{limitKey("holder"), eps}
		if shared {
			sharedRedisConfig(cfg, testredis.Start(t))
		}
		p := testenv.Proxy(t, cfg)
		depth := func() int { return p.Balancer().Depth()[config.ClassStandard] }

		// The holder's stream takes the node's only slot.
		hold := streamRequest(t, p.URL(), "holder", 400)
		defer hold.Body.Close()
		if hold.StatusCode != http.StatusOK {
			t.Fatalf("holding stream: status %d", hold.StatusCode)
		}

		// One request waits past max_wait while a second finds the
		// queue full.
		timedOut := make(chan *http.Response, 1)
		go func() {
			resp, err := http.DefaultClient.Do(newPost(p.URL()+"/api/generate", quickGenerate,
				bearer("eps")...))
			if err != nil {
				resp = &http.Response{StatusCode: -1, Body: io.NopCloser(strings.NewReader(err.Error()))}
			}
			timedOut <- resp
		}()
		testenv.WaitFor(t, 5*time.Second, "a request in the queue", func() bool { return depth() == 1 })
		expectStatus(t, p, "/api/generate", "eps", quickGenerate, http.StatusServiceUnavailable,
			"queue is full")
		resp := <-timedOut
		if body := readBody(t, resp); resp.StatusCode != http.StatusServiceUnavailable ||
			!strings.Contains(string(body), "max_wait") {
			t.Errorf("queued request: status %d, body %s; want 503 for max_wait", resp.StatusCode, body)
		}

		// A client that leaves while its request is queued.
		ctx, cancel := context.WithCancel(context.Background())
		left := make(chan error, 1)
		go func() {
			req := newPost(p.URL()+"/api/generate", quickGenerate, bearer("eps")...)
			resp, err := http.DefaultClient.Do(req.WithContext(ctx))
			if err == nil {
				resp.Body.Close()
			}
			left <- err
		}()
		testenv.WaitFor(t, 5*time.Second, "a request in the queue", func() bool { return depth() == 1 })
		cancel()
		if err := <-left; err == nil {
			t.Error("request of the client that left succeeded, want canceled")
		}
		testenv.WaitFor(t, 5*time.Second, "the queue emptied", func() bool { return depth() == 0 })

		// Node errors, once the slot is free.
		hold.Body.Close()
		testenv.WaitFor(t, 5*time.Second, "the holder settled", func() bool {
			return keyUsage(t, p, "holder").InFlight == 0
		})
		for _, status := range []int{500, 502, 504} {
			if err := sim.SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: status}); err != nil {
				t.Fatal(err)
			}
			expectStatus(t, p, "/api/generate", "eps", quickGenerate, status, "")
		}

		// A client error and a served request count; /api/show runs
		// no model and does not.
		if err := sim.SetFaults(ollamasim.Faults{ErrorRate: 1, ErrorStatus: 400}); err != nil {
			t.Fatal(err)
		}
		expectStatus(t, p, "/api/generate", "eps", quickGenerate, http.StatusBadRequest, "")
		if err := sim.SetFaults(ollamasim.Faults{}); err != nil {
			t.Fatal(err)
		}
		expectStatus(t, p, "/api/generate", "eps", quickGenerate, http.StatusOK, "")
		expectStatus(t, p, "/api/show", "eps", `{"model":"m"}`, http.StatusOK, "")

		var u ratelimit.KeyUsage
		testenv.WaitFor(t, 5*time.Second, "every request of eps settled", func() bool {
			u = keyUsage(t, p, "eps")
			return u.InFlight == 0
		})
		if u.MonthlyRequests != 2 {
			t.Errorf("monthly_requests of eps = %d, want 2: the client error and the served request",
				u.MonthlyRequests)
		}
		if u.Shared != shared {
			t.Errorf("usage shared = %v, want %v", u.Shared, shared)
		}
	})
}
