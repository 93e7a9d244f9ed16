package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// blobNode returns the index of the simulated node that receives the
// blob uploads of this test's client, found by sending one blob HEAD
// through the proxy.
func blobNode(t *testing.T, tr *trio) int {
	t.Helper()
	resp, _ := send(t, tr.proxy.URL(), "HEAD /api/blobs/sha256:"+strings.Repeat("0", 64), "")
	if resp.StatusCode != 404 {
		t.Fatalf("blob HEAD status %d, want 404 for a missing blob", resp.StatusCode)
	}
	for i, sim := range tr.sims {
		if sim.Server().Requests("/api/blobs/{digest}") == 1 {
			return i
		}
	}
	t.Fatal("no node received the blob HEAD")
	return -1
}

// createCounts returns how many /api/create requests each node received.
func createCounts(tr *trio) []int64 {
	counts := make([]int64, len(tr.sims))
	for i, sim := range tr.sims {
		counts[i] = sim.Server().Requests("/api/create")
	}
	return counts
}

func TestCreateFromGoesToBaseHolder(t *testing.T) {
	// No registry model: a node without the base cannot pull it.
	tr := newTrio(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{}}, nil)
	sticky := blobNode(t, tr)
	for i, sim := range tr.sims {
		if i == sticky {
			continue
		}
		resp := post(t, sim.URL()+"/api/copy", `{"source":"m","destination":"mycopy"}`)
		if body := readBody(t, resp); resp.StatusCode != 200 {
			t.Fatalf("copy on node %d: %d %s", i, resp.StatusCode, body)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "mycopy listed on two nodes", func() bool {
		return len(tr.proxy.Balancer().Listing("mycopy")) == 2
	})

	for _, name := range []string{"derived", "derived2"} {
		resp := post(t, tr.proxy.URL()+"/api/create",
			`{"model":"`+name+`","from":"mycopy","stream":false}`)
		body := readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("create %s from mycopy: %d %s", name, resp.StatusCode, body)
		}
	}
	counts := createCounts(tr)
	if counts[sticky] != 0 {
		t.Errorf("node %d, which lacks mycopy, received %d creates", sticky, counts[sticky])
	}
	// Both creates of one client reach the same holder.
	same := false
	for _, c := range counts {
		same = same || c == 2
	}
	if !same {
		t.Errorf("creates per node %v, want both on one holder of mycopy", counts)
	}

	// The Modelfile's FROM line of older clients selects the holders too.
	// The simulated node rejects that field, so only the routing counts.
	before := createCounts(tr)
	readBody(t, post(t, tr.proxy.URL()+"/api/create",
		`{"model":"derived3","modelfile":"FROM mycopy\nSYSTEM hi\n","stream":false}`))
	if after := createCounts(tr); after[sticky] != before[sticky] {
		t.Errorf("a Modelfile create from mycopy reached node %d, which lacks it", sticky)
	}
}

func TestCreateWithBlobsStaysOnBlobNode(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{}}, nil)
	sticky := blobNode(t, tr)
	other := (sticky + 1) % len(tr.sims)
	resp := post(t, tr.sims[other].URL()+"/api/copy", `{"source":"m","destination":"mycopy"}`)
	if body := readBody(t, resp); resp.StatusCode != 200 {
		t.Fatalf("copy on node %d: %d %s", other, resp.StatusCode, body)
	}
	testenv.WaitFor(t, 5*time.Second, "mycopy listed on one node", func() bool {
		return len(tr.proxy.Balancer().Listing("mycopy")) == 1
	})

	// An adapter blob uploaded earlier is only on the blob node, so the
	// create goes there even though another node has the base. The
	// simulated node ignores adapters, so only the routing counts.
	digest := "sha256:" + strings.Repeat("1", 64)
	readBody(t, post(t, tr.proxy.URL()+"/api/create",
		`{"model":"tuned","from":"mycopy","adapters":{"lora.gguf":"`+digest+`"},"stream":false}`))
	counts := createCounts(tr)
	if counts[sticky] != 1 {
		t.Errorf("creates per node %v, want the create on blob node %d", counts, sticky)
	}
}

