package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
)

func cacheHeader(resp *http.Response) string { return resp.Header.Get("X-LLMProxy-Cache") }

func TestEmbedSecondRequestHitsCache(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	body := `{"model":"embed-e","input":["alpha","beta"]}`
	first := post(t, f.proxy.URL()+"/api/embed", body)
	firstBody := readBody(t, first)
	second := post(t, f.proxy.URL()+"/api/embed", body)
	secondBody := readBody(t, second)
	if cacheHeader(first) != "miss" || cacheHeader(second) != "hit-l1" {
		t.Errorf("cache results %q then %q, want miss then hit-l1", cacheHeader(first), cacheHeader(second))
	}
	if n := f.a.Server().Requests("/api/embed"); n != 1 {
		t.Errorf("node saw %d embed requests, want 1", n)
	}
	var a, b api.EmbedResponse
	if json.Unmarshal(firstBody, &a) != nil || json.Unmarshal(secondBody, &b) != nil {
		t.Fatalf("bodies %s / %s", firstBody, secondBody)
	}
	if len(b.Embeddings) != 2 || b.Embeddings[1][0] != a.Embeddings[1][0] {
		t.Error("cached vectors differ from the node's")
	}
}

func TestEmbedPartialHitSendsOnlyMissing(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	readBody(t, post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["b"]}`))
	resp := post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["a","b","c"]}`)
	got := readBody(t, resp)
	last, _ := f.a.Server().LastRequest("/api/embed")
	var sent struct{ Input []string }
	if err := json.Unmarshal(last.Body, &sent); err != nil {
		t.Fatal(err)
	}
	if strings.Join(sent.Input, ",") != "a,c" {
		t.Errorf("node received inputs %v, want [a c]", sent.Input)
	}
	direct := readBody(t, post(t, f.a.URL()+"/api/embed", `{"model":"embed-e","input":["a","b","c"]}`))
	var p, d api.EmbedResponse
	if json.Unmarshal(got, &p) != nil || json.Unmarshal(direct, &d) != nil {
		t.Fatalf("bodies %s / %s", got, direct)
	}
	if len(p.Embeddings) != 3 {
		t.Fatalf("%d vectors, want 3", len(p.Embeddings))
	}
	for i := range d.Embeddings {
		if p.Embeddings[i][0] != d.Embeddings[i][0] || p.Embeddings[i][1] != d.Embeddings[i][1] {
			t.Errorf("vector %d is not the node's vector for input %d", i, i)
		}
	}
}

func TestDeterministicChatServedAsStream(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	msg := `"model":"m","options":{"temperature":0,"seed":7},"messages":[{"role":"user","content":"hi"}]`
	first := post(t, f.proxy.URL()+"/api/chat", `{`+msg+`,"stream":false}`)
	var whole api.ChatResponse
	if err := json.Unmarshal(readBody(t, first), &whole); err != nil {
		t.Fatal(err)
	}
	second := post(t, f.proxy.URL()+"/api/chat", `{`+msg+`}`)
	defer second.Body.Close()
	if cacheHeader(second) != "hit-l1" || second.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("second: cache %q, type %q", cacheHeader(second), second.Header.Get("Content-Type"))
	}
	var text string
	var last api.ChatResponse
	sc := bufio.NewScanner(second.Body)
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		text += last.Message.Content
	}
	if !last.Done || text != whole.Message.Content || last.EvalCount != whole.EvalCount {
		t.Errorf("streamed %q (done %v, eval %d), want %q (eval %d)",
			text, last.Done, last.EvalCount, whole.Message.Content, whole.EvalCount)
	}
	if n := f.a.Server().Requests("/api/chat") + f.b.Server().Requests("/api/chat"); n != 1 {
		t.Errorf("nodes saw %d chats, want 1", n)
	}
}

// TestCachedRequestWithInvalidMemberGoesToNode caches a deterministic
// generate, then repeats it with members of a type or value that Ollama
// rejects. Each must reach a node and get its 400, not the cached response.
func TestCachedRequestWithInvalidMemberGoesToNode(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	base := `"model":"m","prompt":"hi","options":{"temperature":0,"num_predict":2}`
	first := post(t, f.proxy.URL()+"/api/generate", `{`+base+`,"stream":false}`)
	readBody(t, first)
	again := post(t, f.proxy.URL()+"/api/generate", `{`+base+`,"stream":false}`)
	readBody(t, again)
	if cacheHeader(again) != "hit-l1" {
		t.Fatalf("repeat: cache %q, want hit-l1", cacheHeader(again))
	}
	for _, extra := range []string{`"keep_alive":"bogus","stream":false`, `"stream":"false"`, `"stream":0`} {
		resp := post(t, f.proxy.URL()+"/api/generate", `{`+base+`,`+extra+`}`)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d (cache %q), body %s, want the node's 400", extra, resp.StatusCode,
				cacheHeader(resp), body)
		}
	}
}

