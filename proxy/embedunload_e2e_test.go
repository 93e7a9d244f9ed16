package proxy_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
)

// psModels returns the names that the proxy's /api/ps lists.
func psModels(t *testing.T, proxyURL string) []string {
	t.Helper()
	resp, err := http.Get(proxyURL + "/api/ps")
	if err != nil {
		t.Fatal(err)
	}
	var ps struct{ Models []struct{ Name string } }
	if err := json.Unmarshal(readBody(t, resp), &ps); err != nil {
		t.Fatalf("decode /api/ps: %v", err)
	}
	var names []string
	for _, m := range ps.Models {
		names = append(names, m.Name)
	}
	return names
}

func TestEmbedUnloadReachesEveryHolder(t *testing.T) {
	const model = "nomic-embed-text"
	cases := []struct {
		name, path, body, emptyField string
	}{
		{"embed without input", "/api/embed", `{"model":"nomic-embed-text","keep_alive":0}`, "embeddings"},
		{"embed with empty input", "/api/embed", `{"model":"nomic-embed-text","input":"","keep_alive":"0s"}`, "embeddings"},
		{"embed with no inputs", "/api/embed", `{"model":"nomic-embed-text","input":[],"keep_alive":0}`, "embeddings"},
		{"embeddings without prompt", "/api/embeddings", `{"model":"nomic-embed-text","keep_alive":0}`, "embedding"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The proxy polls the nodes only at start, so it learns of the
			// loads below only from the unload's own refresh.
			list := "m," + model
			tr := modelTrioWith(t, [3]string{list, list, list}, func(cfg *config.Config) {
				cfg.Discovery.Interval = time.Hour
				cfg.Health.Interval = time.Hour
			})
			for _, name := range []string{"n0", "n1"} {
				resp, body := send(t, tr.byName(name).URL(), "POST /api/embed",
					`{"model":"nomic-embed-text","input":"load me"}`)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("embed on %s: %d %s", name, resp.StatusCode, body)
				}
			}

			resp, body := send(t, tr.proxy.URL(), "POST "+tc.path, tc.body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("unload status %d %s, want 200", resp.StatusCode, body)
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(body, &fields); err != nil {
				t.Fatalf("unload body %s: %v", body, err)
			}
			if got := string(fields[tc.emptyField]); got != "[]" {
				t.Errorf("unload body %s: %s is %s, want []", body, tc.emptyField, got)
			}
			if node := resp.Header.Get("X-LLMProxy-Node"); node != "n0,n1" {
				t.Errorf("X-LLMProxy-Node %q, want n0,n1", node)
			}
			for _, name := range []string{"n0", "n1", "n2"} {
				if loaded := tr.byName(name).Server().LoadedModels(); len(loaded) != 0 {
					t.Errorf("%s still has %v loaded", name, loaded)
				}
			}
			// n2 never had the model loaded, and an embedding request
			// would load it before unloading it.
			if n := tr.byName("n2").Server().Requests(tc.path); n != 0 {
				t.Errorf("n2 received %d requests on %s, want none", n, tc.path)
			}
			if ps := psModels(t, tr.proxy.URL()); slices.ContainsFunc(ps, func(name string) bool {
				return strings.HasPrefix(name, model)
			}) {
				t.Errorf("/api/ps lists %q after the unload", ps)
			}
		})
	}
}

func TestEmbedUnloadWithoutHolderLoadsOneNode(t *testing.T) {
	list := "m,nomic-embed-text"
	tr := modelTrio(t, [3]string{list, list, list})
	// No node has the model loaded, so one node loads and unloads it, as
	// one Ollama server would.
	resp, body := send(t, tr.proxy.URL(), "POST /api/embed", `{"model":"nomic-embed-text","keep_alive":0}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("unload status %d %s, want 200", resp.StatusCode, body)
	}
	var embed struct{ Embeddings json.RawMessage }
	if err := json.Unmarshal(body, &embed); err != nil {
		t.Fatalf("unload body %s: %v", body, err)
	}
	if string(embed.Embeddings) != "[]" {
		t.Errorf("unload body %s, want no embeddings", body)
	}
	node := resp.Header.Get("X-LLMProxy-Node")
	if tr.byName(node) == nil {
		t.Errorf("X-LLMProxy-Node %q, want one node", node)
	}
	total := int64(0)
	for _, sim := range tr.sims {
		total += sim.Server().Requests("/api/embed")
		if loaded := sim.Server().LoadedModels(); len(loaded) != 0 {
			t.Errorf("node %s has %v loaded after the unload", sim.Addr(), loaded)
		}
	}
	if total != 1 {
		t.Errorf("the nodes received %d embed requests, want 1", total)
	}
}
