package proxy_test

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/internal/testredis"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// generateOnce sends a deterministic, cacheable generate for model to the
// proxy at baseURL and returns the response status and its
// X-LLMProxy-Cache header.
func generateOnce(t *testing.T, baseURL, model string) (status int, result string) {
	t.Helper()
	body := `{"model":"` + model + `","prompt":"which model","stream":false,` +
		`"options":{"num_predict":4,"temperature":0}}`
	resp := post(t, baseURL+"/api/generate", body)
	readBody(t, resp)
	return resp.StatusCode, cacheHeader(resp)
}

// checkCached sends the generate for model twice and fails the test
// unless the second one is a 200 from the proxy's L1.
func checkCached(t *testing.T, baseURL, model string) {
	t.Helper()
	generateOnce(t, baseURL, model)
	if status, result := generateOnce(t, baseURL, model); status != 200 || result != "hit-l1" {
		t.Fatalf("second generate of %s: status %d, cache %q, want 200 hit-l1", model, status, result)
	}
}

// checkOK fails the test unless resp has status 200.
func checkOK(t *testing.T, operation string, resp *http.Response, body []byte) {
	t.Helper()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d %s, want 200", operation, resp.StatusCode, body)
	}
}

// simCopy copies source to destination on the simulated node directly,
// past the proxy.
func simCopy(t *testing.T, sim *ollamasim.Running, source, destination string) {
	t.Helper()
	resp := post(t, sim.URL()+"/api/copy", `{"source":"`+source+`","destination":"`+destination+`"}`)
	checkOK(t, "copy on the node", resp, readBody(t, resp))
}

func TestDeletePurgesModelFromCache(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	resp, body := send(t, p.URL(), "POST /api/copy", `{"source":"m","destination":"mycopy"}`)
	checkOK(t, "copy through the proxy", resp, body)
	checkCached(t, p.URL(), "mycopy")

	resp, body = send(t, p.URL(), "DELETE /api/delete", `{"model":"mycopy"}`)
	checkOK(t, "delete through the proxy", resp, body)
	status, result := generateOnce(t, p.URL(), "mycopy")
	if status != 404 {
		t.Errorf("generate of the deleted model: status %d, want 404", status)
	}
	if result == "hit-l1" || result == "hit-l2" {
		t.Errorf("generate of the deleted model: cache %q, want no hit", result)
	}

	// A model under the name again, made on the node where the proxy
	// purges nothing for it, finds no entry of the deleted one.
	simCopy(t, sim, "m", "mycopy")
	testenv.WaitFor(t, 5*time.Second, "the proxy to list mycopy again", func() bool {
		return p.Balancer().HasModel("mycopy")
	})
	if status, result := generateOnce(t, p.URL(), "mycopy"); status != 200 || result != "miss" {
		t.Errorf("generate of the model made again: status %d, cache %q, want 200 miss", status, result)
	}
}

