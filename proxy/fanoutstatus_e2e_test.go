package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// checkSameResponse checks that a response has the status, Content-Type
// and body of the reference response want.
func checkSameResponse(t *testing.T, what string, got *http.Response, gotBody []byte,
	want *http.Response, wantBody []byte) {
	t.Helper()
	if got.StatusCode != want.StatusCode {
		t.Errorf("%s: status %d, want %d", what, got.StatusCode, want.StatusCode)
	}
	if ct, wantCT := got.Header.Get("Content-Type"), want.Header.Get("Content-Type"); ct != wantCT {
		t.Errorf("%s: Content-Type %q, want %q", what, ct, wantCT)
	}
	if string(gotBody) != string(wantBody) {
		t.Errorf("%s: body %q, want %q", what, gotBody, wantBody)
	}
}

func TestCreateEarlyErrorKeepsNodeStatus(t *testing.T) {
	// Every node has llama3:8b, so a create of that name through the proxy
	// also removes it from the nodes that the create does not reach.
	tr := modelTrio(t, [3]string{"m,llama3:8b", "m,llama3:8b", "m,llama3:8b"})
	for _, body := range []string{
		`{"model":"llama3:8b"}`,
		`{"model":"llama3:8b","stream":true}`,
		`{"model":"llama3:8b","stream":false}`,
	} {
		want, wantBody := send(t, tr.sims[0].URL(), "POST /api/create", body)
		if want.StatusCode != http.StatusBadRequest {
			t.Fatalf("create %s on a node: status %d %s, want 400", body, want.StatusCode, wantBody)
		}
		got, gotBody := send(t, tr.proxy.URL(), "POST /api/create", body)
		checkSameResponse(t, "create "+body, got, gotBody, want, wantBody)
	}

	err := ollamaClient(t, tr.proxy.URL(), "", "").Create(context.Background(),
		&api.CreateRequest{Model: "llama3:8b"}, func(api.ProgressResponse) error { return nil })
	var status api.StatusError
	if !errors.As(err, &status) {
		t.Fatalf("client create error %#v, want an api.StatusError", err)
	}
	if status.StatusCode != http.StatusBadRequest {
		t.Errorf("client create status %d, want 400", status.StatusCode)
	}
	if want := "neither 'from' or 'files' was specified"; status.ErrorMessage != want {
		t.Errorf("client create error %q, want %q", status.ErrorMessage, want)
	}

	// A create that failed removes nothing from the other nodes.
	checkOnlyListedOn(t, tr, "llama3:8b", "n0", "n1", "n2")
	for i, sim := range tr.sims {
		if n := sim.Server().Requests("/api/delete"); n != 0 {
			t.Errorf("node %d received %d deletes, want none", i, n)
		}
	}
}

// checkEveryNodeNamed checks that msg names each node of a trio with the
// error nodeErr.
func checkEveryNodeNamed(t *testing.T, msg, nodeErr string) {
	t.Helper()
	for _, name := range []string{"n0", "n1", "n2"} {
		if want := "node " + name + ": " + nodeErr; !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
}

func TestPullEarlyErrorKeepsNodeStatus(t *testing.T) {
	tr := newTrio(t, ollamasim.Config{}, nil)
	// The nodes reject a blank name with 400 before any progress line.
	want, wantBody := send(t, tr.proxy.URL(), "POST /api/pull", `{"model":" ","stream":false}`)
	if want.StatusCode != http.StatusBadRequest {
		t.Fatalf("pull stream:false status %d %s, want 400", want.StatusCode, wantBody)
	}
	var shape map[string]string
	if err := json.Unmarshal(wantBody, &shape); err != nil || len(shape) != 1 {
		t.Fatalf("pull stream:false body %s, want one JSON object with only an error key", wantBody)
	}
	checkEveryNodeNamed(t, shape["error"], "invalid model name")

	// Streamed, the pull gets the same response as with "stream": false.
	got, gotBody := send(t, tr.proxy.URL(), "POST /api/pull", `{"model":" "}`)
	checkSameResponse(t, "streamed pull", got, gotBody, want, wantBody)

	err := ollamaClient(t, tr.proxy.URL(), "", "").Pull(context.Background(),
		&api.PullRequest{Model: " "}, func(api.ProgressResponse) error { return nil })
	var status api.StatusError
	if !errors.As(err, &status) {
		t.Fatalf("client pull error %#v, want an api.StatusError", err)
	}
	if status.StatusCode != http.StatusBadRequest {
		t.Errorf("client pull status %d, want 400", status.StatusCode)
	}
	checkEveryNodeNamed(t, status.ErrorMessage, "invalid model name")
}

func TestStreamedPullWithRefusingNodeStreams(t *testing.T) {
	// n2 refuses connections while the proxy still counts it as up, so
	// its part fails before any response head while n0 and n1 stream.
	tr, _ := slowHealthTrio(t, [3]string{"m", "m", "m"})
	if err := tr.byName("n2").Server().SetFaults(ollamasim.Faults{Refuse: true}); err != nil {
		t.Fatal(err)
	}

	resp := post(t, tr.proxy.URL()+"/api/pull", `{"model":"zzz:4"}`)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("streamed pull status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("streamed pull Content-Type %q, want application/x-ndjson", ct)
	}

	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read stream: %v", err)
	}
	if len(lines) < 2 {
		t.Fatalf("stream lines %q, want progress before the last line", lines)
	}
	if last := lines[len(lines)-1]; last != `{"status":"success"}` {
		t.Errorf("last line %s, want {\"status\":\"success\"}", last)
	}

	for _, name := range []string{"n0", "n1"} {
		if !simLists(t, tr.byName(name), "zzz:4") {
			t.Errorf("%s does not list zzz:4 after the pull", name)
		}
	}
}

func TestStreamedPullBeforeHeadsShutdown503(t *testing.T) {
	// Slow health checks keep the hanging nodes up, so only the shutdown
	// ends the pull.
	tr, _ := slowHealthTrio(t, [3]string{"m", "m", "m"})
	for _, sim := range tr.sims {
		if err := sim.Server().SetFaults(ollamasim.Faults{Hang: true}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(tr.proxy.URL()+"/api/pull", "application/json",
			strings.NewReader(`{"model":"zzz:5"}`))
		if err != nil {
			t.Errorf("streamed pull: %v", err)
		}
		done <- resp
	}()
	testenv.WaitFor(t, 5*time.Second, "the pull on every node", func() bool {
		for _, sim := range tr.sims {
			if sim.Server().Requests("/api/pull") != 1 {
				return false
			}
		}
		return true
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = tr.proxy.Shutdown(ctx)
	resp := <-done
	if resp == nil {
		return
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("pull status %d %s, want 503", resp.StatusCode, body)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 at shutdown without Retry-After")
	}
	if !strings.Contains(string(body), "shutting down") {
		t.Errorf("pull body %s, want the shutdown's message", body)
	}
}
