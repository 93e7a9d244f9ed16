package proxy_test

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// timedPost sends a non-streaming generate and returns when it finished.
func timedPost(t *testing.T, url, class, client string) (time.Time, int) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/api/generate",
		strings.NewReader(`{"model":"m","prompt":"`+client+`","stream":false,"options":{"num_predict":4}}`))
	if class != "" {
		req.Header.Set("X-Priority", class)
	}
	req.Header.Set("X-Forwarded-For", client)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("request: %v", err)
		return time.Now(), -1
	}
	readBody(t, resp)
	return time.Now(), resp.StatusCode
}

func TestPriorityClassesUnderLoad(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 200, Parallel: 8})
	b := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 200, Parallel: 8})
	cfg := testenv.Config(t, a, b)
	for i := range cfg.Nodes {
		cfg.Nodes[i].MaxConcurrent = 2
	}
	p := testenv.Proxy(t, cfg)
	classes := []string{"priority", "standard", "batch"}
	type done struct {
		class string
		at    time.Time
		code  int
	}
	results := make(chan done, 200)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 198; i++ {
		class := classes[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, code := timedPost(t, p.URL(), class, "client")
			results <- done{class, at, code}
		}()
	}
	wg.Wait()
	close(results)
	finish := map[string][]time.Duration{}
	for r := range results {
		if r.code != 200 {
			t.Fatalf("%s request got status %d", r.class, r.code)
		}
		finish[r.class] = append(finish[r.class], r.at.Sub(start))
	}
	p95 := map[string]time.Duration{}
	for c, ds := range finish {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p95[c] = ds[len(ds)*95/100]
	}
	if len(finish["batch"]) != 66 {
		t.Errorf("%d batch requests finished, want all 66", len(finish["batch"]))
	}
	if !(p95["priority"] < p95["standard"] && p95["standard"] < p95["batch"]) {
		t.Errorf("p95 completion: priority %s, standard %s, batch %s; want that order",
			p95["priority"], p95["standard"], p95["batch"])
	}
}

func TestUnknownPriorityClass(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	resp := post(t, f.proxy.URL()+"/api/generate", `{"model":"m","prompt":"x"}`, "X-Priority", "urgent")
	body := readBody(t, resp)
	if resp.StatusCode != 400 || !strings.Contains(string(body), "unknown priority class") {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
}

func TestSecondClientNotStarved(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 100})
	cfg := testenv.Config(t, a)
	cfg.Nodes[0].MaxConcurrent = 2
	// The test client stands for two clients behind a trusted proxy.
	cfg.RateLimit.TrustedProxies = []string{"127.0.0.1/32"}
	p := testenv.Proxy(t, cfg)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var order []string
	send := func(client string) {
		defer wg.Done()
		_, code := timedPost(t, p.URL(), "", client)
		mu.Lock()
		order = append(order, client)
		mu.Unlock()
		if code != 200 {
			t.Errorf("%s: %d", client, code)
		}
	}
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go send("10.0.0.1")
	}
	testenv.WaitFor(t, 5*time.Second, "the burst to queue", func() bool {
		return len(p.Balancer().Waiting()) >= 90
	})
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go send("10.0.0.2")
	}
	wg.Wait()
	last := 0
	for i, c := range order {
		if c == "10.0.0.2" {
			last = i
		}
	}
	if last > 30 {
		t.Errorf("the second client's last request finished %dth of 105: it waited behind the burst", last+1)
	}
}

