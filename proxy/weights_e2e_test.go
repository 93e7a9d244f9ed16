package proxy_test

import (
	"net/http"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestWeightSplitsSequentialClient runs three nodes, n0 of weight 4 and
// n1 and n2 of weight 1, and sends generates one after another, so that
// every node is idle at each placement. Each policy must split them about
// 4:1:1.
func TestWeightSplitsSequentialClient(t *testing.T) {
	for _, policy := range []string{config.PolicyInferenceAware, config.PolicyLeastConn, config.PolicyRoundRobin} {
		t.Run(policy, func(t *testing.T) {
			tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
				c.Balancer.Policy = policy
				c.Nodes[0].Weight = 4
			})
			tr.preload(t)
			const requests = 120
			got := map[string]int{}
			for range requests {
				resp := post(t, tr.proxy.URL()+"/api/generate",
					`{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":3}}`)
				readBody(t, resp)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("generate: status %d", resp.StatusCode)
				}
				got[resp.Header.Get("X-LLMProxy-Node")]++
			}
			// An exact 4:1:1 split is 80, 20 and 20. The bounds leave room
			// for the timings that inference_aware learns.
			if n := got["n0"]; n < 64 || n > 96 {
				t.Errorf("n0 (weight 4) served %d of %d requests, want 64 to 96; split %v", n, requests, got)
			}
			for _, name := range []string{"n1", "n2"} {
				if n := got[name]; n < 10 || n > 30 {
					t.Errorf("%s (weight 1) served %d of %d requests, want 10 to 30; split %v", name, n, requests, got)
				}
			}
		})
	}
}