// trioWithHolderDown returns a trio whose node n1 is down, with the
// connections to it refused, while the proxy still lists m on it.
func trioWithHolderDown(t *testing.T) *trio {
	t.Helper()
	tr := newTrio(t, ollamasim.Config{}, nil)
	testenv.WaitFor(t, 5*time.Second, "m listed on every node", func() bool {
		return len(tr.proxy.Balancer().Listing("m")) == 3
	})
	if err := tr.byName("n1").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	n1 := tr.proxy.Balancer().Node("n1")
	testenv.WaitFor(t, 5*time.Second, "n1 down", func() bool { return !n1.Usable() })
	if !n1.HasModel("m") {
		t.Fatal("the proxy dropped m from n1's inventory when n1 went down")
	}
	return tr
}

func TestDeleteRejectedWhileHolderDown(t *testing.T) {
	tr := trioWithHolderDown(t)
	resp, body := send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"m"}`)
	want := `{"error":"cannot delete \"m\" because node n1, which has the model, is unavailable. ` +
		`Try again when it is back"}`
	checkUnavailable(t, "delete", resp, body, want)
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/delete"); n != 0 {
			t.Errorf("node %d received %d deletes, want none", i, n)
		}
	}

	if err := tr.byName("n1").Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	n1 := tr.proxy.Balancer().Node("n1")
	testenv.WaitFor(t, 5*time.Second, "n1 back", n1.Usable)
	resp, body = send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"m"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("delete with every node up: %d %s", resp.StatusCode, body)
	}
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/delete"); n != 1 {
			t.Errorf("node %d received %d deletes, want 1", i, n)
		}
	}
}

func TestCopyRejectedWhileHolderDown(t *testing.T) {
	tr := trioWithHolderDown(t)
	resp, body := send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"m","destination":"m2"}`)
	if resp.StatusCode != 503 {
		t.Fatalf("copy status %d %s, want 503", resp.StatusCode, body)
	}
	if !bytes.Contains(body, []byte("node n1")) {
		t.Errorf("copy error %s does not name n1", body)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("copy response has no Retry-After")
	}
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/copy"); n != 0 {
			t.Errorf("node %d received %d copies, want none", i, n)
		}
	}
}

func TestDeletePartialFailureNamesNodes(t *testing.T) {
	// Slow health checks keep n1 usable after it starts refusing, so the
	// delete reaches it and fails there.
	tr := newTrio(t, ollamasim.Config{}, func(c *config.Config) {
		c.Health.Interval = time.Hour
		c.Discovery.Interval = time.Hour
	})
	testenv.WaitFor(t, 5*time.Second, "m listed on every node", func() bool {
		return len(tr.proxy.Balancer().Listing("m")) == 3
	})
	if err := tr.byName("n1").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"m"}`)
	if resp.StatusCode < 500 {
		t.Fatalf("partial delete status %d %s, want a 5xx", resp.StatusCode, body)
	}
	var e struct{ Error string }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("partial delete body %s: %v", body, err)
	}
	if !strings.HasPrefix(e.Error, `delete of "m:latest" failed on node n1: `) {
		t.Errorf("partial delete error %q does not start with the failed node", e.Error)
	}
	if !strings.HasSuffix(e.Error, ". It succeeded on n0, n2") {
		t.Errorf("partial delete error %q does not end with the nodes that deleted it", e.Error)
	}
}

// pullTrio returns three nodes behind a proxy that logs warnings as JSON:
// n0 and n1 can pull any model, and n2 can pull none.
func pullTrio(t *testing.T) (*trio, *testenv.LogBuffer) {
	t.Helper()
	tr := &trio{}
	for i := 0; i < 3; i++ {
		var cfg ollamasim.Config
		if i == 2 {
			cfg.Registry = map[string]ollamasim.ModelSpec{}
		}
		tr.sims = append(tr.sims, testenv.Sim(t, "m", cfg))
	}
	tr.cfg = testenv.Config(t, tr.sims...)
	var logs *testenv.LogBuffer
	tr.proxy, logs = testenv.JSONProxy(t, tr.cfg, slog.LevelWarn)
	return tr, logs
}

// checkPullFailureLogged checks that the proxy logged n2's failed pull at
// warn level with the node's error.
func checkPullFailureLogged(t *testing.T, logs *testenv.LogBuffer) {
	t.Helper()
	type record struct {
		Level, Node, Error string
	}
	for _, r := range testenv.Records[record](t, logs) {
		if r.Level == "WARN" && r.Node == "n2" && strings.Contains(r.Error, "file does not exist") {
			return
		}
	}
	t.Errorf("no warning names n2 and its error, log:\n%s", logs)
}