func TestCopyOverNamePurgesCache(t *testing.T) {
	sim := testenv.Sim(t, "m,other", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	checkCached(t, p.URL(), "m")

	resp, body := send(t, p.URL(), "POST /api/copy", `{"source":"other","destination":"m"}`)
	checkOK(t, "copy over m through the proxy", resp, body)
	if status, result := generateOnce(t, p.URL(), "m"); status != 200 || result != "miss" {
		t.Errorf("generate of the replaced model: status %d, cache %q, want 200 miss", status, result)
	}
}

func TestDigestChangeOnNodePurgesCache(t *testing.T) {
	sim := testenv.Sim(t, "m,other", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	checkCached(t, p.URL(), "m")

	// The copy gives m the digest of other, which the next poll lists.
	simCopy(t, sim, "other", "m")
	var status int
	var result string
	testenv.WaitFor(t, 5*time.Second, "the cached m to go after the poll", func() bool {
		status, result = generateOnce(t, p.URL(), "m")
		return result != "hit-l1"
	})
	if status != 200 || result != "miss" {
		t.Errorf("generate after the digest changed: status %d, cache %q, want 200 miss", status, result)
	}
}

func TestRemovalOnNodePurgesCache(t *testing.T) {
	sim := testenv.Sim(t, "m,other", ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	checkCached(t, p.URL(), "m")

	resp, body := send(t, sim.URL(), "DELETE /api/delete", `{"model":"m"}`)
	checkOK(t, "delete on the node", resp, body)
	var status int
	var result string
	testenv.WaitFor(t, 5*time.Second, "the cached m to go after the poll", func() bool {
		status, result = generateOnce(t, p.URL(), "m")
		return result != "hit-l1"
	})
	if status != 404 {
		t.Errorf("generate of the removed model: status %d, cache %q, want 404", status, result)
	}

	// The poll that shows m back purges nothing, so a miss shows that the
	// poll that showed it gone did.
	resp, body = send(t, sim.URL(), "POST /api/pull", `{"model":"m","stream":false}`)
	checkOK(t, "pull on the node", resp, body)
	testenv.WaitFor(t, 5*time.Second, "the proxy to list m again", func() bool {
		return p.Balancer().HasModel("m")
	})
	if status, result := generateOnce(t, p.URL(), "m"); status != 200 || result != "miss" {
		t.Errorf("generate of the model pulled again: status %d, cache %q, want 200 miss", status, result)
	}
}

func TestDeletePurgesOtherInstanceL1(t *testing.T) {
	sim := testenv.Sim(t, "m,other", ollamasim.Config{})
	rds := testredis.Start(t)
	cfg := testenv.Config(t, sim)
	cfg.Redis.Addr = rds.Addr
	cfg.Redis.Timeout = 2 * time.Second
	one := testenv.Proxy(t, cfg)
	cfg = testenv.Config(t, sim)
	cfg.Redis.Addr = rds.Addr
	cfg.Redis.Timeout = 2 * time.Second
	// The second instance polls the models once, at start, so it lists m
	// after the delete, and only the purge message can end its L1 hits.
	cfg.Discovery.Interval = time.Hour
	two := testenv.Proxy(t, cfg)

	generateOnce(t, one.URL(), "m")
	if _, result := generateOnce(t, two.URL(), "m"); result != "hit-l2" {
		t.Fatalf("generate through the second instance: cache %q, want hit-l2", result)
	}
	if _, result := generateOnce(t, two.URL(), "m"); result != "hit-l1" {
		t.Fatalf("generate through the second instance again: cache %q, want hit-l1", result)
	}

	resp, body := send(t, one.URL(), "DELETE /api/delete", `{"model":"m"}`)
	checkOK(t, "delete through the first instance", resp, body)
	var status int
	var result string
	testenv.WaitFor(t, 5*time.Second, "the second instance to drop m from L1", func() bool {
		status, result = generateOnce(t, two.URL(), "m")
		return result != "hit-l1"
	})
	if status != 404 || result != "miss" {
		t.Errorf("generate through the second instance after the delete: status %d, cache %q, want 404 miss",
			status, result)
	}
}

func TestCreateAndPullPurgeCache(t *testing.T) {
	for _, tc := range []struct {
		name, route, body string
	}{
		{"create", "POST /api/create", `{"model":"m","from":"other","stream":false}`},
		// The node pulls the same digest again, so the model list shows
		// no change and only the pull itself purges.
		{"pull", "POST /api/pull", `{"model":"m","stream":false}`},
		{"streamed pull", "POST /api/pull", `{"model":"m"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := testenv.Sim(t, "m,other", ollamasim.Config{})
			p := testenv.Proxy(t, testenv.Config(t, sim))
			checkCached(t, p.URL(), "m")

			resp, body := send(t, p.URL(), tc.route, tc.body)
			checkOK(t, tc.name+" through the proxy", resp, body)
			if status, result := generateOnce(t, p.URL(), "m"); status != 200 || result != "miss" {
				t.Errorf("generate after the %s: status %d, cache %q, want 200 miss", tc.name, status, result)
			}
		})
	}
}

// leaveCreate sends a create of m from base, which the nodes lack, so
// that they pull it first for pullTime, and leaves before the create
// ends: after the first progress line of a stream, or after a short wait
// for a response that is not streamed.
func leaveCreate(t *testing.T, baseURL string, stream bool) {
	t.Helper()
	body := `{"model":"m","from":"base","stream":` + strconv.FormatBool(stream) + `}`
	if !stream {
		client := &http.Client{Timeout: 300 * time.Millisecond}
		resp, err := client.Post(baseURL+"/api/create", "application/json", strings.NewReader(body))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("create: status %d before the node ended it, want no response yet", resp.StatusCode)
		}
		return
	}
	resp := post(t, baseURL+"/api/create", body)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("create: status %d, first line %q, error %v", resp.StatusCode, line, err)
	}
	// Closing the body before its end closes the connection.
	resp.Body.Close()
}

// checkPurgedAfterLeave waits until the cached response of m is gone and
// fails the test unless the next generate is a miss.
func checkPurgedAfterLeave(t *testing.T, baseURL string) {
	t.Helper()
	var status int
	var result string
	testenv.WaitFor(t, 5*time.Second, "the cached m to go after the client left the create", func() bool {
		status, result = generateOnce(t, baseURL, "m")
		return result != "hit-l1"
	})
	if status != 200 || result != "miss" {
		t.Errorf("generate after the create: status %d, cache %q, want 200 miss", status, result)
	}
}

// The simulated node stops a create whose connection closes, so the model
// stays as it was. The proxy cannot tell that from a create that
// completed, and purges in both cases.
func TestCreateLeftByClientPurgesCache(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream bool
		// nodes is the number of nodes that list m. With two, the create
		// goes through the fan-out, which removes m from the other node.
		nodes int
	}{
		{"streamed", true, 1},
		{"not streamed", false, 1},
		{"streamed with an older model to replace", true, 2},
		{"not streamed with an older model to replace", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sims []*ollamasim.Running
			for range tc.nodes {
				sims = append(sims, testenv.Sim(t, "m", ollamasim.Config{PullTime: 3 * time.Second}))
			}
			p := testenv.Proxy(t, testenv.Config(t, sims...))
			testenv.WaitFor(t, 5*time.Second, "m listed on every node", func() bool {
				return len(p.Balancer().Listing("m")) == tc.nodes
			})
			checkCached(t, p.URL(), "m")

			leaveCreate(t, p.URL(), tc.stream)
			checkPurgedAfterLeave(t, p.URL())
		})
	}
}

func TestStreamStartedBeforePurgeNotCached(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 20})
	p := testenv.Proxy(t, testenv.Config(t, sim))
	body := `{"model":"m","prompt":"which model","options":{"num_predict":10,"temperature":0}}`

	resp := post(t, p.URL()+"/api/generate", body)
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: status %d, first line error %v", resp.StatusCode, err)
	}
	purge, purgeBody := send(t, p.URL(), "POST /admin/cache/purge", `{"model":"m"}`)
	checkOK(t, "purge while the stream runs", purge, purgeBody)
	rest := readBody(t, resp)
	if !strings.Contains(string(rest), `"done":true`) {
		t.Fatalf("stream ended without its final line: %s", rest)
	}

	again := post(t, p.URL()+"/api/generate", body)
	readBody(t, again)
	if got := cacheHeader(again); got != "miss" {
		t.Errorf("the same request after the stream: cache %q, want miss", got)
	}
}