func TestQueueFullReturns503(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20})
	cfg := testenv.Config(t, a)
	cfg.Nodes[0].MaxConcurrent = 1
	cfg.Queue.Classes[config.ClassStandard] = config.QueueClass{MaxLength: 1, MaxWait: time.Minute}
	p := testenv.Proxy(t, cfg)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timedPost(t, p.URL(), "", "c")
		}()
	}
	testenv.WaitFor(t, 5*time.Second, "one running, one waiting", func() bool {
		return len(p.Balancer().Waiting()) == 1
	})
	resp := post(t, p.URL()+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}]}`)
	body := readBody(t, resp)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	var oe struct{ Error struct{ Message string } }
	if json.Unmarshal(body, &oe) != nil || !strings.Contains(oe.Error.Message, "queue is full") {
		t.Errorf("body %s, want an OpenAI error naming the full queue", body)
	}
	r, err := http.Get(p.URL() + "/admin/queue")
	if err != nil {
		t.Fatal(err)
	}
	var q struct {
		Depth   map[string]int
		Waiting []struct{ Model, Class string }
	}
	if err := json.Unmarshal(readBody(t, r), &q); err != nil || q.Depth["standard"] != 1 || len(q.Waiting) != 1 {
		t.Errorf("admin queue %+v, %v", q, err)
	}
	wg.Wait()
}

func TestAlternatingModelsCauseNoLoads(t *testing.T) {
	a := testenv.Sim(t, "ma,mb", ollamasim.Config{LoadTime: 50 * time.Millisecond})
	b := testenv.Sim(t, "ma,mb", ollamasim.Config{LoadTime: 50 * time.Millisecond})
	readBody(t, post(t, a.URL()+"/api/generate", `{"model":"ma"}`))
	readBody(t, post(t, b.URL()+"/api/generate", `{"model":"mb"}`))
	p := testenv.Proxy(t, testenv.Config(t, a, b))
	testenv.WaitFor(t, 5*time.Second, "inventory", func() bool {
		return len(p.Balancer().Holding("ma:latest")) == 1 && len(p.Balancer().Holding("mb:latest")) == 1
	})
	loads := func() int64 {
		return a.Server().Loads("ma:latest") + a.Server().Loads("mb:latest") +
			b.Server().Loads("ma:latest") + b.Server().Loads("mb:latest")
	}
	before := loads()
	for i := 0; i < 20; i++ {
		model := "ma"
		if i%2 == 1 {
			model = "mb"
		}
		readBody(t, post(t, p.URL()+"/api/generate",
			`{"model":"`+model+`","prompt":"x","stream":false,"options":{"num_predict":2}}`))
	}
	if got := loads() - before; got != 0 {
		t.Errorf("alternating requests caused %d model loads, want 0", got)
	}
}

func TestConversationStaysOnOneNode(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	// Load m on both nodes, so that only affinity keeps the turns together.
	readBody(t, post(t, f.a.URL()+"/api/generate", `{"model":"m"}`))
	readBody(t, post(t, f.b.URL()+"/api/generate", `{"model":"m"}`))
	testenv.WaitFor(t, 5*time.Second, "m loaded on both", func() bool {
		return len(f.proxy.Balancer().Holding("m:latest")) == 2
	})
	messages := `{"role":"system","content":"be brief"},{"role":"user","content":"tell me a story"}`
	nodes := map[string]int{}
	for turn := 0; turn < 10; turn++ {
		resp := post(t, f.proxy.URL()+"/api/chat", `{"model":"m","stream":false,"messages":[`+messages+`]}`)
		var out struct{ Message struct{ Content string } }
		if err := json.Unmarshal(readBody(t, resp), &out); err != nil {
			t.Fatal(err)
		}
		nodes[resp.Header.Get("X-LLMProxy-Node")]++
		reply, _ := json.Marshal(out.Message.Content)
		messages += `,{"role":"assistant","content":` + string(reply) + `},{"role":"user","content":"go on"}`
	}
	if len(nodes) != 1 {
		t.Errorf("ten turns were served by %v, want one node", nodes)
	}
}

func TestPriorityClassCaps(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	withKeys := testenv.Config(t, sim)
	batchKey := limitKey("batchkey")
	batchKey.Priority = "batch"
	withKeys.Auth.Keys = []config.Key{batchKey}
	keyed := testenv.Proxy(t, withKeys)
	open := testenv.Proxy(t, testenv.Config(t, sim))

	body := `{"model":"m","prompt":"x","stream":false}`
	cases := []struct {
		name   string
		url    string
		header []string
		status int
	}{
		{"no key asks priority where keys exist", keyed.URL(), []string{"X-Priority", "priority"}, 400},
		{"no key asks standard where keys exist", keyed.URL(), []string{"X-Priority", "standard"}, 200},
		{"batch key asks standard", keyed.URL(), append(bearer("batchkey"), "X-Priority", "standard"), 400},
		{"batch key asks batch", keyed.URL(), append(bearer("batchkey"), "X-Priority", "batch"), 200},
		{"no keys configured, priority", open.URL(), []string{"X-Priority", "priority"}, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, c.url+"/api/generate", body, c.header...)
			got := readBody(t, resp)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, got)
			}
			if c.status == 400 && !strings.Contains(string(got), "class") {
				t.Errorf("400 body %q does not name the class problem", got)
			}
		})
	}
}