// checkModelListed checks that /api/tags and /v1/models list model.
func checkModelListed(t *testing.T, proxyURL, model string) {
	t.Helper()
	for _, path := range []string{"/api/tags", "/v1/models"} {
		resp, err := http.Get(proxyURL + path)
		if err != nil {
			t.Fatal(err)
		}
		if body := readBody(t, resp); !bytes.Contains(body, []byte(`"`+model+`"`)) {
			t.Errorf("%s does not list %s: %s", path, model, body)
		}
	}
}

func TestPullSucceedsIfOneNodeFails(t *testing.T) {
	tr, logs := pullTrio(t)
	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:1","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("pull stream:false status %d %s, want 200", resp.StatusCode, body)
	}
	if string(body) != `{"status":"success"}` {
		t.Errorf("pull stream:false body %s, want {\"status\":\"success\"}", body)
	}
	checkModelListed(t, tr.proxy.URL(), "zzz:1")
	checkPullFailureLogged(t, logs)
}

func TestStreamedPullSucceedsIfOneNodeFails(t *testing.T) {
	tr, logs := pullTrio(t)
	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:2"}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("streamed pull status %d", resp.StatusCode)
	}
	var last string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		last = sc.Text()
		if strings.Contains(last, `"error"`) {
			t.Errorf("streamed pull sent an error line: %s", last)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read stream: %v", err)
	}
	if last != `{"status":"success"}` {
		t.Errorf("last line %s, want {\"status\":\"success\"}", last)
	}
	checkModelListed(t, tr.proxy.URL(), "zzz:2")
	checkPullFailureLogged(t, logs)
}

func TestPullFailingEverywhereIsError(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{}}, nil)
	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:1","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != 500 {
		t.Fatalf("pull status %d %s, want 500", resp.StatusCode, body)
	}
	if !bytes.Contains(body, []byte("pull model manifest: file does not exist")) {
		t.Errorf("pull error %s does not pass on the node's error", body)
	}
}

// checkEveryPullFailure checks that msg names each node of a trio that
// failed to pull zzz:1 with its error.
func checkEveryPullFailure(t *testing.T, msg string) {
	t.Helper()
	if prefix := `pull of "zzz:1" failed on `; !strings.HasPrefix(msg, prefix) {
		t.Errorf("error %q does not start with %q", msg, prefix)
	}
	for _, name := range []string{"n0", "n1", "n2"} {
		if want := "node " + name + ": pull model manifest: file does not exist"; !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
}

func TestPullFailingEverywhereNamesEveryNode(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{Registry: map[string]ollamasim.ModelSpec{}}, nil)
	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:1","stream":false}`)
	body := readBody(t, resp)
	if resp.StatusCode != 500 {
		t.Fatalf("pull status %d %s, want 500", resp.StatusCode, body)
	}
	var shape map[string]string
	if err := json.Unmarshal(body, &shape); err != nil || len(shape) != 1 {
		t.Fatalf("pull body %s, want one JSON object with only an error key", body)
	}
	checkEveryPullFailure(t, shape["error"])

	// A streamed pull ends with the same message on its error line.
	err := ollamaClient(t, tr.proxy.URL(), "", "").Pull(context.Background(),
		&api.PullRequest{Model: "zzz:1"}, func(api.ProgressResponse) error { return nil })
	if err == nil {
		t.Fatal("streamed pull failing on every node returned no error")
	}
	checkEveryPullFailure(t, err.Error())
}

func TestStreamedPullProgressAfterNodeFails(t *testing.T) {
	// n2 fails at once, and n0 and n1 pull the model.
	tr, _ := pullTrio(t)
	var statuses []string
	complete := map[string]bool{} // digests whose progress reached their total
	client := ollamaClient(t, tr.proxy.URL(), "", "")
	err := client.Pull(context.Background(), &api.PullRequest{Model: "zzz:3"},
		func(p api.ProgressResponse) error {
			statuses = append(statuses, p.Status)
			if p.Digest != "" && p.Total > 0 && p.Completed == p.Total {
				complete[p.Digest] = true
			}
			return nil
		})
	if err != nil {
		t.Fatalf("streamed pull: %v", err)
	}

	// The simulated pull has three layers: the model, its template and
	// its parameters.
	if len(complete) != 3 {
		t.Errorf("%d layers reached their total, want 3; statuses %q", len(complete), statuses)
	}
	verify := slices.Index(statuses, "verifying sha256 digest")
	write := slices.Index(statuses, "writing manifest")
	if verify < 0 || write < 0 {
		t.Fatalf("statuses %q lack the stages after the layers", statuses)
	}
	if verify > write {
		t.Errorf("statuses %q: verifying comes after writing the manifest", statuses)
	}
	if last := statuses[len(statuses)-1]; last != "success" {
		t.Errorf("last status %q, want success", last)
	}
	checkModelListed(t, tr.proxy.URL(), "zzz:3")
}

