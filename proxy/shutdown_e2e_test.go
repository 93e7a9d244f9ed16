package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestShutdownQueued503RetryAfter queues a request of each API family
// behind a stream that holds the only slot, shuts the proxy down, and
// checks that each gets a 503 in its family's error shape with a
// Retry-After.
func TestShutdownQueued503RetryAfter(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 200, MaxTokens: 200})
	cfg := testenv.Config(t, sim)
	cfg.Nodes[0].MaxConcurrent = 1
	p := testenv.Proxy(t, cfg)

	hold := post(t, p.URL()+"/api/chat", `{"model":"m","messages":[{"role":"user","content":"long"}]}`)
	defer hold.Body.Close()
	if _, err := bufio.NewReader(hold.Body).ReadString('\n'); err != nil {
		t.Fatalf("read the holding stream's first line: %v", err)
	}

	requests := []struct{ path, body string }{
		{"/api/generate", quickGenerate},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", messagesBody},
	}
	type outcome struct {
		status     int
		retryAfter string
		body       []byte
	}
	results := make([]outcome, len(requests))
	var wg sync.WaitGroup
	for i, r := range requests {
		wg.Go(func() {
			resp := post(t, p.URL()+r.path, r.body)
			results[i] = outcome{resp.StatusCode, resp.Header.Get("Retry-After"), readBody(t, resp)}
		})
	}
	testenv.WaitFor(t, 5*time.Second, "three requests in the queue", func() bool {
		return p.Balancer().Depth()[config.ClassStandard] == len(requests)
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
	wg.Wait()

	for i, r := range requests {
		got := results[i]
		if got.status != http.StatusServiceUnavailable {
			t.Errorf("%s: status %d, body %s; want 503", r.path, got.status, got.body)
			continue
		}
		if got.retryAfter == "" {
			t.Errorf("%s: 503 at shutdown without Retry-After", r.path)
		}
		if !strings.Contains(string(got.body), "shutting down") {
			t.Errorf("%s: body %s, want the shutdown's message", r.path, got.body)
		}
	}
	var ollama struct{ Error string }
	if err := json.Unmarshal(results[0].body, &ollama); err != nil || ollama.Error == "" {
		t.Errorf("/api/generate: body %s is not Ollama's error shape", results[0].body)
	}
	var openAI struct {
		Error struct{ Message, Type string }
	}
	if err := json.Unmarshal(results[1].body, &openAI); err != nil || openAI.Error.Message == "" {
		t.Errorf("/v1/chat/completions: body %s is not OpenAI's error shape", results[1].body)
	}
	decodeAnthropicError(t, results[2].body)
}

// TestProxyEndedStreamsNotCounted checks that streams the proxy itself
// ended before the node finished them, at upstream.total or at shutdown,
// do not count towards monthly_requests, while a served request does.
func TestProxyEndedStreamsNotCounted(t *testing.T) {
	longChat := `{"model":"m","messages":[{"role":"user","content":"long"}]}`
	simCfg := ollamasim.Config{TokensPerSec: 10, MinTokens: 200, MaxTokens: 200}
	newConfig := func(t *testing.T, r *testredis.Server) *config.Config {
		cfg := testenv.Config(t, testenv.Sim(t, "m", simCfg))
		key := limitKey("eps")
		key.MonthlyRequests = 1000
		cfg.Auth.Keys = []config.Key{key}
		sharedRedisConfig(cfg, r)
		return cfg
	}

	t.Run("upstream.total", func(t *testing.T) {
		cfg := newConfig(t, testredis.Start(t))
		cfg.Upstream.Total = 600 * time.Millisecond
		p := testenv.Proxy(t, cfg)
		expectStatus(t, p, "/api/generate", "eps", quickGenerate, http.StatusOK, "")
		for range 2 {
			resp := post(t, p.URL()+"/api/chat", longChat, bearer("eps")...)
			if body := readBody(t, resp); !strings.Contains(string(body), "upstream.total") {
				t.Fatalf("stream not ended at upstream.total: status %d, body %s", resp.StatusCode, body)
			}
		}
		u := keyUsage(t, p, "eps")
		testenv.WaitFor(t, 5*time.Second, "every request of eps settled", func() bool {
			u = keyUsage(t, p, "eps")
			return u.InFlight == 0
		})
		if u.MonthlyRequests != 1 {
			t.Errorf("monthly_requests = %d, want 1: the streams cut at upstream.total do not count",
				u.MonthlyRequests)
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		// Two instances share the usage in Redis, so the second reads what
		// the first counted after the first has shut down.
		r := testredis.Start(t)
		a := testenv.Proxy(t, newConfig(t, r))
		b := testenv.Proxy(t, newConfig(t, r))
		expectStatus(t, a, "/api/generate", "eps", quickGenerate, http.StatusOK, "")

		bodies := make([]string, 2)
		var wg sync.WaitGroup
		started := make(chan struct{}, len(bodies))
		for i := range bodies {
			wg.Go(func() {
				resp := post(t, a.URL()+"/api/chat", longChat, bearer("eps")...)
				defer resp.Body.Close()
				br := bufio.NewReader(resp.Body)
				first, _ := br.ReadString('\n')
				started <- struct{}{}
				rest, _ := io.ReadAll(br)
				bodies[i] = first + string(rest)
			})
		}
		<-started
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
		wg.Wait()
		for i, body := range bodies {
			if !strings.Contains(body, "shutting down") {
				t.Fatalf("stream %d not ended by the shutdown: %s", i, body)
			}
		}

		u := keyUsage(t, b, "eps")
		if u.MonthlyRequests != 1 {
			t.Errorf("monthly_requests = %d, want 1: the streams cut at shutdown do not count",
				u.MonthlyRequests)
		}
		if u.MonthlyTokens == 0 {
			t.Error("monthly_tokens = 0, want the tokens of the served request and the cut streams")
		}
	})
}

// TestShutdownWaitsForRejectedConnection rejects a request from its head
// while the client still sends the body. The proxy takes that connection
// over to drop the rest of the body before it closes, and Shutdown waits
// until that ends.
func TestShutdownWaitsForRejectedConnection(t *testing.T) {
	p, _, _ := startHeadProxy(t, true)
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /api/chat HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sk-unknown\r\n"+
		"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n%s", p.Addr(), `{"model":"m","mess`)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read the rejection: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}

	// The client goes on sending its body, a byte at a time, which keeps
	// the proxy draining (it stops after a pause of drainPause, 200ms).
	stopSending := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for {
			select {
			case <-stopSending:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := conn.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- p.Shutdown(ctx)
	}()
	select {
	case err := <-stopped:
		close(stopSending)
		t.Fatalf("Shutdown returned (%v) while the proxy still drained the client's connection", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(stopSending)
	<-sent
	conn.Close()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the client closed its connection")
	}
}
