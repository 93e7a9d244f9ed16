package proxy_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// listOrderFleet starts three simulated nodes whose clocks are fixed hours
// apart, so that each node stamps its models with its own modified_at and
// expires_at, and a proxy over them in the order n0, n1, n2.
//
//	n0: clock t0,            models old-a, old-b, shared
//	n1: clock t0+2h,         models new, shared
//	n2: clock t0+1h0m0.5s,   model mid
func listOrderFleet(t *testing.T) (nodes []*ollamasim.Running, proxyURL string) {
	t.Helper()
	t0 := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	clock := func(offset time.Duration) func() time.Time {
		return func() time.Time { return t0.Add(offset) }
	}
	nodes = []*ollamasim.Running{
		testenv.Sim(t, "old-a,old-b,shared", ollamasim.Config{Now: clock(0)}),
		testenv.Sim(t, "new,shared", ollamasim.Config{Now: clock(2 * time.Hour)}),
		testenv.Sim(t, "mid", ollamasim.Config{Now: clock(time.Hour + 500*time.Millisecond)}),
	}
	proxy := testenv.Proxy(t, testenv.Config(t, nodes...))
	return nodes, proxy.URL()
}

func TestTagsOrderNewestFirst(t *testing.T) {
	_, proxyURL := listOrderFleet(t)

	// shared comes from n0, the first node that lists it, so it has n0's
	// modified_at and sorts with old-a and old-b, in name order.
	want := []string{"new:latest", "mid:latest", "old-a:latest", "old-b:latest", "shared:latest"}
	var got []string
	testenv.WaitFor(t, 5*time.Second, "proxy /api/tags to list every model", func() bool {
		got = listedNames(t, proxyURL+"/api/tags", "models", "name")
		return len(got) == len(want)
	})
	if !slices.Equal(got, want) {
		t.Errorf("proxy /api/tags order %v, want %v", got, want)
	}

	openAI := listedNames(t, proxyURL+"/v1/models", "data", "id")
	if !slices.Equal(openAI, want) {
		t.Errorf("proxy /v1/models order %v, want the /api/tags order %v", openAI, want)
	}
}

func TestPSOrderLatestExpiryFirst(t *testing.T) {
	nodes, proxyURL := listOrderFleet(t)

	// Each load expires at the node's clock plus keep_alive:
	//   n0 old-a   t0 + 1m
	//   n0 shared  t0 + 5h (beats n1's shared at t0 + 3h)
	//   n1 new     t0 + 2h10m
	//   n1 shared  t0 + 3h
	//   n2 mid     t0 + 1h30m0.5s
	loads := []struct {
		node      int
		model     string
		keepAlive string
	}{
		{0, "old-a", "1m"},
		{0, "shared", "5h"},
		{1, "new", "10m"},
		{1, "shared", "1h"},
		{2, "mid", "30m"},
	}
	for _, l := range loads {
		body := `{"model":"` + l.model + `","prompt":"x","stream":false,"keep_alive":"` + l.keepAlive + `"}`
		resp := post(t, nodes[l.node].URL()+"/api/generate", body)
		if data := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("load %s on n%d: %d %s", l.model, l.node, resp.StatusCode, data)
		}
	}

	want := []string{"shared:latest", "new:latest", "mid:latest", "old-a:latest"}
	var got []string
	testenv.WaitFor(t, 5*time.Second, "proxy /api/ps to list every loaded model", func() bool {
		got = listedNames(t, proxyURL+"/api/ps", "models", "name")
		return len(got) == len(want)
	})
	if !slices.Equal(got, want) {
		t.Errorf("proxy /api/ps order %v, want %v", got, want)
	}
}

// listedNames fetches url and returns the string field key of each object
// in the array arrayKey of the JSON response, in order.
func listedNames(t *testing.T, url, arrayKey, key string) []string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatalf("GET %s: body %s is not a JSON object: %v", url, body, err)
	}
	var items []map[string]any
	if err := json.Unmarshal(fields[arrayKey], &items); err != nil {
		t.Fatalf("GET %s: %q in body %s is not an array of objects: %v", url, arrayKey, body, err)
	}
	names := []string{}
	for _, item := range items {
		name, _ := item[key].(string)
		names = append(names, name)
	}
	return names
}