// modelTrio returns three simulated nodes n0, n1 and n2 with the given
// comma-separated model lists, behind a proxy. The nodes named in down
// refuse connections from before the proxy starts, so the proxy never
// fetches their model lists. It returns once the proxy has fetched the
// model list of every other node.
func modelTrio(t *testing.T, models [3]string, down ...string) *trio {
	t.Helper()
	return modelTrioWith(t, models, func(*config.Config) {}, down...)
}

// modelTrioWith starts a trio as modelTrio does, with the proxy's config
// changed by adjust first.
func modelTrioWith(t *testing.T, models [3]string, adjust func(*config.Config), down ...string) *trio {
	t.Helper()
	tr := &trio{}
	for _, list := range models {
		tr.sims = append(tr.sims, testenv.Sim(t, list, ollamasim.Config{}))
	}
	tr.cfg = testenv.Config(t, tr.sims...)
	adjust(tr.cfg)
	for _, name := range down {
		if err := tr.byName(name).Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
			t.Fatal(err)
		}
	}
	tr.proxy = testenv.Proxy(t, tr.cfg)
	testenv.WaitFor(t, 5*time.Second, "model lists of the reachable nodes fetched", func() bool {
		for _, nc := range tr.cfg.Nodes {
			if !slices.Contains(down, nc.Name) && !tr.proxy.Balancer().Node(nc.Name).ModelsListed() {
				return false
			}
		}
		return true
	})
	return tr
}

// checkUnavailable checks that an op got 503 with the body want and a
// Retry-After header.
func checkUnavailable(t *testing.T, op string, resp *http.Response, body []byte, want string) {
	t.Helper()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("%s status %d %s, want 503", op, resp.StatusCode, body)
	}
	if string(body) != want {
		t.Errorf("%s body %s, want %s", op, body, want)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("%s response has no Retry-After", op)
	}
}

// simLists reports whether the simulated node's own /api/tags lists model.
func simLists(t *testing.T, sim *ollamasim.Running, model string) bool {
	t.Helper()
	resp, err := http.Get(sim.URL() + "/api/tags")
	if err != nil {
		t.Fatal(err)
	}
	var tags struct{ Models []struct{ Name string } }
	if err := json.Unmarshal(readBody(t, resp), &tags); err != nil {
		t.Fatalf("decode /api/tags: %v", err)
	}
	for _, m := range tags.Models {
		if m.Name == model {
			return true
		}
	}
	return false
}

func TestDeleteRejectedWhileNodeUnlisted(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m,dup1", "m,dup1"}, "n2")
	resp, body := send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"dup1"}`)
	want := `{"error":"cannot delete \"dup1\" because the model list of node n2 is not known yet. ` +
		`Try again shortly"}`
	checkUnavailable(t, "delete", resp, body, want)
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/delete"); n != 0 {
			t.Errorf("node %d received %d deletes, want none", i, n)
		}
	}
	if !simLists(t, tr.byName("n1"), "dup1:latest") {
		t.Error("n1 no longer lists dup1 after the rejected delete")
	}

	// Once n2 is back and listed, the delete reaches both holders.
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "dup1 listed on n1 and n2", func() bool {
		return len(tr.proxy.Balancer().Listing("dup1")) == 2
	})
	resp, body = send(t, tr.proxy.URL(), "DELETE /api/delete", `{"model":"dup1"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("delete with every node listed: %d %s", resp.StatusCode, body)
	}
	for _, name := range []string{"n1", "n2"} {
		if simLists(t, tr.byName(name), "dup1:latest") {
			t.Errorf("%s still lists dup1 after the delete", name)
		}
	}
}

func TestCopyRejectedWhileNodeUnlisted(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m,dup1", "m,dup1"}, "n2")
	resp, body := send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"dup1","destination":"dup2"}`)
	want := `{"error":"cannot copy \"dup1\" to \"dup2\" because the model list of node n2 is not known yet. ` +
		`Try again shortly"}`
	checkUnavailable(t, "copy", resp, body, want)
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/copy"); n != 0 {
			t.Errorf("node %d received %d copies, want none", i, n)
		}
	}
	if simLists(t, tr.byName("n1"), "dup2:latest") {
		t.Error("n1 lists dup2 after the rejected copy")
	}
}