func TestDefaultChatNeverCached(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	for i := 0; i < 2; i++ {
		resp := post(t, f.proxy.URL()+"/api/chat",
			`{"model":"m","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
		readBody(t, resp)
		if cacheHeader(resp) != "bypass" {
			t.Errorf("request %d: cache %q, want bypass", i, cacheHeader(resp))
		}
	}
	if n := f.a.Server().Requests("/api/chat") + f.b.Server().Requests("/api/chat"); n != 2 {
		t.Errorf("nodes saw %d chats, want 2", n)
	}
}

func TestIdenticalMissesCoalesce(t *testing.T) {
	f := newFleet(t, ollamasim.Config{LoadTime: 100e6})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, f.proxy.URL()+"/api/embed", `{"model":"embed-e","input":["same"]}`)
			body := readBody(t, resp)
			if resp.StatusCode != 200 || !bytes.Contains(body, []byte("embeddings")) {
				t.Errorf("status %d body %s", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if n := f.a.Server().Requests("/api/embed"); n != 1 {
		t.Errorf("node saw %d embed requests for 50 identical ones, want 1", n)
	}
}

func TestCacheControlDirectives(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	body := `{"model":"embed-e","input":"x"}`
	resp := post(t, f.proxy.URL()+"/api/embed", body, "Cache-Control", "no-store")
	readBody(t, resp)
	resp = post(t, f.proxy.URL()+"/api/embed", body)
	readBody(t, resp)
	if cacheHeader(resp) != "miss" {
		t.Errorf("after no-store: %q, want miss", cacheHeader(resp))
	}
	resp = post(t, f.proxy.URL()+"/api/embed", body, "Cache-Control", "no-cache")
	readBody(t, resp)
	if cacheHeader(resp) == "hit-l1" {
		t.Error("no-cache request was served from the cache")
	}
	if n := f.a.Server().Requests("/api/embed"); n != 3 {
		t.Errorf("node saw %d requests, want 3", n)
	}
}

func TestPurgeEmptiesCache(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	body := `{"model":"embed-e","input":"x"}`
	readBody(t, post(t, f.proxy.URL()+"/api/embed", body))
	resp := post(t, f.proxy.URL()+"/admin/cache/purge", `{"model":"embed-e"}`)
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("purge: %d", resp.StatusCode)
	}
	resp = post(t, f.proxy.URL()+"/api/embed", body)
	readBody(t, resp)
	if cacheHeader(resp) != "miss" {
		t.Errorf("after purge: %q, want miss", cacheHeader(resp))
	}
}

// twoSharingRedis starts two proxies over sim that share a new Redis
// server, which it returns as well.
func twoSharingRedis(t *testing.T, sim *ollamasim.Running) (rds *testredis.Server, one, two *app.App) {
	t.Helper()
	rds = testredis.Start(t)
	start := func() *app.App {
		cfg := testenv.Config(t, sim)
		cfg.Redis.Addr = rds.Addr
		// Sharing is under test, not the timeout: a loaded machine must not
		// turn a slow Redis reply into a miss.
		cfg.Redis.Timeout = 2 * time.Second
		return testenv.Proxy(t, cfg)
	}
	return rds, start(), start()
}

func TestSharedCacheAcrossInstances(t *testing.T) {
	sim := testenv.Sim(t, "m,embed-e", ollamasim.Config{})
	rds, one, two := twoSharingRedis(t, sim)
	chat := `{"model":"m","stream":false,"options":{"temperature":0},"messages":[{"role":"user","content":"q"}]}`
	readBody(t, post(t, one.URL()+"/api/chat", chat))
	resp := post(t, two.URL()+"/api/chat", chat)
	readBody(t, resp)
	if cacheHeader(resp) != "hit-l2" {
		t.Errorf("second instance: %q, want hit-l2", cacheHeader(resp))
	}
	resp = post(t, two.URL()+"/api/chat", chat)
	readBody(t, resp)
	if cacheHeader(resp) != "hit-l1" {
		t.Errorf("second instance again: %q, want hit-l1 (an L2 hit fills L1)", cacheHeader(resp))
	}

	// With Redis gone, the cache works from L1 and nothing fails.
	rds.Stop()
	emb := `{"model":"embed-e","input":["r1"]}`
	for i := 0; i < 2; i++ {
		resp = post(t, one.URL()+"/api/embed", emb)
		readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("with Redis down: status %d", resp.StatusCode)
		}
	}
	if cacheHeader(resp) != "hit-l1" {
		t.Errorf("with Redis down: %q, want hit-l1", cacheHeader(resp))
	}
	if testutil.ToFloat64(one.Metrics().RedisFallback.WithLabelValues("cache")) == 0 {
		t.Error("no Redis fallback counted")
	}
}

func TestCachePurgeReachesEveryInstance(t *testing.T) {
	sim := testenv.Sim(t, "m,embed-e", ollamasim.Config{})
	_, one, two := twoSharingRedis(t, sim)
	chat := `{"model":"m","stream":false,"options":{"temperature":0},"messages":[{"role":"user","content":"q"}]}`
	embed := `{"model":"embed-e","input":"x"}`
	requests := []struct{ path, body string }{{"/api/chat", chat}, {"/api/embed", embed}}
	for _, r := range requests {
		readBody(t, post(t, one.URL()+r.path, r.body))
		readBody(t, post(t, two.URL()+r.path, r.body))
		resp := post(t, two.URL()+r.path, r.body)
		readBody(t, resp)
		if cacheHeader(resp) != "hit-l1" {
			t.Fatalf("%s through the second instance: %q, want hit-l1 before the purge", r.path, cacheHeader(resp))
		}
	}

	// servedFromL1 sends body to the second instance and reports whether
	// its L1 served it, storing the header in last.
	var last string
	servedFromL1 := func(path, body string) bool {
		resp := post(t, two.URL()+path, body)
		readBody(t, resp)
		last = cacheHeader(resp)
		return last == "hit-l1"
	}

	resp := post(t, one.URL()+"/admin/cache/purge", `{"model":"embed-e"}`)
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("purge of embed-e: status %d", resp.StatusCode)
	}
	testenv.WaitFor(t, 5*time.Second, "the second instance to stop serving embed-e from L1", func() bool {
		return !servedFromL1("/api/embed", embed)
	})
	if last != "miss" {
		t.Errorf("embed-e through the second instance after its purge: %q, want miss", last)
	}
	if !servedFromL1("/api/chat", chat) {
		t.Errorf("chat of m through the second instance after purging embed-e: %q, want hit-l1", last)
	}

	resp = post(t, one.URL()+"/admin/cache/purge", "")
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("purge of every model: status %d", resp.StatusCode)
	}
	testenv.WaitFor(t, 5*time.Second, "the second instance to stop serving m from L1", func() bool {
		return !servedFromL1("/api/chat", chat)
	})
	if last != "miss" {
		t.Errorf("chat of m through the second instance after purging all: %q, want miss", last)
	}
}

func TestCachePerKey(t *testing.T) {
	sim := testenv.Sim(t, "m,embed-e", ollamasim.Config{})
	start := func(perKey bool) string {
		cfg := testenv.Config(t, sim)
		cfg.Auth.Keys = []config.Key{limitKey("one"), limitKey("two")}
		cfg.Cache.PerKey = perKey
		return testenv.Proxy(t, cfg).URL()
	}
	chat := `{"model":"m","stream":false,"options":{"temperature":0},"messages":[{"role":"user","content":"per key"}]}`
	send := func(url string, header ...string) string {
		resp := post(t, url+"/api/chat", chat, header...)
		readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return cacheHeader(resp)
	}

	scoped := start(true)
	steps := []struct {
		name   string
		header []string
		want   string
	}{
		{"key one, first", bearer("one"), "miss"},
		{"key one, again", bearer("one"), "hit-l1"},
		{"key two", bearer("two"), "miss"},
		{"no key", nil, "miss"},
		{"no key, again", nil, "hit-l1"},
		{"key two, again", bearer("two"), "hit-l1"},
	}
	for _, s := range steps {
		if got := send(scoped, s.header...); got != s.want {
			t.Errorf("per_key, %s: %q, want %q", s.name, got, s.want)
		}
	}

	// Embedding inputs are cached one by one, in the key's own set too.
	embed := func(header ...string) string {
		resp := post(t, scoped+"/api/embed", `{"model":"embed-e","input":["per key"]}`, header...)
		readBody(t, resp)
		return cacheHeader(resp)
	}
	if got := embed(bearer("one")...); got != "miss" {
		t.Errorf("per_key, embedding for key one: %q, want miss", got)
	}
	if got := embed(bearer("two")...); got != "miss" {
		t.Errorf("per_key, embedding for key two after key one: %q, want miss", got)
	}
	if got := embed(bearer("two")...); got != "hit-l1" {
		t.Errorf("per_key, embedding for key two again: %q, want hit-l1", got)
	}

	shared := start(false)
	send(shared, bearer("one")...)
	if got := send(shared, bearer("two")...); got != "hit-l1" {
		t.Errorf("shared cache, key two after key one: %q, want hit-l1", got)
	}
}