// checkBaseNotPulled checks that no node received a create and that
// neither n0 nor n1 lists phi3:mini, so that no node pulled it.
func checkBaseNotPulled(t *testing.T, tr *trio) {
	t.Helper()
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/create"); n != 0 {
			t.Errorf("node %d received %d creates, want none", i, n)
		}
	}
	for _, name := range []string{"n0", "n1"} {
		if simLists(t, tr.byName(name), "phi3:mini") {
			t.Errorf("%s pulled phi3:mini", name)
		}
	}
}

func TestCreateRejectedWhileBaseHolderDown(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m", "m,phi3:mini"})
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	n2 := tr.proxy.Balancer().Node("n2")
	testenv.WaitFor(t, 5*time.Second, "n2 down", func() bool { return !n2.Usable() })

	resp := post(t, tr.proxy.URL()+"/api/create", `{"model":"phicopy","from":"phi3:mini","stream":false}`)
	body := readBody(t, resp)
	want := `{"error":"cannot create \"phicopy\" from \"phi3:mini\" because node n2, ` +
		`which has \"phi3:mini\", is unavailable. Try again when it is back"}`
	checkUnavailable(t, "create", resp, body, want)
	checkBaseNotPulled(t, tr)

	// A base that no node lists is pulled by the node picked, as Ollama
	// pulls it.
	resp = post(t, tr.proxy.URL()+"/api/create", `{"model":"zzzcopy","from":"zzz:1","stream":false}`)
	if body := readBody(t, resp); resp.StatusCode != 200 {
		t.Errorf("create from a base no node lists: %d %s, want 200", resp.StatusCode, body)
	}
}

func TestCreateRejectedWhileNodeUnlisted(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m", "m,phi3:mini"}, "n2")
	resp := post(t, tr.proxy.URL()+"/api/create", `{"model":"phicopy","from":"phi3:mini","stream":false}`)
	body := readBody(t, resp)
	want := `{"error":"cannot create \"phicopy\" from \"phi3:mini\" because the model list of node n2 ` +
		`is not known yet. Try again shortly"}`
	checkUnavailable(t, "create", resp, body, want)
	checkBaseNotPulled(t, tr)
}

// checkOnlyListedOn checks that model is listed by the simulated nodes
// named in want and by no other, both on the nodes themselves and in the
// proxy's model lists, which routing uses.
func checkOnlyListedOn(t *testing.T, tr *trio, model string, want ...string) {
	t.Helper()
	for _, nc := range tr.cfg.Nodes {
		listed := slices.Contains(want, nc.Name)
		if got := simLists(t, tr.byName(nc.Name), model); got != listed {
			t.Errorf("%s lists %s: %v, want %v", nc.Name, model, got, listed)
		}
		if got := tr.proxy.Balancer().Node(nc.Name).HasModel(model); got != listed {
			t.Errorf("the proxy's list of %s has %s: %v, want %v", nc.Name, model, got, listed)
		}
	}
}

func TestCopyReplacesOlderDestination(t *testing.T) {
	tr := modelTrio(t, [3]string{"src", "src", "m,dst"})
	resp, body := send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"src","destination":"dst"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("copy status %d %s, want 200", resp.StatusCode, body)
	}
	checkOnlyListedOn(t, tr, "dst:latest", "n0", "n1")
	if n := tr.byName("n2").Server().Requests("/api/delete"); n != 1 {
		t.Errorf("n2 received %d deletes, want 1 for its older dst", n)
	}
	resp, body = send(t, tr.proxy.URL(), "POST /api/generate", `{"model":"dst","prompt":"x","stream":false}`)
	if resp.StatusCode != 200 {
		t.Fatalf("generate with dst: %d %s", resp.StatusCode, body)
	}
	if node := resp.Header.Get("X-LLMProxy-Node"); node == "n2" {
		t.Error("a request for dst went to n2, which no longer has it")
	}
}

func TestCopyReplacesModelAddedSinceLastPoll(t *testing.T) {
	// The proxy polls the model lists only at start during the test.
	tr := modelTrioWith(t, [3]string{"src", "src", "m"}, func(cfg *config.Config) {
		cfg.Discovery.Interval = time.Hour
		cfg.Health.Interval = time.Hour
	})
	// n2 gets a dst of its own, which the proxy's lists do not show yet.
	resp, body := send(t, tr.byName("n2").URL(), "POST /api/copy", `{"source":"m","destination":"dst"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("copy on n2: %d %s", resp.StatusCode, body)
	}
	if tr.proxy.Balancer().Node("n2").HasModel("dst:latest") {
		t.Fatal("the proxy already lists n2's dst, so the test shows nothing")
	}

	resp, body = send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"src","destination":"dst"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("copy status %d %s, want 200", resp.StatusCode, body)
	}
	checkOnlyListedOn(t, tr, "dst:latest", "n0", "n1")
}

func TestCreateReplacesOlderModel(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(map[bool]string{false: "stream false", true: "streamed"}[stream], func(t *testing.T) {
			tr := modelTrio(t, [3]string{"m,dst", "m,dst", "m,dst"})
			// Every node has the base m, so the create goes to the node
			// that the client's blob uploads reach.
			sticky := tr.cfg.Nodes[blobNode(t, tr)].Name
			req := &api.CreateRequest{Model: "dst", From: "m", Stream: &stream}
			var statuses []string
			err := ollamaClient(t, tr.proxy.URL(), "", "").Create(context.Background(), req,
				func(p api.ProgressResponse) error {
					statuses = append(statuses, p.Status)
					return nil
				})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if len(statuses) == 0 || statuses[len(statuses)-1] != "success" {
				t.Errorf("statuses %q, want success last", statuses)
			}
			checkOnlyListedOn(t, tr, "dst:latest", sticky)
			for i, n := range createCounts(tr) {
				if name := tr.cfg.Nodes[i].Name; (name == sticky) != (n == 1) {
					t.Errorf("%s received %d creates, want 1 on %s only", name, n, sticky)
				}
			}
		})
	}
}

func TestCreateRejectedWhileNameHolderDown(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m", "m,dst"})
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	n2 := tr.proxy.Balancer().Node("n2")
	testenv.WaitFor(t, 5*time.Second, "n2 down", func() bool { return !n2.Usable() })

	resp, body := send(t, tr.proxy.URL(), "POST /api/create", `{"model":"dst","from":"m","stream":false}`)
	want := `{"error":"cannot create \"dst\" from \"m\" because node n2, which has \"dst\", ` +
		`is unavailable. Try again when it is back"}`
	checkUnavailable(t, "create", resp, body, want)
	for i, n := range createCounts(tr) {
		if n != 0 {
			t.Errorf("node %d received %d creates, want none", i, n)
		}
	}
}

func TestCreateRejectedWhileNameUnknown(t *testing.T) {
	tr := modelTrio(t, [3]string{"m", "m", "m,dst"}, "n2")
	// A create from uploaded blobs builds on no base model, so only its
	// name makes the unlisted n2 matter.
	digest := "sha256:" + strings.Repeat("2", 64)
	resp, body := send(t, tr.proxy.URL(), "POST /api/create",
		`{"model":"dst","files":{"model.gguf":"`+digest+`"},"stream":false}`)
	want := `{"error":"cannot create \"dst\" because the model list of node n2 is not known yet. ` +
		`Try again shortly"}`
	checkUnavailable(t, "create", resp, body, want)
	for i, n := range createCounts(tr) {
		if n != 0 {
			t.Errorf("node %d received %d creates, want none", i, n)
		}
	}
}

// slowHealthTrio returns three simulated nodes with the given model lists
// behind a proxy that logs warnings as JSON and checks health and model
// lists only once an hour, so that a node that starts refusing stays
// usable and listed. It returns once the proxy has listed every node.
func slowHealthTrio(t *testing.T, models [3]string) (*trio, *testenv.LogBuffer) {
	t.Helper()
	tr := &trio{}
	for _, list := range models {
		tr.sims = append(tr.sims, testenv.Sim(t, list, ollamasim.Config{}))
	}
	tr.cfg = testenv.Config(t, tr.sims...)
	tr.cfg.Health.Interval = time.Hour
	tr.cfg.Discovery.Interval = time.Hour
	var logs *testenv.LogBuffer
	tr.proxy, logs = testenv.JSONProxy(t, tr.cfg, slog.LevelWarn)
	testenv.WaitFor(t, 5*time.Second, "every model list fetched", func() bool {
		for _, n := range tr.proxy.Balancer().Nodes() {
			if !n.ModelsListed() {
				return false
			}
		}
		return true
	})
	return tr, logs
}

// checkOlderModelLogged checks that the proxy logged at warn level that
// node still has model.
func checkOlderModelLogged(t *testing.T, logs *testenv.LogBuffer, node, model string) {
	t.Helper()
	type record struct {
		Level, Node, Model string
	}
	for _, r := range testenv.Records[record](t, logs) {
		if r.Level == "WARN" && r.Node == node && r.Model == model {
			return
		}
	}
	t.Errorf("no warning names %s and %s, log:\n%s", node, model, logs)
}

func TestCopyReplaceFailureNamesNodes(t *testing.T) {
	tr, logs := slowHealthTrio(t, [3]string{"src", "src", "m,dst"})
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"src","destination":"dst"}`)
	if resp.StatusCode != 500 {
		t.Errorf("copy status %d %s, want 500", resp.StatusCode, body)
	}
	var shape map[string]string
	if err := json.Unmarshal(body, &shape); err != nil || len(shape) != 1 {
		t.Fatalf("copy body %s, want one JSON object with only an error key", body)
	}
	msg := shape["error"]
	if prefix := `copied "src" to "dst", but removing the older "dst" failed on node n2: `; !strings.HasPrefix(msg, prefix) {
		t.Errorf("copy error %q does not start with %q", msg, prefix)
	}
	if want := ". Node n2 still has the older model under that name"; !strings.Contains(msg, want) {
		t.Errorf("copy error %q does not contain %q", msg, want)
	}
	for _, name := range []string{"n0", "n1"} {
		if !simLists(t, tr.byName(name), "dst:latest") {
			t.Errorf("%s lacks dst after the copy", name)
		}
	}
	if !tr.proxy.Balancer().Node("n2").HasModel("dst") {
		t.Error("the proxy dropped dst from n2's list, which still has it")
	}
	checkOlderModelLogged(t, logs, "n2", "dst")

	// Sending the copy again retries the removal.
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	resp, body = send(t, tr.proxy.URL(), "POST /api/copy", `{"source":"src","destination":"dst"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("second copy status %d %s, want 200", resp.StatusCode, body)
	}
	checkOnlyListedOn(t, tr, "dst:latest", "n0", "n1")
}

func TestCreateReplaceFailureEndsStream(t *testing.T) {
	tr, logs := slowHealthTrio(t, [3]string{"m,dst", "m,dst", "m,dst"})
	sticky := blobNode(t, tr)
	failing := tr.cfg.Nodes[(sticky+1)%3].Name
	cleaned := tr.cfg.Nodes[(sticky+2)%3].Name
	if err := tr.byName(failing).Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}
	var statuses []string
	err := ollamaClient(t, tr.proxy.URL(), "", "").Create(context.Background(),
		&api.CreateRequest{Model: "dst", From: "m"}, func(p api.ProgressResponse) error {
			statuses = append(statuses, p.Status)
			return nil
		})
	if err == nil {
		t.Fatalf("create returned no error, statuses %q", statuses)
	}
	prefix := `created "dst", but removing the older "dst" failed on node ` + failing + ": "
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("create error %q does not start with %q", err, prefix)
	}
	if slices.Contains(statuses, "success") {
		t.Errorf("statuses %q include success before the error", statuses)
	}
	if simLists(t, tr.byName(cleaned), "dst:latest") {
		t.Errorf("%s still lists dst", cleaned)
	}
	if !simLists(t, tr.sims[sticky], "dst:latest") {
		t.Errorf("%s, which created dst, does not list it", tr.cfg.Nodes[sticky].Name)
	}
	checkOlderModelLogged(t, logs, failing, "dst")
}
